"""Test utilities for the data layer: a generator of small tarballs in the exact cifar-100-python format."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np

CIFAR_MEMBERS = ('train', 'test', 'meta')


def cifar100_batch(n: int, seed: int, split: str) -> dict[bytes, object]:
    """A pickled-batch dict as in the real archive: random uint8 images [n, 3072] and fine/coarse labels."""
    rng = np.random.RandomState(seed)
    fine = (np.arange(n) * 7 + seed) % 100  # covers many classes, deterministic
    return {
        b'filenames': [f'{split}_{i:05d}.png'.encode() for i in range(n)],
        b'batch_label': f'{split} batch 1 of 1'.encode(),
        b'fine_labels': [int(v) for v in fine],
        b'coarse_labels': [int(v) // 5 for v in fine],
        b'data': rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
    }


def cifar100_meta() -> dict[bytes, object]:
    return {
        b'fine_label_names': [f'fine_{i}'.encode() for i in range(100)],
        b'coarse_label_names': [f'coarse_{i}'.encode() for i in range(20)],
    }


def make_cifar100_tarball(
    path: str | Path,
    *,
    n_train: int = 64,
    n_test: int = 32,
    seed: int = 0,
    members: Iterable[str] = CIFAR_MEMBERS,
) -> dict[str, dict[bytes, object]]:
    """Write a gzip tarball with members cifar-100-python/{train,test,meta}; return the pickled dicts.

    ``members`` selects which of 'train', 'test', 'meta' to include (to build broken archives).
    The directory entry 'cifar-100-python' comes first, as in the real file.
    """
    batches: dict[str, dict[bytes, object]] = {
        'train': cifar100_batch(n_train, seed, 'train'),
        'test': cifar100_batch(n_test, seed + 1, 'test'),
        'meta': cifar100_meta(),
    }
    members = tuple(members)
    with tarfile.open(path, mode='w:gz') as tar:
        d = tarfile.TarInfo('cifar-100-python')
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        for name in ('meta', 'test', 'train'):
            if name not in members:
                continue
            payload = pickle.dumps(batches[name], protocol=2)
            info = tarfile.TarInfo(f'cifar-100-python/{name}')
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return {k: v for k, v in batches.items() if k in members}


def truncate_file(path: str | Path, keep_fraction: float = 0.5) -> None:
    """Cut a file to ``keep_fraction`` of its bytes, in place."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep_fraction)])
