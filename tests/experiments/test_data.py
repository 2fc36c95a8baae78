"""experiments.train.data: reading, validating and downloading CIFAR-10, synthetic data, batches."""
import hashlib
import io
import os
import pickle
import tarfile
import time

import numpy as np
import pytest

from experiments.train import data as D
from experiments.train.data import BatchLoader, DataError

N_PER_BATCH = 6
N_TEST = 7


def _batch(rng, n, bytes_keys):
    entry = {"batch_label": "b", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "labels": [int(v) for v in rng.integers(0, 10, n)],
             "filenames": [f"f{i}.png" for i in range(n)]}
    if bytes_keys:  # how the official (Python 2) archive's dicts come out of pickle
        entry = {k.encode(): v for k, v in entry.items()}
    return entry


def write_cifar(root, bytes_keys=False, seed=0):
    """A tiny cifar-10-batches-py/ with the official structure; returns its batches."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _batch(rng, N_TEST if name == "test_batch" else N_PER_BATCH, bytes_keys)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batches[name], f, protocol=2)
    names = list(D.CIFAR10_CLASSES)
    meta = {"label_names": names, "num_vis": 3072}
    if bytes_keys:
        meta = {b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder, batches


def _get(entry, key):
    return entry[key] if key in entry else entry[key.encode()]


# ------------------------------------------------------------------------ reading

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_load_cifar10_reads_official_layout(tmp_path, bytes_keys):
    folder, batches = write_cifar(tmp_path, bytes_keys=bytes_keys)
    ds = D.load_cifar10(tmp_path)
    assert ds.x_train.shape == (5 * N_PER_BATCH, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_train.flags.c_contiguous and ds.x_test.flags.c_contiguous
    assert ds.x_test.shape == (N_TEST, 3, 32, 32)
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == D.CIFAR10_CLASSES
    assert ds.source == "cifar10" and ds.path == os.path.abspath(folder)
    # rows are channel-major: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    raw = _get(batches["data_batch_2"], "data")
    img = ds.x_train[N_PER_BATCH + 1]
    assert img[1, 3, 5] == raw[1, 1024 + 3 * 32 + 5]
    second = ds.x_train[N_PER_BATCH:2 * N_PER_BATCH].reshape(N_PER_BATCH, -1)
    np.testing.assert_array_equal(second, raw)
    np.testing.assert_array_equal(ds.y_test, _get(batches["test_batch"], "labels"))
    assert ds.identity() == {"source": "cifar10", "path": ds.path, "n_train": 30, "n_test": 7,
                             "seed": None}


def test_load_cifar10_accepts_the_batches_folder_itself(tmp_path):
    folder, _ = write_cifar(tmp_path)
    assert D.load_cifar10(folder).n_train == 5 * N_PER_BATCH


def test_missing_folder_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "--download" in msg and "to_batches.py" in msg
    assert "CIFAR10_DIR" in msg and "\n" not in msg


def _truncate(path):
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])


def _rewrite(path, **changes):
    with open(path, "rb") as f:
        entry = pickle.load(f)
    entry.update(changes)
    with open(path, "wb") as f:
        pickle.dump(entry, f)


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: os.remove(os.path.join(d, "data_batch_3")), "data_batch_3"),
    (lambda d: _truncate(os.path.join(d, "data_batch_2")), "corrupt or truncated"),
    (lambda d: open(os.path.join(d, "test_batch"), "wb").close(), "corrupt or truncated"),
    (lambda d: _rewrite(os.path.join(d, "data_batch_1"),
                        data=np.zeros((N_PER_BATCH, 3000), np.uint8)), "shape"),
    (lambda d: _rewrite(os.path.join(d, "data_batch_1"),
                        data=np.full((N_PER_BATCH, 3072), 0.5)), "uint8"),
    (lambda d: _rewrite(os.path.join(d, "data_batch_1"),
                        data=np.full((N_PER_BATCH, 3072), 300)), "uint8"),
    (lambda d: _rewrite(os.path.join(d, "data_batch_4"), labels=[0] * (N_PER_BATCH - 1)),
     "labels for"),
    (lambda d: _rewrite(os.path.join(d, "test_batch"), labels=[10] * N_TEST), "0..9"),
    (lambda d: _rewrite(os.path.join(d, "data_batch_5"), labels=[-1] * N_PER_BATCH), "0..9"),
])
def test_bad_files_raise_one_clear_line(tmp_path, breakage, expected):
    folder, _ = write_cifar(tmp_path)
    breakage(folder)
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_integer_typed_pixels_are_accepted(tmp_path):
    folder, batches = write_cifar(tmp_path)
    _rewrite(os.path.join(folder, "data_batch_1"),
             data=batches["data_batch_1"]["data"].astype(np.int64))
    ds = D.load_cifar10(tmp_path)
    assert ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train[:N_PER_BATCH].reshape(N_PER_BATCH, -1),
                                  batches["data_batch_1"]["data"])


# ------------------------------------------------------------------------ downloading

def make_archive(tmp_path, members=None):
    """A tar.gz like the official one (cifar-10-batches-py/...) and its MD5."""
    src = tmp_path / "src"
    write_cifar(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        for name, blob in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(tmp_path):
    archive, md5 = make_archive(tmp_path)
    dest = tmp_path / "data"
    folder = D.download_cifar10(dest, url=archive.as_uri(), md5=md5)
    assert folder == os.path.join(dest, "cifar-10-batches-py")
    assert sorted(os.listdir(dest)) == ["cifar-10-batches-py"]  # no temp files left behind
    assert D.load_cifar10(dest).n_train == 5 * N_PER_BATCH
    # a second call finds the folder and does not download again
    assert D.download_cifar10(dest, url="file:///does/not/exist", md5=md5) == folder


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    archive, _ = make_archive(tmp_path)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="MD5"):
        D.download_cifar10(dest, url=archive.as_uri(), md5="0" * 32)
    assert not dest.exists()  # it created the folder, so it removes it again


@pytest.mark.parametrize("url", ["file:///no/such/cifar.tar.gz", "http://127.0.0.1:9/cifar.tar.gz"])
def test_unreachable_url_says_how_to_provide_data(tmp_path, url):
    with pytest.raises(DataError) as e:
        D.download_cifar10(tmp_path, timeout=2, url=url, md5=None)
    msg = str(e.value)
    assert "download" in msg and "failed" in msg and "to_batches.py" in msg and "\n" not in msg
    assert "to_batches.py" not in e.value.what  # the problem alone, for the synthetic banner
    assert os.listdir(tmp_path) == []  # an existing folder is kept, and left clean


def test_download_refuses_paths_outside_the_folder(tmp_path):
    archive, md5 = make_archive(tmp_path, members={"../evil.txt": b"x"})
    with pytest.raises(DataError, match="outside"):
        D.download_cifar10(tmp_path / "data", url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------ choosing data

def test_resolve_dataset_kinds(tmp_path, monkeypatch):
    write_cifar(tmp_path / "have")
    assert D.resolve_dataset("cifar10", tmp_path / "have").source == "cifar10"
    assert D.resolve_dataset("auto", tmp_path / "have").source == "cifar10"
    syn = D.resolve_dataset("synthetic", None, synthetic_sizes=(50, 20), seed=3)
    assert (syn.source, syn.n_train, syn.n_test, syn.seed) == ("synthetic", 50, 20, 3)
    with pytest.raises(DataError, match="--download"):
        D.resolve_dataset("cifar10", tmp_path / "missing")
    with pytest.raises(DataError, match="unknown dataset"):
        D.resolve_dataset("imagenet", tmp_path)
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "have"))
    assert D.resolve_dataset("cifar10", None).n_train == 5 * N_PER_BATCH


def test_resolve_auto_falls_back_to_synthetic_loudly(tmp_path, monkeypatch):
    def offline(data_dir, *a, **k):
        raise DataError("CIFAR-10 download from x failed (URLError: offline)", "do this")
    monkeypatch.setattr(D, "download_cifar10", offline)
    messages = []
    ds = D.resolve_dataset("auto", tmp_path, synthetic_sizes=(40, 10), warn=messages.append)
    assert ds.source == "synthetic" and ds.n_train == 40
    banner = messages[-1]
    assert "SYNTHETIC" in banner and banner.count("\n") >= 3 and "to_batches.py" in banner
    assert "URLError: offline" in banner and "do this" not in banner
    with pytest.raises(DataError, match="failed"):  # an explicit cifar10 never falls back
        D.resolve_dataset("cifar10", tmp_path, download=True, warn=messages.append)


def test_resolve_downloads_when_asked(tmp_path, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    real = D.download_cifar10
    monkeypatch.setattr(D, "download_cifar10",
                        lambda d, *a, **k: real(d, url=archive.as_uri(), md5=md5))
    ds = D.resolve_dataset("cifar10", tmp_path / "data", download=True, warn=lambda m: None)
    assert ds.source == "cifar10" and ds.n_test == N_TEST


# ------------------------------------------------------------------------ synthetic data

def test_synthetic_is_deterministic_and_cifar_shaped():
    a, b = D.make_synthetic(300, 100, seed=1), D.make_synthetic(300, 100, seed=1)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.x_train, D.make_synthetic(300, 100, seed=2).x_train)
    assert a.x_train.shape == (300, 3, 32, 32) and a.x_train.dtype == np.uint8
    assert a.x_train.flags.c_contiguous and a.y_train.dtype == np.int64
    assert a.source == "synthetic" and a.path is None and len(a.classes) == 10
    assert a.identity()["source"] == "synthetic"
    # the test split has its own stream: it does not depend on the training size
    np.testing.assert_array_equal(a.x_test, D.make_synthetic(50, 100, seed=1).x_test)


def test_synthetic_classes_are_balanced():
    assert (np.bincount(D.make_synthetic(1000, 200).y_train) == 100).all()
    counts = np.bincount(D.make_synthetic(1003, 20).y_train, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1003


def test_synthetic_has_class_signal_but_is_not_trivial():
    ds = D.make_synthetic(2000, 500, seed=0)
    x = ds.x_train.reshape(2000, -1).astype(np.float32)
    xt = ds.x_test.reshape(500, -1).astype(np.float32)
    centroids = np.stack([x[ds.y_train == k].mean(0) for k in range(10)])
    dist = (xt ** 2).sum(1)[:, None] - 2 * xt @ centroids.T + (centroids ** 2).sum(1)[None]
    acc = (dist.argmin(1) == ds.y_test).mean()
    assert 0.15 < acc < 0.9  # well above chance, far from solved by a template match


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(DataError):
        D.make_synthetic(0, 10)
    with pytest.raises(DataError):
        D.make_synthetic(10, 10, seed=-3)


# ------------------------------------------------------------------------ subset

def test_subset():
    ds = D.make_synthetic(100, 40)
    s = D.subset(ds, 30, None)
    assert (s.n_train, s.n_test) == (30, 40) and s.identity()["n_train"] == 30
    np.testing.assert_array_equal(s.x_train, ds.x_train[:30])
    np.testing.assert_array_equal(s.y_test, ds.y_test)
    for bad in [dict(n_train=0), dict(n_test=-1), dict(n_train=101), dict(n_test=2.5),
                dict(n_train=True)]:
        with pytest.raises(DataError):
            D.subset(ds, **bad)


# ------------------------------------------------------------------------ BatchLoader

def _loader(x, y, bs=8, **kw):
    kw.setdefault("shuffle", True)
    kw.setdefault("seed", 0)
    kw.setdefault("augment", False)
    return BatchLoader(x, y, bs, mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD, **kw)


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def test_loader_shapes_and_every_image_once():
    x, ids = _images(21), np.arange(21)
    for drop_last, n_batches, total in [(False, 3, 21), (True, 2, 16)]:
        loader = _loader(x, ids, 8, drop_last=drop_last)
        assert len(loader) == n_batches
        batches = list(loader.epoch(0))
        assert len(batches) == n_batches
        for xb, yb in batches:
            assert xb.dtype == np.float32 and xb.flags.c_contiguous and xb.shape[1:] == (3, 32, 32)
            assert yb.dtype == np.int64 and len(yb) == len(xb)
        seen = np.concatenate([yb for _, yb in batches])
        assert len(seen) == total and len(np.unique(seen)) == total
    assert [len(yb) for _, yb in _loader(x, ids, 8).epoch(0)] == [8, 8, 5]


def test_loader_order_comes_from_seed_and_epoch():
    x, ids = _images(40), np.arange(40)

    def order(loader, e):
        return np.concatenate([yb for _, yb in loader.epoch(e)])

    a = _loader(x, ids, seed=5)
    np.testing.assert_array_equal(order(a, 0), np.random.default_rng([5, 0]).permutation(40))
    assert not np.array_equal(order(a, 0), order(a, 1))
    # epoch 3 is the same whether or not epochs 0-2 ran before (resume)
    np.testing.assert_array_equal(order(a, 3), order(_loader(x, ids, seed=5), 3))
    assert not np.array_equal(order(a, 0), order(_loader(x, ids, seed=6), 0))
    np.testing.assert_array_equal(order(_loader(x, ids, shuffle=False), 2), ids)


def test_loader_normalisation_is_exact():
    x = _images(10)
    xb, _ = next(_loader(x, np.zeros(10, np.int64), 10, shuffle=False).epoch(0))
    mean = np.array(D.CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(D.CIFAR10_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(xb, (x / 255.0 - mean) / std, rtol=0, atol=2e-6)
    xb64, _ = next(_loader(x, np.zeros(10, np.int64), 10, shuffle=False,
                           dtype=np.float64).epoch(0))
    assert xb64.dtype == np.float64
    np.testing.assert_allclose(xb64, (x / 255.0 - mean) / std, rtol=0, atol=1e-12)


def _candidates(img):
    """All 81 crops x 2 flips of one uint8 image padded with 4 zero pixels."""
    padded = np.pad(img, ((0, 0), (4, 4), (4, 4)))
    crops = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    return crops, [c[:, :, ::-1] for c in crops]


def test_augmentation_is_only_crop_and_flip():
    x, ids = _images(24, seed=3), np.arange(24)
    loader = _loader(x, ids, 8, augment=True, seed=1)
    scale = 1 / (255 * np.array(D.CIFAR10_STD, np.float32)).reshape(3, 1, 1)
    shift = (-np.array(D.CIFAR10_MEAN) / np.array(D.CIFAR10_STD)).astype(np.float32)
    shift = shift.reshape(3, 1, 1)
    flipped_any = shifted_any = False
    for xb, yb in loader.epoch(0):
        for out, i in zip(xb, yb):
            crops, flips = _candidates(x[i])
            match = [k for k, c in enumerate(crops + flips)
                     if np.allclose(out, c * scale + shift, atol=1e-5)]
            assert match, "augmented image is not a padded crop/flip of its source"
            flipped_any |= match[0] >= 81
            shifted_any |= match[0] % 81 != 40  # 40 = no shift
    assert flipped_any and shifted_any
    # deterministic per (seed, epoch), different across epochs
    first = [xb for xb, _ in loader.epoch(0)]
    again = [xb for xb, _ in _loader(x, ids, 8, augment=True, seed=1).epoch(0)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = np.concatenate([xb for xb, _ in loader.epoch(1)])
    assert not np.array_equal(np.concatenate(first), other)


def test_augmented_padding_becomes_minus_mean_over_std():
    # constant images: any shifted crop shows the zero padding as -mean/std at its border
    x = np.full((64, 3, 32, 32), 200, np.uint8)
    xb = np.concatenate([b for b, _ in _loader(x, np.arange(64), 16, augment=True).epoch(0)])
    pad = -np.array(D.CIFAR10_MEAN) / np.array(D.CIFAR10_STD)
    inside = (200 / 255 - np.array(D.CIFAR10_MEAN)) / np.array(D.CIFAR10_STD)
    for c in range(3):
        vals = xb[:, c]
        is_pad = np.isclose(vals, pad[c], atol=1e-5)
        assert np.all(is_pad | np.isclose(vals, inside[c], atol=1e-5))
        assert is_pad.any() and is_pad.mean() < 0.5
        assert not is_pad[:, 4:28, 4:28].any()  # shifts are at most 4 pixels


def test_loader_records_data_time():
    loader = _loader(_images(16), np.arange(16), 4, augment=True)
    list(loader.epoch(0))
    assert loader.data_time_s > 0
    t0 = time.perf_counter()
    it = loader.epoch(1)
    assert loader.data_time_s <= time.perf_counter() - t0  # reset by the epoch() call
    next(it)
    assert loader.data_time_s > 0


def test_loader_rejects_bad_input():
    x = _images(4)
    with pytest.raises(DataError):
        _loader(x.astype(np.float32), np.arange(4))
    with pytest.raises(DataError):
        _loader(x, np.arange(3))
    with pytest.raises(DataError):
        _loader(x, np.arange(4), 0)
    with pytest.raises(DataError):
        _loader(x, np.arange(4), seed=-1)


def test_sharded_loaders_split_each_global_batch_of_the_one_process_order():
    """Data parallelism: ranks 0..W-1 with batch b together see, batch for batch, what one
    process with batch W*b sees (same order, same crops and flips); the short last global
    batch is dropped on every rank alike."""
    r = np.random.default_rng(0)
    x = r.integers(0, 256, (70, 3, 32, 32), dtype=np.uint8)
    y = r.integers(0, 10, 70)
    kw = dict(shuffle=True, seed=3, augment=True)
    whole = BatchLoader(x, y, 16, drop_last=True, **kw)
    ranks = [BatchLoader(x, y, 8, shard=(k, 2), **kw) for k in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 4       # 70 // 16, the 6 left over dropped
    for e in (0, 1):
        for (xw, yw), (x0, y0), (x1, y1) in zip(whole.epoch(e), ranks[0].epoch(e), ranks[1].epoch(e)):
            np.testing.assert_array_equal(np.concatenate([x0, x1]), xw)
            np.testing.assert_array_equal(np.concatenate([y0, y1]), yw)
    with pytest.raises(DataError, match="shard"):
        BatchLoader(x, y, 8, shard=(2, 2), **kw)
