"""Datasets for the bundled trainer: CIFAR-100, Fashion-MNIST and an embedded Fashion-MNIST sample.

Every source yields items ``(image, label)`` where ``image`` is a float32 ndarray of shape [3, 32, 32]
(normalized with the source's per-channel mean/std) and ``label`` an int64 ndarray of shape [1].

Images are held in memory as uint8 arrays; decoding, padding, cropping, flipping and normalization are
done per item in numpy (a 256-entry lookup table per channel, no PIL round trips).

Augmentation (train split only, never the test split): random crop of 32x32 from the image zero-padded
by 4 pixels on every side (the zero is the raw pixel value 0, i.e. padding happens before
normalization, as with ``paddle.vision.transforms.RandomCrop(32, padding=4)`` on uint8 images),
then a horizontal flip with probability 0.5. The random numbers come from numpy's global RNG
(``np.random``), so a run is reproducible after ``np.random.seed(s)`` and differs from epoch to epoch
because the global state advances. ``paddle.io.DataLoader`` worker processes re-seed numpy from a
base seed that the main process draws from ``np.random`` for every epoch's iterator, so this also
holds with ``num_workers > 0``. ``paddle.seed`` alone does not seed numpy: seed both.

Fashion-MNIST (and the sample) images are 28x28: they are zero-padded to 32x32 (2 pixels per side),
scaled to [0, 1], normalized with mean 0.2860 / std 0.3530, and the grey channel is repeated to 3
channels, as in /work/shared/BAR-RECIPE.md.

Training subsets: ``train_subset=k, subset_seed=s`` keeps the training images at indices
``np.random.RandomState(s).permutation(n_train)[:k]``, in that order (n_train = 60000 for
Fashion-MNIST, so ``k=10000, s=0`` is the BAR-RECIPE subset).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import paddle

__all__ = [
    'DATASETS',
    'FASHION_MNIST_CLASSES',
    'FASHION_MNIST_FILES',
    'DEBIAN_FASHION_MNIST_DIR',
    'SAMPLE_FILE',
    'ImageArrayDataset',
    'build_datasets',
    'find_fashion_mnist_dir',
    'load_fashion_mnist_arrays',
    'read_idx_images',
    'read_idx_labels',
    'load_sample_arrays',
    'validate_cifar100_tarball',
    'subset_indices',
]

DATASETS: tuple[str, ...] = ('sample', 'fashion_mnist', 'cifar100')

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
    'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)
FASHION_MNIST_MEAN: tuple[float, ...] = (0.2860,)
FASHION_MNIST_STD: tuple[float, ...] = (0.3530,)
CIFAR100_MEAN: tuple[float, ...] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, ...] = (0.2673, 0.2564, 0.2762)

#: split -> (images file, labels file), the standard idx names (gzip-compressed).
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
SAMPLE_FILE = Path(__file__).resolve().parent / 'sample_data' / 'fashion_mnist_sample.npz'

IMAGE_SIZE = 32  # output height and width, pixels
CROP_PADDING = 4  # random-crop padding, pixels per side

_CIFAR_EXPECTED = (
    "the standard cifar-100-python.tar.gz: a gzip tar archive with members cifar-100-python/train and "
    "cifar-100-python/test, each a pickled dict holding b'data' (an N x 3072 uint8 array, channel-major "
    "R, G, B planes of 32x32) and b'fine_labels' (N integers in [0, 100))"
)


# --------------------------------------------------------------------------------------------------
# The dataset class
# --------------------------------------------------------------------------------------------------
class ImageArrayDataset(paddle.io.Dataset):
    """In-memory uint8 images -> normalized float32 [3, 32, 32] items, optional train augmentation.

    Args:
        images: uint8 array [N, C, h, w] with C in {1, 3}, h and w <= 32 (smaller images are centered
            on a 32x32 zero canvas; a single channel is repeated to 3).
        labels: integer array [N].
        mean, std: per-channel normalization applied after scaling pixels to [0, 1]; length C.
        augment: random crop (padding 4 pixels) + horizontal flip per item, from ``np.random``.
        class_names: one name per class; ``num_classes`` is its length.
        name: label used by :meth:`describe`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
        class_names: Sequence[str],
        name: str,
    ) -> None:
        super().__init__()
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{name}: images must be uint8 [N, C, h, w] with C in (1, 3); got {images.dtype} "
                f"{images.shape}"
            )
        h, w = images.shape[2:]
        if h > IMAGE_SIZE or w > IMAGE_SIZE:
            raise ValueError(f"{name}: images must be at most {IMAGE_SIZE}x{IMAGE_SIZE}; got {h}x{w}")
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"{name}: mean/std need {channels} values; got {len(mean)}/{len(std)}")
        self.images = images
        self.labels = labels
        self.augment = bool(augment)
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.name = name
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # lut[c, v] = (v / 255 - mean[c]) / std[c]
        values = np.arange(256, dtype=np.float64) / 255.0
        self._lut = np.stack(
            [(values - m) / s for m, s in zip(self.mean, self.std)]
        ).astype(np.float32)
        # Where the source image sits on the (32 + 2*pad)-pixel canvas used for cropping.
        self._top = (IMAGE_SIZE - h) // 2 + CROP_PADDING
        self._left = (IMAGE_SIZE - w) // 2 + CROP_PADDING

    def __len__(self) -> int:
        return len(self.labels)

    def _crop_params(self) -> tuple[int, int, bool]:
        if not self.augment:
            return CROP_PADDING, CROP_PADDING, False
        dy, dx, flip = np.random.randint(0, 2 * CROP_PADDING + 1, size=3)
        return int(dy), int(dx), bool(flip % 2)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        img = self.images[idx]
        c, h, w = img.shape
        dy, dx, flip = self._crop_params()
        size = IMAGE_SIZE + 2 * CROP_PADDING
        canvas = np.zeros((c, size, size), dtype=np.uint8)
        canvas[:, self._top:self._top + h, self._left:self._left + w] = img
        crop = canvas[:, dy:dy + IMAGE_SIZE, dx:dx + IMAGE_SIZE]
        if flip:
            crop = crop[:, :, ::-1]
        if c == 1:
            out = np.repeat(self._lut[0][crop], 3, axis=0)
        else:
            out = self._lut[np.arange(c)[:, None, None], crop]
        return np.ascontiguousarray(out, dtype=np.float32), np.array([self.labels[idx]], dtype=np.int64)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All items without augmentation, vectorized: (float32 [N, 3, 32, 32], int64 [N])."""
        n, c, h, w = self.images.shape
        out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        top, left = self._top - CROP_PADDING, self._left - CROP_PADDING
        for ch in range(3):
            src = 0 if c == 1 else ch
            out[:, ch] = self._lut[src][0]
            out[:, ch, top:top + h, left:left + w] = self._lut[src][self.images[:, src]]
        return out, self.labels.copy()

    def describe(self) -> str:
        """One line: name, size, classes, image shape, normalization and augmentation."""
        counts = np.bincount(self.labels, minlength=self.num_classes)
        aug = 'random crop (pad 4) + horizontal flip' if self.augment else 'none'
        return (
            f"{self.name}: {len(self)} images, {self.num_classes} classes "
            f"(per class {counts.min()}..{counts.max()}), source {self.images.shape[1]}x"
            f"{self.images.shape[2]}x{self.images.shape[3]} uint8 -> float32 [3, 32, 32], "
            f"mean {self.mean} std {self.std}, augmentation: {aug}"
        )

    def __repr__(self) -> str:
        return f"ImageArrayDataset({self.describe()})"


# --------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------
def subset_indices(n: int, train_subset: int | None, subset_seed: int = 0) -> np.ndarray | None:
    """Indices kept by ``train_subset``: ``np.random.RandomState(subset_seed).permutation(n)[:train_subset]``.

    Returns None when ``train_subset`` is None (keep everything). Raises ValueError unless
    1 <= train_subset <= n.
    """
    if train_subset is None:
        return None
    if isinstance(train_subset, bool) or not isinstance(train_subset, (int, np.integer)):
        raise ValueError(f"train_subset must be an int in [1, {n}] or None; got {train_subset!r}")
    if not 1 <= int(train_subset) <= n:
        raise ValueError(f"train_subset must be in [1, {n}] (training images available); got {train_subset}")
    return np.random.RandomState(subset_seed).permutation(n)[: int(train_subset)]


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------
def _read_gz(path: str | os.PathLike) -> bytes:
    try:
        with gzip.open(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{str(path)!r} is not a readable gzip file: {exc}") from exc


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read a gzip idx3 image file (magic 2051) into a uint8 array [N, rows, cols]."""
    buf = _read_gz(path)
    if len(buf) < 16:
        raise ValueError(f"{str(path)!r}: too short for an idx3 image file ({len(buf)} bytes)")
    magic, n, rows, cols = struct.unpack_from('>IIII', buf, 0)
    if magic != 2051:
        raise ValueError(f"{str(path)!r}: not an idx3 image file (magic {magic}, expected 2051)")
    if len(buf) != 16 + n * rows * cols:
        raise ValueError(
            f"{str(path)!r}: header says {n} images of {rows}x{cols} ({16 + n * rows * cols} bytes) "
            f"but the file holds {len(buf)} bytes (truncated?)"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a gzip idx1 label file (magic 2049) into a uint8 array [N]."""
    buf = _read_gz(path)
    if len(buf) < 8:
        raise ValueError(f"{str(path)!r}: too short for an idx1 label file ({len(buf)} bytes)")
    magic, n = struct.unpack_from('>II', buf, 0)
    if magic != 2049:
        raise ValueError(f"{str(path)!r}: not an idx1 label file (magic {magic}, expected 2049)")
    if len(buf) != 8 + n:
        raise ValueError(f"{str(path)!r}: header says {n} labels but the file holds {len(buf) - 8} (truncated?)")
    return np.frombuffer(buf, dtype=np.uint8, offset=8).copy()


def _has_fashion_files(directory: str | os.PathLike) -> bool:
    return all((Path(directory) / f).is_file() for pair in FASHION_MNIST_FILES.values() for f in pair)


def _paddle_fashion_cache() -> Path:
    from paddle.dataset.common import DATA_HOME
    from paddle.vision.datasets import FashionMNIST

    return Path(DATA_HOME) / FashionMNIST.NAME


def find_fashion_mnist_dir(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Directory holding the four Fashion-MNIST idx .gz files.

    Search order: ``data_dir`` if given (FileNotFoundError naming it if files are missing, no
    fallback), then Debian's /usr/share/datasets/fashion-mnist, then Paddle's cache
    (~/.cache/paddle/dataset/fashion-mnist), then a download into that cache via Paddle (needs
    network; ``download=False`` turns it off).
    """
    names = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    if data_dir is not None:
        d = Path(data_dir)
        missing = [f for f in names if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST data_dir {str(d)!r} lacks {missing}; expected the four idx files {names}"
            )
        return d
    cache = _paddle_fashion_cache()
    for d in (Path(DEBIAN_FASHION_MNIST_DIR), cache):
        if _has_fashion_files(d):
            return d
    if not download:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST_DIR!r} (apt-get install dataset-fashion-mnist) "
            f"or {str(cache)!r}; pass data_dir= a directory holding {names}"
        )
    from paddle.dataset.common import download as paddle_download
    from paddle.vision.datasets import FashionMNIST as F

    urls = [
        (F.TRAIN_IMAGE_URL, F.TRAIN_IMAGE_MD5), (F.TRAIN_LABEL_URL, F.TRAIN_LABEL_MD5),
        (F.TEST_IMAGE_URL, F.TEST_IMAGE_MD5), (F.TEST_LABEL_URL, F.TEST_LABEL_MD5),
    ]
    try:
        for url, md5 in urls:
            paddle_download(url, F.NAME, md5)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"Fashion-MNIST not found in {DEBIAN_FASHION_MNIST_DIR!r} or {str(cache)!r} and the download "
            f"failed ({type(exc).__name__}: {exc}). Offline: apt-get install dataset-fashion-mnist, or "
            f"pass data_dir= a directory holding {names}"
        ) from exc
    return cache


