"""Tests for trainers/data.py and scripts/make_sample_data.py (fast: run with OMP_NUM_THREADS=1)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import paddle
import pytest

from trainers import data as D

try:
    from helpers_data import make_cifar100_tarball, truncate_file
except ImportError:  # tests/ imported as a package
    from tests.helpers_data import make_cifar100_tarball, truncate_file

ROOT = Path(__file__).resolve().parent.parent
FM_MEAN, FM_STD = 0.2860, 0.3530
C100_MEAN = np.array([0.5071, 0.4865, 0.4409], dtype=np.float64)
C100_STD = np.array([0.2673, 0.2564, 0.2762], dtype=np.float64)


def _expected_grey(img28: np.ndarray) -> np.ndarray:
    """Reference preprocessing, written independently: pad 2, scale, normalize, 3 channels."""
    x = np.zeros((32, 32), dtype=np.float64)
    x[2:30, 2:30] = img28 / 255.0
    x = (x - FM_MEAN) / FM_STD
    return np.repeat(x[None], 3, axis=0)


def _all_crops(centered: np.ndarray) -> list[np.ndarray]:
    """Every (dy, dx, flip) variant of a normalized [C, 32, 32] image under crop(pad 4, fill = value of 0)."""
    fill = centered[:, 0, 0]  # the corners of a padded 28x28 / any image: the normalized zero only for grey
    c = centered.shape[0]
    canvas = np.empty((c, 40, 40), dtype=centered.dtype)
    canvas[:] = fill[:, None, None]
    canvas[:, 4:36, 4:36] = centered
    out = []
    for dy in range(9):
        for dx in range(9):
            crop = canvas[:, dy:dy + 32, dx:dx + 32]
            out += [crop, crop[:, :, ::-1]]
    return out


@pytest.fixture(scope='module')
def debian_dir() -> Path:
    d = Path(D.DEBIAN_FASHION_MNIST_DIR)
    missing = [f for pair in D.FASHION_MNIST_FILES.values() for f in pair if not (d / f).is_file()]
    if missing:
        pytest.fail(
            f"Debian Fashion-MNIST files {missing} are missing from {d}: install them with "
            f"'apt-get install dataset-fashion-mnist' (the CI image must have them)"
        )
    return d


@pytest.fixture(scope='module')
def fashion(debian_dir):
    return D.build_datasets('fashion_mnist', augment=True)


@pytest.fixture(scope='module')
def debian_arrays(debian_dir):
    return D.load_fashion_mnist_arrays(debian_dir)


# ------------------------------------------------------------------------------------------------ names
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as ei:
        D.build_datasets('imagenet')
    msg = str(ei.value)
    assert 'imagenet' in msg
    for name in D.DATASETS:
        assert name in msg
    assert D.DATASETS == ('sample', 'fashion_mnist', 'cifar100')


def test_misplaced_source_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='cifar100'):
        D.build_datasets('sample', data_file=str(tmp_path / 'x.tar.gz'))
    with pytest.raises(ValueError, match='fashion_mnist'):
        D.build_datasets('cifar100', data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------ sample
def test_sample_shapes_dtypes_ranges_and_values():
    train, test, n = D.build_datasets('sample', augment=False)
    assert n == 10 and train.num_classes == 10 and len(train.class_names) == 10
    assert (len(train), len(test)) == (5000, 1000)
    raw = D.load_sample_arrays()
    assert raw['x_train'].dtype == np.uint8 and raw['x_train'].shape == (5000, 28, 28)
    assert np.bincount(raw['y_train'], minlength=10).tolist() == [500] * 10
    assert np.bincount(raw['y_test'], minlength=10).tolist() == [100] * 10
    for ds, key in ((train, 'train'), (test, 'test')):
        for i in (0, 7, len(ds) - 1):
            x, y = ds[i]
            assert x.dtype == np.float32 and x.shape == (3, 32, 32)
            assert y.dtype == np.int64 and y.shape == (1,)
            assert int(y[0]) == int(raw[f'y_{key}'][i])
            np.testing.assert_allclose(x, _expected_grey(raw[f'x_{key}'][i]), rtol=0, atol=1e-6)
    xs, ys = test.as_arrays()
    assert xs.shape == (1000, 3, 32, 32) and xs.dtype == np.float32
    assert xs.min() == pytest.approx((0 - FM_MEAN) / FM_STD, abs=1e-6)
    assert xs.max() == pytest.approx((1 - FM_MEAN) / FM_STD, abs=1e-6)
    np.testing.assert_array_equal(ys, raw['y_test'].astype(np.int64))
    np.testing.assert_allclose(xs[5], test[5][0], atol=1e-7)
    assert 'sample/test' in test.describe() and '1000 images' in test.describe()


def test_sample_npz_is_small_and_matches_the_script(tmp_path, debian_dir):
    assert D.SAMPLE_FILE.is_file() and D.SAMPLE_FILE.stat().st_size < 4_000_000
    spec = importlib.util.spec_from_file_location('make_sample_data', ROOT / 'scripts' / 'make_sample_data.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / 'regen.npz'
    assert mod.main(['--source', str(debian_dir), '--out', str(out)]) == 0
    committed, regen = D.load_sample_arrays(), D.load_sample_arrays(out)
    assert sorted(committed) == sorted(regen)
    for key in committed:
        np.testing.assert_array_equal(committed[key], regen[key], err_msg=f'{key} drifted from the script')
    # The sample is real Fashion-MNIST: the stored images are those at the stored official indices.
    arrays = D.load_fashion_mnist_arrays(debian_dir)
    np.testing.assert_array_equal(committed['x_train'], arrays['x_train'][committed['train_index']])
    np.testing.assert_array_equal(committed['y_test'], arrays['y_test'][committed['test_index']])
    # A different seed selects different images.
    other = mod.make_sample(debian_dir, 500, 100, seed=1)
    assert not np.array_equal(other['train_index'], committed['train_index'])


# ------------------------------------------------------------------------------------------------ augmentation
def test_augmentation_train_only_reproducible_and_changing():
    train, test, _ = D.build_datasets('sample', augment=True)
    plain, _, _ = D.build_datasets('sample', augment=False)
    assert train.augment and not test.augment

    np.random.seed(123)
    epoch1 = [train[i][0] for i in range(16)]
    epoch2 = [train[i][0] for i in range(16)]  # RNG advanced: a new epoch gets new crops
    np.random.seed(123)
    again = [train[i][0] for i in range(16)]
    for a, b in zip(epoch1, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(epoch1, epoch2))

    # Each augmented item is one of the 162 crop/flip variants of the unaugmented item, and they vary.
    # Even variant indices are unflipped, odd ones flipped: both must occur.
    seen, flipped, unflipped = set(), 0, 0
    for i in range(16):
        variants = _all_crops(plain[i][0])
        hits = [k for k, v in enumerate(variants) if np.array_equal(v, epoch1[i])]
        assert hits, f'augmented item {i} is not a pad-4 crop/flip of the original'
        seen.add(hits[0])
        flipped += all(k % 2 for k in hits)
        unflipped += all(k % 2 == 0 for k in hits)
    assert len(seen) > 3
    assert flipped >= 2 and unflipped >= 2, (flipped, unflipped)

    # The test split never changes, whatever the RNG does.
    first = [test[i][0] for i in range(8)]
    np.random.seed(999)
    for i in range(8):
        np.testing.assert_array_equal(test[i][0], first[i])


def test_dataloader_batches():
    train, _, _ = D.build_datasets('sample', train_subset=64)
    loader = paddle.io.DataLoader(train, batch_size=16, shuffle=True, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == [16, 3, 32, 32] and x.dtype == paddle.float32
    assert y.shape == [16, 1] and y.dtype == paddle.int64


# ------------------------------------------------------------------------------------------------ subsets
def test_subset_matches_bar_recipe_permutation(fashion, debian_arrays):
    sub, test, _ = D.build_datasets('fashion_mnist', train_subset=10000, subset_seed=0)
    perm = np.random.RandomState(0).permutation(60000)[:10000]
    np.testing.assert_array_equal(sub.labels, debian_arrays['y_train'][perm].astype(np.int64))
    np.testing.assert_array_equal(sub.images[:, 0], debian_arrays['x_train'][perm])
    assert len(test) == 10000  # the test split is never subset
    again, _, _ = D.build_datasets('fashion_mnist', train_subset=10000, subset_seed=0)
    np.testing.assert_array_equal(again.images, sub.images)
    other, _, _ = D.build_datasets('fashion_mnist', train_subset=10000, subset_seed=1)
    assert not np.array_equal(other.labels, sub.labels)
    assert 'subset 10000, seed 0' in sub.describe()


@pytest.mark.parametrize('bad', [0, -5, 5001, 2.5, True])
def test_subset_bounds(bad):
    with pytest.raises(ValueError, match='train_subset'):
        D.build_datasets('sample', train_subset=bad)


# ------------------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_from_debian(fashion, debian_arrays):
    assert D.find_fashion_mnist_dir() == Path(D.DEBIAN_FASHION_MNIST_DIR)
    train, test, n = fashion
    assert n == 10 and (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    x, y = test[123]
    assert x.dtype == np.float32 and x.shape == (3, 32, 32) and y.dtype == np.int64 and y.shape == (1,)
    np.testing.assert_allclose(x, _expected_grey(debian_arrays['x_test'][123]), atol=1e-6)
    assert int(y[0]) == int(debian_arrays['y_test'][123])
    x, y = train[0]
    assert x.shape == (3, 32, 32) and -0.82 < x.min() and x.max() < 2.03


def test_fashion_mnist_data_dir(tmp_path, debian_dir):
    with pytest.raises(FileNotFoundError) as ei:
        D.build_datasets('fashion_mnist', data_dir=str(tmp_path))
    assert str(tmp_path) in str(ei.value) and 'train-images-idx3-ubyte.gz' in str(ei.value)
    for pair in D.FASHION_MNIST_FILES.values():
        for f in pair:
            os.symlink(debian_dir / f, tmp_path / f)
    train, test, _ = D.build_datasets('fashion_mnist', data_dir=str(tmp_path), train_subset=100)
    assert (len(train), len(test)) == (100, 10000)
    # A corrupt idx file is reported by name.
    bad = tmp_path / 't10k-labels-idx1-ubyte.gz'
    bad.unlink()
    bad.write_bytes(b'not gzip at all')
    with pytest.raises(ValueError, match='t10k-labels-idx1-ubyte.gz'):
        D.build_datasets('fashion_mnist', data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------ CIFAR-100
def test_cifar100_from_generated_tarball(tmp_path):
    path = tmp_path / 'cifar-100-python.tar.gz'
    batches = make_cifar100_tarball(path, n_train=64, n_test=32, seed=3)
    assert D.validate_cifar100_tarball(path) == {'train': 64, 'test': 32}
    train, test, n = D.build_datasets('cifar100', data_file=str(path), augment=True)
    assert n == 100 and train.num_classes == 100 and (len(train), len(test)) == (64, 32)
    assert train.class_names[:2] == ('fine_0', 'fine_1')
    np.testing.assert_array_equal(test.labels, np.asarray(batches['test'][b'fine_labels']))
    np.testing.assert_array_equal(train.labels, np.asarray(batches['train'][b'fine_labels']))
    for i in (0, 31):
        x, y = test[i]
        raw = batches['test'][b'data'][i].reshape(3, 32, 32).astype(np.float64) / 255.0
        want = (raw - C100_MEAN[:, None, None]) / C100_STD[:, None, None]
        assert x.dtype == np.float32 and x.shape == (3, 32, 32) and y.shape == (1,) and y.dtype == np.int64
        np.testing.assert_allclose(x, want, atol=1e-5)
        assert int(y[0]) == batches['test'][b'fine_labels'][i]
    # Train items are augmented crops/flips of the stored image (padding uses raw pixel 0).
    np.random.seed(0)
    raw = batches['train'][b'data'][5].reshape(3, 32, 32).astype(np.float64) / 255.0
    canvas = np.zeros((3, 40, 40))
    canvas[:, 4:36, 4:36] = raw
    canvas = (canvas - C100_MEAN[:, None, None]) / C100_STD[:, None, None]
    variants = [c for dy in range(9) for dx in range(9)
                for c in (canvas[:, dy:dy + 32, dx:dx + 32], canvas[:, dy:dy + 32, dx:dx + 32][:, :, ::-1])]
    for _ in range(5):
        x, _ = train[5]
        assert any(np.allclose(x, v, atol=1e-5) for v in variants)
    sub, _, _ = D.build_datasets('cifar100', data_file=str(path), train_subset=10, subset_seed=0)
    np.testing.assert_array_equal(sub.labels, train.labels[np.random.RandomState(0).permutation(64)[:10]])


def test_cifar100_missing_file(tmp_path):
    path = tmp_path / 'nowhere' / 'cifar-100-python.tar.gz'
    with pytest.raises(FileNotFoundError) as ei:
        D.build_datasets('cifar100', data_file=str(path))
    msg = str(ei.value)
    assert str(path) in msg and 'cifar-100-python.tar.gz' in msg
    assert "b'data'" in msg and "b'fine_labels'" in msg and 'cifar-100-python/test' in msg


def test_cifar100_truncated_file(tmp_path):
    path = tmp_path / 'cifar-100-python.tar.gz'
    make_cifar100_tarball(path, n_train=200, n_test=20)
    truncate_file(path, 0.5)
    with pytest.raises(ValueError) as ei:
        D.build_datasets('cifar100', data_file=str(path))
    assert str(path) in str(ei.value) and 'truncated' in str(ei.value)


def test_cifar100_not_a_tarball(tmp_path):
    path = tmp_path / 'cifar-100-python.tar.gz'
    path.write_text('hello, I am not an archive\n')
    with pytest.raises(ValueError) as ei:
        D.build_datasets('cifar100', data_file=str(path))
    assert str(path) in str(ei.value) and 'not a tar archive' in str(ei.value)


def test_cifar100_without_test_member(tmp_path):
    path = tmp_path / 'cifar-100-python.tar.gz'
    make_cifar100_tarball(path, members=('train', 'meta'))
    with pytest.raises(ValueError) as ei:
        D.build_datasets('cifar100', data_file=str(path))
    msg = str(ei.value)
    assert str(path) in msg and "no 'test' member" in msg and 'cifar-100-python/train' in msg


def test_cifar100_bad_member_contents(tmp_path):
    import io
    import pickle
    import tarfile

    path = tmp_path / 'bad.tar.gz'
    good = {b'data': np.zeros((4, 3072), np.uint8), b'fine_labels': [0, 1, 2, 3]}
    bad = {b'data': np.zeros((4, 1024), np.uint8), b'fine_labels': [0, 1, 2, 3]}
    with tarfile.open(path, 'w:gz') as tar:
        for name, obj in (('cifar-100-python/train', good), ('cifar-100-python/test', bad)):
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError) as ei:
        D.validate_cifar100_tarball(path)
    assert str(path) in str(ei.value) and 'cifar-100-python/test' in str(ei.value) and '3072' in str(ei.value)


def test_cifar100_garbage_member_and_optional_meta(tmp_path):
    import io
    import tarfile

    path = tmp_path / 'garbage.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        for name, payload in (('cifar-100-python/train', b'\x80\x04garbage'), ('cifar-100-python/test', b'x')):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError) as ei:
        D.build_datasets('cifar100', data_file=str(path))
    assert str(path) in str(ei.value) and 'cifar-100-python/train' in str(ei.value)

    no_meta = tmp_path / 'no_meta.tar.gz'
    make_cifar100_tarball(no_meta, n_train=8, n_test=4, members=('train', 'test'))
    train, test, n = D.build_datasets('cifar100', data_file=str(no_meta))
    assert n == 100 and train.class_names[7] == 'class_7' and (len(train), len(test)) == (8, 4)


def test_dataloader_workers_reproducible_and_new_per_epoch():
    """Worker processes re-seed numpy from the main process's np.random: same seed, same epochs."""
    def two_epochs(seed: int) -> list[np.ndarray]:
        np.random.seed(seed)
        sub, _, _ = D.build_datasets('sample', train_subset=48)
        loader = paddle.io.DataLoader(sub, batch_size=16, shuffle=False, num_workers=2)
        return [np.concatenate([x.numpy() for x, _ in loader]) for _ in range(2)]

    a, b = two_epochs(5), two_epochs(5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])


def test_idx_reader_agrees_with_paddle_fashion_mnist(debian_dir, debian_arrays):
    from paddle.vision.datasets import FashionMNIST

    ref = FashionMNIST(
        image_path=str(debian_dir / 't10k-images-idx3-ubyte.gz'),
        label_path=str(debian_dir / 't10k-labels-idx1-ubyte.gz'),
        mode='test', backend='cv2', download=False,
    )
    images = np.stack(ref.images).reshape(-1, 28, 28)
    np.testing.assert_array_equal(images, debian_arrays['x_test'].astype(images.dtype))
    np.testing.assert_array_equal(np.concatenate(ref.labels), debian_arrays['y_test'].astype(np.int64))
