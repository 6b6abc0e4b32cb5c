#!/usr/bin/env python3
"""Regenerate trainers/sample_data/fashion_mnist_sample.npz from Debian's Fashion-MNIST idx files.

Selection (deterministic): for each class c in 0..9, in class order, take
``np.random.RandomState(seed + c).permutation(indices of class c)[:per_class]`` from the official
train split (train-per-class) and test split (test-per-class); the union is sorted by original index.
Stored arrays (np.savez_compressed, no pickles): x_train/x_test uint8 [N, 28, 28], y_train/y_test
uint8 [N], train_index/test_index int64 [N] (positions in the official splits), class_names.

    python scripts/make_sample_data.py                      # defaults used for the committed file
    python scripts/make_sample_data.py --out /tmp/s.npz --train-per-class 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainers.data import (  # noqa: E402
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    SAMPLE_FILE,
    find_fashion_mnist_dir,
    load_fashion_mnist_arrays,
)

DEFAULT_TRAIN_PER_CLASS = 500
DEFAULT_TEST_PER_CLASS = 100
DEFAULT_SEED = 0


def select_balanced(labels: np.ndarray, per_class: int, seed: int, num_classes: int = 10) -> np.ndarray:
    """Sorted indices: ``per_class`` per class, class c drawn with RandomState(seed + c)."""
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images, fewer than --per-class {per_class}")
        picked.append(np.random.RandomState(seed + c).permutation(idx)[:per_class])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def make_sample(source: str | Path, train_per_class: int, test_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """The sample's arrays, exactly as saved."""
    arrays = load_fashion_mnist_arrays(find_fashion_mnist_dir(source, download=False))
    train_index = select_balanced(arrays['y_train'], train_per_class, seed)
    test_index = select_balanced(arrays['y_test'], test_per_class, seed)
    return {
        'x_train': arrays['x_train'][train_index],
        'y_train': arrays['y_train'][train_index],
        'x_test': arrays['x_test'][test_index],
        'y_test': arrays['y_test'][test_index],
        'train_index': train_index,
        'test_index': test_index,
        'class_names': np.array(FASHION_MNIST_CLASSES),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--source', default=DEBIAN_FASHION_MNIST_DIR,
                    help='directory with the four Fashion-MNIST idx .gz files (default: %(default)s)')
    ap.add_argument('--out', default=str(SAMPLE_FILE), help='output .npz (default: %(default)s)')
    ap.add_argument('--train-per-class', type=int, default=DEFAULT_TRAIN_PER_CLASS,
                    help='training images per class (default: %(default)s)')
    ap.add_argument('--test-per-class', type=int, default=DEFAULT_TEST_PER_CLASS,
                    help='test images per class (default: %(default)s)')
    ap.add_argument('--seed', type=int, default=DEFAULT_SEED, help='selection seed (default: %(default)s)')
    args = ap.parse_args(argv)
    if args.train_per_class < 1 or args.test_per_class < 1:
        ap.error('--train-per-class and --test-per-class must be >= 1')
    sample = make_sample(args.source, args.train_per_class, args.test_per_class, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **sample)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(sample['y_train'])} train + "
          f"{len(sample['y_test'])} test images from {args.source}, seed {args.seed}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