def load_fashion_mnist_arrays(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N] for both splits: keys x_train, y_train, x_test, y_test."""
    out: dict[str, np.ndarray] = {}
    for split, (img_name, lab_name) in FASHION_MNIST_FILES.items():
        x = read_idx_images(Path(directory) / img_name)
        y = read_idx_labels(Path(directory) / lab_name)
        if len(x) != len(y):
            raise ValueError(f"{str(directory)!r}: {split} split has {len(x)} images but {len(y)} labels")
        out[f'x_{split}'], out[f'y_{split}'] = x, y
    return out


def load_sample_arrays(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The embedded Fashion-MNIST sample (keys x_train, y_train, x_test, y_test, train_index, test_index)."""
    p = Path(path) if path is not None else SAMPLE_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"embedded sample {str(p)!r} is missing; regenerate it with scripts/make_sample_data.py"
        )
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _grey_datasets(
    arrays: dict[str, np.ndarray], name: str, augment: bool, train_subset: int | None, subset_seed: int
) -> tuple[ImageArrayDataset, ImageArrayDataset, int]:
    x_train, y_train = arrays['x_train'], arrays['y_train']
    keep = subset_indices(len(x_train), train_subset, subset_seed)
    train_name = f'{name}/train'
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
        train_name += f' (subset {len(keep)}, seed {subset_seed})'
    common = dict(mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, class_names=FASHION_MNIST_CLASSES)
    train = ImageArrayDataset(x_train[:, None], y_train, augment=augment, name=train_name, **common)
    test = ImageArrayDataset(
        arrays['x_test'][:, None], arrays['y_test'], augment=False, name=f'{name}/test', **common
    )
    return train, test, len(FASHION_MNIST_CLASSES)


# --------------------------------------------------------------------------------------------------
# CIFAR-100
# --------------------------------------------------------------------------------------------------
def validate_cifar100_tarball(path: str | os.PathLike) -> dict[str, int]:
    """Check that ``path`` is a usable cifar-100-python.tar.gz; return {'train': N, 'test': M}.

    Raises FileNotFoundError if it does not exist, ValueError (naming the path and the problem) if it
    is not a readable tar archive, is truncated, lacks a 'train' or 'test' member, or a member is not a
    pickled dict with b'data' (N x 3072 uint8) and b'fine_labels' (N values in [0, 100)).
    Members are matched the way paddle.vision.datasets.Cifar100 matches them: every member whose name
    contains 'train' (or 'test') is read. The members are unpickled (as Paddle does): use trusted files.
    """
    p = os.fspath(path)
    _check_exists(p)
    return _scan_cifar100_tarball(p)[0]


def _check_exists(p: str) -> None:
    if not os.path.exists(p):
        raise FileNotFoundError(f"CIFAR-100 data file {p!r} does not exist; expected {_CIFAR_EXPECTED}")
    if not os.path.isfile(p):
        raise ValueError(f"CIFAR-100 data file {p!r} is not a regular file; expected {_CIFAR_EXPECTED}")


def _check_cifar_member(path: str, name: str, fileobj) -> int:
    try:
        batch = pickle.load(fileobj, encoding='bytes')
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        raise  # truncated/corrupt archive: reported by the caller
    except Exception as exc:  # anything a malformed pickle can raise
        raise ValueError(
            f"CIFAR-100 data file {path!r}: member {name!r} is not a readable pickle "
            f"({type(exc).__name__}: {exc}); expected {_CIFAR_EXPECTED}"
        ) from exc
    if not isinstance(batch, dict) or b'data' not in batch or b'fine_labels' not in batch:
        keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"CIFAR-100 data file {path!r}: member {name!r} lacks b'data'/b'fine_labels' (has {keys}); "
            f"expected {_CIFAR_EXPECTED}"
        )
    data = batch[b'data']
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(
            f"CIFAR-100 data file {path!r}: member {name!r} b'data' is {desc}, expected an N x 3072 uint8 array"
        )
    labels = np.asarray(batch[b'fine_labels'])
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"CIFAR-100 data file {path!r}: member {name!r} b'fine_labels' has shape {labels.shape} "
            f"dtype {labels.dtype}; expected {len(data)} integers"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 100):
        raise ValueError(
            f"CIFAR-100 data file {path!r}: member {name!r} b'fine_labels' span "
            f"[{labels.min()}, {labels.max()}], expected values in [0, 100)"
        )
    return len(data)


def _scan_cifar100_tarball(p: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """One streaming pass over the archive: check every 'train'/'test' member, read 'meta' if present."""
    counts: dict[str, int] = {}
    names: list[str] = []
    class_names = tuple(f'class_{i}' for i in range(100))
    try:
        with tarfile.open(p, mode='r|*') as tar:  # stream mode: each byte decompressed once
            for m in tar:
                names.append(m.name)
                for flag in ('train', 'test'):
                    if flag not in m.name:
                        continue
                    if not m.isfile():
                        raise ValueError(
                            f"CIFAR-100 data file {p!r}: member {m.name!r} contains {flag!r} but is not a "
                            f"regular file (Paddle reads every such member); expected {_CIFAR_EXPECTED}"
                        )
                    counts[flag] = counts.get(flag, 0) + _check_cifar_member(p, m.name, tar.extractfile(m))
                if m.isfile() and os.path.basename(m.name) == 'meta':
                    class_names = _meta_class_names(tar.extractfile(m), class_names)
    except ValueError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as exc:
        raise ValueError(
            f"CIFAR-100 data file {p!r} is corrupt, truncated or not a tar archive "
            f"({type(exc).__name__}: {exc}); expected {_CIFAR_EXPECTED}"
        ) from exc
    for flag in ('train', 'test'):
        if flag not in counts:
            raise ValueError(
                f"CIFAR-100 data file {p!r} has no {flag!r} member (members: {names}); expected {_CIFAR_EXPECTED}"
            )
    return counts, class_names


def _meta_class_names(fileobj, default: tuple[str, ...]) -> tuple[str, ...]:
    """b'fine_label_names' from the optional 'meta' member; ``default`` if it is unusable."""
    try:
        meta = pickle.load(fileobj, encoding='bytes')
        names = meta.get(b'fine_label_names') if isinstance(meta, dict) else None
        if names is not None and len(names) == 100:
            return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except Exception:  # meta is optional: fall back to numbered names
        pass
    return default


def _cifar100_default_file() -> str:
    """The tarball in Paddle's cache, downloading it through Paddle if absent (needs network)."""
    from paddle.dataset.common import DATA_HOME, download as paddle_download
    from paddle.vision.datasets.cifar import CIFAR100_MD5, CIFAR100_URL

    cached = os.path.join(DATA_HOME, 'cifar', CIFAR100_URL.rsplit('/', 1)[-1])
    if os.path.isfile(cached):
        return cached
    try:
        return paddle_download(CIFAR100_URL, 'cifar', CIFAR100_MD5)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"CIFAR-100 is not in Paddle's cache ({cached!r}) and the download from {CIFAR100_URL} failed "
            f"({type(exc).__name__}: {exc}). Offline: pass data_file= a local cifar-100-python.tar.gz"
        ) from exc


def _load_cifar100(path: str) -> dict[str, np.ndarray]:
    from paddle.vision.datasets import Cifar100

    out: dict[str, np.ndarray] = {}
    for split in ('train', 'test'):
        ds = Cifar100(data_file=path, mode=split, download=False, backend='cv2')
        # Paddle holds (flat uint8 row of 3072, label) pairs; keep them as uint8 [N, 3, 32, 32].
        out[f'x_{split}'] = np.stack([np.asarray(s, dtype=np.uint8) for s, _ in ds.data]).reshape(-1, 3, 32, 32)
        out[f'y_{split}'] = np.asarray([lab for _, lab in ds.data], dtype=np.int64)
    return out


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def build_datasets(
    name: str,
    *,
    data_file: str | None = None,
    data_dir: str | None = None,
    augment: bool = True,
    train_subset: int | None = None,
    subset_seed: int = 0,
) -> tuple[paddle.io.Dataset, paddle.io.Dataset, int]:
    """Build (train, test, num_classes) for one of :data:`DATASETS`.

    Args:
        name: 'sample' (the embedded 5000/1000-image Fashion-MNIST sample), 'fashion_mnist' or 'cifar100'.
        data_file: cifar100 only: a local cifar-100-python.tar.gz. None: Paddle's cache, downloaded if
            absent (needs network).
        data_dir: fashion_mnist only: directory holding the four idx .gz files. None: Debian's
            /usr/share/datasets/fashion-mnist, then Paddle's cache, then a download.
        augment: random crop (pad 4) + horizontal flip on the train split. The test split is never
            augmented.
        train_subset: keep this many training images (``np.random.RandomState(subset_seed)
            .permutation(n_train)[:train_subset]``); None keeps all.
        subset_seed: seed of that permutation.

    Each item is (float32 ndarray [3, 32, 32], int64 ndarray [1]).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if data_file is not None and name != 'cifar100':
        raise ValueError(f"data_file= applies to 'cifar100' only (got dataset {name!r}); use data_dir= for fashion_mnist")
    if data_dir is not None and name != 'fashion_mnist':
        raise ValueError(f"data_dir= applies to 'fashion_mnist' only (got dataset {name!r}); use data_file= for cifar100")

    if name == 'sample':
        return _grey_datasets(load_sample_arrays(), 'sample', augment, train_subset, subset_seed)
    if name == 'fashion_mnist':
        arrays = load_fashion_mnist_arrays(find_fashion_mnist_dir(data_dir))
        return _grey_datasets(arrays, 'fashion_mnist', augment, train_subset, subset_seed)

    path = os.fspath(data_file) if data_file is not None else _cifar100_default_file()
    _check_exists(path)
    _, classes = _scan_cifar100_tarball(path)  # validation: clear errors before Paddle sees the file
    arrays = _load_cifar100(path)
    x_train, y_train = arrays['x_train'], arrays['y_train']
    keep = subset_indices(len(x_train), train_subset, subset_seed)
    train_name = 'cifar100/train'
    if keep is not None:
        x_train, y_train = x_train[keep], y_train[keep]
        train_name += f' (subset {len(keep)}, seed {subset_seed})'
    common = dict(mean=CIFAR100_MEAN, std=CIFAR100_STD, class_names=classes)
    train = ImageArrayDataset(x_train, y_train, augment=augment, name=train_name, **common)
    test = ImageArrayDataset(arrays['x_test'], arrays['y_test'], augment=False, name='cifar100/test', **common)
    return train, test, 100
