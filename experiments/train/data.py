"""CIFAR-10 on disk, a synthetic stand-in, and the batch loader both implementations share.

Every data problem raises `DataError` with one line that says what is wrong and what to do;
the CLI prints it and exits 2. The loader is the single source of data order and
augmentation for scratch and torch runs alike, so a comparison feeds both the same batches.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

# Per-channel statistics of the CIFAR-10 training set in [0, 1] units, as torchvision
# recipes use them; synthetic data is normalised with the same constants so that a run's
# preprocessing does not depend on which data it got.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CROP_PADDING = 4  # RandomCrop(32, padding=4): the standard CIFAR augmentation

# Where the data lives on this project's machines; quoted in every "how to get it" message.
_HOW_TO_PROVIDE = ("pass --download, or on this project's machines run "
                   "`python ../shared/datasets/cifar10/to_batches.py --out data`, "
                   "or point CIFAR10_DIR / --data-dir at a folder holding cifar-10-batches-py/")


class DataError(Exception):
    """A data problem the user can fix; the message is one line saying what and how.

    `what` is the problem alone (for callers that phrase their own advice, like the
    synthetic-data warning); str(error) is the whole line.
    """

    def __init__(self, what: str, how: Optional[str] = None):
        super().__init__(what if how is None else f"{what}; {how}")
        self.what, self.how = what, how


@dataclass
class Dataset:
    x_train: np.ndarray          # uint8 (N, 3, 32, 32), C-contiguous
    y_train: np.ndarray          # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: List[str] = field(default_factory=lambda: list(CIFAR10_CLASSES))
    source: str = "cifar10"      # "cifar10" or "synthetic"
    path: Optional[str] = None   # the cifar-10-batches-py folder read, None for synthetic
    seed: Optional[int] = None   # generator seed for synthetic data, None for cifar10

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def identity(self) -> dict:
        """What config.json records so a reader knows exactly which data a run saw."""
        return {"source": self.source, "path": self.path, "n_train": self.n_train,
                "n_test": self.n_test, "seed": self.seed}


# --------------------------------------------------------------------------- reading

def default_data_dir() -> str:
    return os.environ.get("CIFAR10_DIR") or "data"


def find_batches_dir(data_dir) -> Optional[str]:
    """The cifar-10-batches-py folder under (or at) data_dir, or None if there is none."""
    if data_dir is None:
        return None
    data_dir = os.fspath(data_dir)
    nested = os.path.join(data_dir, BATCHES_DIRNAME)
    if os.path.isdir(nested):
        return nested
    # Also accept data_dir naming the batches folder itself (recognised by its files,
    # not its name, so a renamed copy works too).
    if os.path.isdir(data_dir) and any(os.path.exists(os.path.join(data_dir, f))
                                       for f in TRAIN_FILES + (TEST_FILE,)):
        return data_dir
    return None


def _str_keys(d: dict) -> dict:
    # The official archive was pickled by Python 2: its keys load as bytes with
    # encoding="bytes" and as str with "latin1"; to_batches.py writes str. Accept all.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _recreate(path: str) -> str:
    # --download skips a folder that exists, so a broken one has to go first.
    folder = os.path.dirname(os.path.abspath(path))
    return f"delete {folder} and re-create it ({_HOW_TO_PROVIDE})"


def _unpickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"CIFAR-10 file missing: {path}", _recreate(path))
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated/corrupt pickles raise a zoo of exception types
        raise DataError(f"CIFAR-10 file {path} is corrupt or truncated "
                        f"({type(e).__name__}: {e})", _recreate(path)) from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 file {path} holds a {type(obj).__name__}, expected a dict "
                        f"with 'data' and 'labels'", _recreate(path))
    return _str_keys(obj)


def _read_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    for key in ("data", "labels"):
        if key not in d:
            raise DataError(f"CIFAR-10 file {path} has no '{key}' entry "
                            f"(keys: {sorted(map(str, d))})", _recreate(path))
    try:
        raw = np.asarray(d["data"])
        labels = np.asarray(d["labels"])
    except Exception as e:
        raise DataError(f"CIFAR-10 file {path}: 'data'/'labels' are not arrays ({e})",
                        _recreate(path)) from None
    if raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR-10 file {path}: 'data' has shape {raw.shape}, expected "
                        f"(N, 3072) uint8 rows", _recreate(path))
    if raw.dtype != np.uint8:
        # Integer-valued arrays in 0..255 are harmless re-encodings; anything else is not.
        ok = raw.dtype.kind in "iub" or (raw.dtype.kind == "f" and np.all(raw == np.round(raw)))
        if not ok or (raw.size and (raw.min() < 0 or raw.max() > 255)):
            raise DataError(f"CIFAR-10 file {path}: 'data' has dtype {raw.dtype} and cannot "
                            f"be read as uint8 pixels 0..255", _recreate(path))
        raw = raw.astype(np.uint8)
    if labels.ndim != 1 or labels.shape[0] != raw.shape[0]:
        raise DataError(f"CIFAR-10 file {path}: {labels.size} labels for {raw.shape[0]} images",
                        _recreate(path))
    if labels.size and labels.dtype.kind not in "iu":
        raise DataError(f"CIFAR-10 file {path}: labels have dtype {labels.dtype}, expected "
                        f"integers", _recreate(path))
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 file {path}: labels must lie in 0..9, found "
                        f"{labels.min()}..{labels.max()}", _recreate(path))
    return raw, labels


def load_cifar10(data_dir) -> Dataset:
    """Read the standard python layout under data_dir (or data_dir itself).

    Batches smaller than the official 10,000 images are fine (subsets made by to_batches.py).
    """
    folder = find_batches_dir(data_dir)
    if folder is None:
        raise DataError(f"CIFAR-10 not found: no {BATCHES_DIRNAME}/ in "
                        f"{os.path.abspath(os.fspath(data_dir or '.'))}", _HOW_TO_PROVIDE)
    train = [_read_batch(os.path.join(folder, f)) for f in TRAIN_FILES]
    x_test, y_test = _read_batch(os.path.join(folder, TEST_FILE))
    classes = list(CIFAR10_CLASSES)
    meta_path = os.path.join(folder, META_FILE)
    if os.path.exists(meta_path):  # only names; the standard ones are used without it
        names = _unpickle(meta_path).get("label_names")
        if names is not None:
            names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
            if len(names) != 10:
                raise DataError(f"CIFAR-10 file {meta_path}: {len(names)} label_names, "
                                f"expected 10", _recreate(meta_path))
            classes = names
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DataError(f"CIFAR-10 folder {folder} holds no training or no test images",
                        _recreate(os.path.join(folder, TEST_FILE)))
    # Rows are channel-major (1024 R, 1024 G, 1024 B), so a reshape gives NCHW without a copy.
    return Dataset(x_train=np.ascontiguousarray(x_train.reshape(-1, 3, 32, 32)), y_train=y_train,
                   x_test=np.ascontiguousarray(x_test.reshape(-1, 3, 32, 32)), y_test=y_test,
                   classes=classes, source="cifar10", path=os.path.abspath(folder))


# --------------------------------------------------------------------------- downloading

def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(f"refusing to extract archive member {name!r}: it would land outside "
                        f"the data folder; the download is not the CIFAR-10 archive")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"refusing to extract archive member {name!r}: links and special files "
                        f"are not part of the CIFAR-10 archive")


def download_cifar10(data_dir, timeout: float = 30, *, url: str = CIFAR10_URL,
                     md5: Optional[str] = CIFAR10_MD5) -> str:
    """Download, verify and extract CIFAR-10 into data_dir; return the batches folder.

    A folder that is already there is returned untouched. The archive goes to a temporary
    file and is extracted into a temporary folder beside the target, which is renamed into
    place last, so an interrupted download never leaves a half-written cifar-10-batches-py/.
    `url` and `md5` exist so tests can serve a small archive from a file:// URL.
    """
    data_dir = os.fspath(data_dir)
    target = os.path.join(data_dir, BATCHES_DIRNAME)
    if os.path.isdir(target):
        return target
    created = not os.path.isdir(data_dir)
    try:
        os.makedirs(data_dir, exist_ok=True)
        fd, archive = tempfile.mkstemp(prefix=".cifar10-", suffix=".tar.gz", dir=data_dir)
    except OSError as e:
        raise DataError(f"cannot write to data folder {data_dir}: {e}") from None
    how = f"provide the data by hand: {_HOW_TO_PROVIDE.replace('pass --download, or ', '')}"
    staging = None
    ok = False
    try:
        digest = hashlib.md5(usedforsecurity=False)  # an integrity check, as published
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
        except Exception as e:  # URLError, timeouts, resets, bad URLs, HTTP errors
            raise DataError(f"CIFAR-10 download from {url} failed ({type(e).__name__}: {e})",
                            how) from None
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DataError(f"CIFAR-10 download from {url} has MD5 {digest.hexdigest()}, expected "
                            f"{md5}: the file is damaged or not the official archive",
                            f"retry or {how}")
        staging = tempfile.mkdtemp(prefix=".cifar10-extract-", dir=data_dir)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m)
                if hasattr(tarfile, "data_filter"):  # belt and braces where Python has it
                    tar.extractall(staging, members=members, filter="data")
                else:
                    tar.extractall(staging, members=members)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"CIFAR-10 archive from {url} cannot be extracted "
                            f"({type(e).__name__}: {e})", f"retry or {how}") from None
        extracted = os.path.join(staging, BATCHES_DIRNAME)
        if not os.path.isdir(extracted):
            raise DataError(f"CIFAR-10 archive from {url} has no {BATCHES_DIRNAME}/ folder", how)
        try:
            os.rename(extracted, target)
        except OSError as e:
            if not os.path.isdir(target):  # a concurrent download finishing first is fine
                raise DataError(f"cannot move extracted CIFAR-10 into {target}: {e}") from None
        ok = True
        return target
    finally:
        if os.path.exists(archive):
            os.remove(archive)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and not ok:
            try:  # an offline "auto" run should not leave an empty data/ folder behind
                os.rmdir(data_dir)
            except OSError:
                pass


# --------------------------------------------------------------------------- synthetic data

# Knobs of the synthetic task, tuned so the study's small CNN (SGD 0.01, momentum 0.9,
# batch 64, no augmentation) reaches 80-95% test accuracy after one epoch of 10,000 images
# (82-94% over seeds 0-5), roughly 40-70% with crop+flip augmentation, and stays near
# chance for the first few dozen steps. class_amp is the difficulty dial: +-1 moves the
# one-epoch accuracy by about 5 points.
_SYN_SHIFT = 4           # templates are drawn on a (32 + 2*shift)^2 canvas, cropped at random
_SYN_FREQS = 4           # low-frequency Fourier components per axis in a template
_SYN_PARAMS = dict(shared_amp=40.0, class_amp=14.5, noise_bits=7, brightness=(0.7, 1.3),
                   brightness_levels=7, colour_shift=12.0)


def _synthetic_templates(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour patterns around 0, int16 (10 * levels, 3, size, size).

    Row k * levels + b is class k at brightness level b: scaling the few templates up front
    instead of every image keeps generation in cheap integer arithmetic.
    """
    k = _SYN_FREQS
    pos = (np.arange(size) + 0.5) / size - 0.5      # centred, so cos terms are mirror-symmetric
    freqs = np.arange(1, k + 1)
    rows = np.concatenate([np.cos(2 * np.pi * np.outer(pos, freqs)),
                           np.sin(2 * np.pi * np.outer(pos, freqs))], axis=1)      # (size, 2k)
    # Left-right symmetric patterns (cosines only along x; frequencies in half steps keep
    # as many of them), so a horizontal flip, the standard augmentation, maps an image of a
    # class to another plausible image of the same class instead of to a new pattern.
    cols = np.cos(2 * np.pi * np.outer(pos, np.arange(1, 2 * k + 1) / 2))          # (size, 2k)

    def patterns(n):
        coef = rng.standard_normal((n, 3, 2 * k, 2 * k)) / (2 * k)
        pat = np.einsum("ia,ncab,jb->ncij", rows, coef, cols)
        return pat / pat.std(axis=(1, 2, 3), keepdims=True)

    p = _SYN_PARAMS
    # A shared pattern plus a weaker class-specific one keeps the classes overlapping,
    # so the task is learnable but not solved in a handful of steps.
    base = p["shared_amp"] * patterns(1) + p["class_amp"] * patterns(10)     # (10, 3, s, s)
    levels = np.linspace(*p["brightness"], p["brightness_levels"])
    scaled = base[:, None] * levels[None, :, None, None, None]
    return np.rint(scaled).astype(np.int16).reshape(-1, 3, size, size)


def _synthetic_split(templates: np.ndarray, n: int, rng: np.random.Generator):
    p = _SYN_PARAMS
    n_levels = p["brightness_levels"]
    # Balanced labels: every class n // 10 or n // 10 + 1 times, in random order.
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    which = labels * n_levels + rng.integers(0, n_levels, size=n)
    shifts = rng.integers(0, 2 * _SYN_SHIFT + 1, size=(2, n))
    windows = np.lib.stride_tricks.sliding_window_view(templates, (32, 32), axis=(2, 3))
    # windows: (templates, 3, dy, dx, 32, 32); one fancy index picks each image's shifted crop
    img = windows[which[:, None], np.arange(3)[None, :], shifts[0][:, None], shifts[1][:, None]]
    tint = np.rint(p["colour_shift"] * rng.standard_normal((n, 3, 1, 1))).astype(np.int16)
    img += tint + 128
    # Uniform per-pixel noise in [-2^(bits-1), 2^(bits-1)) from raw random bytes:
    # several times cheaper than Gaussians, and the CNN does not care about the shape.
    bits = int(p["noise_bits"])
    noise = np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape) >> (8 - bits)
    img += noise
    img -= 1 << (bits - 1)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), labels


def make_synthetic(n_train: int = 10000, n_test: int = 2000, seed: int = 0) -> Dataset:
    """A deterministic, learnable, CIFAR-shaped 10-class task for offline demos and tests.

    Each class is a fixed smooth colour pattern; each image is that pattern shifted by up to
    4 pixels, scaled in brightness, tinted, and drowned in per-pixel noise. The test split
    has its own random stream, so it does not change with n_train.
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, (int, np.integer)) or n <= 0:
            raise DataError(f"synthetic dataset: {name} must be a positive integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"synthetic dataset: seed must be a non-negative integer, got {seed!r}")
    templates = _synthetic_templates(np.random.default_rng([seed, 0]), 32 + 2 * _SYN_SHIFT)
    x_train, y_train = _synthetic_split(templates, int(n_train), np.random.default_rng([seed, 1]))
    x_test, y_test = _synthetic_split(templates, int(n_test), np.random.default_rng([seed, 2]))
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=[f"pattern{i}" for i in range(10)], source="synthetic", path=None,
                   seed=int(seed))


# --------------------------------------------------------------------------- choosing data

def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_SYNTHETIC_BANNER = """\
{bar}
WARNING: CIFAR-10 is not available ({why}).
WARNING: this run uses SYNTHETIC data ({n_train} train / {n_test} test images).
WARNING: its accuracies say nothing about CIFAR-10; it is recorded as "synthetic".
WARNING: to use the real images, {how}.
{bar}"""


def resolve_dataset(kind: str, data_dir=None, download: bool = False,
                    synthetic_sizes: Tuple[int, int] = (10000, 2000), seed: int = 0,
                    warn: Callable[[str], None] = _stderr) -> Dataset:
    """Pick the data a run uses.

    kind "cifar10": the local copy, else a download when `download` is true, else DataError.
    kind "synthetic": make_synthetic(*synthetic_sizes, seed).
    kind "auto": the local copy, else a download attempt, else synthetic data with a loud
    warning. A local copy that is present but broken is always an error, never a fallback.
    data_dir None means $CIFAR10_DIR, or ./data.
    """
    if data_dir is None:
        data_dir = default_data_dir()
    if kind == "synthetic":
        return make_synthetic(*synthetic_sizes, seed=seed)
    if kind not in ("cifar10", "auto"):
        raise DataError(f"unknown dataset {kind!r}: choose cifar10, synthetic or auto")
    if find_batches_dir(data_dir) is not None:
        return load_cifar10(data_dir)
    if kind == "cifar10" and not download:
        return load_cifar10(data_dir)  # raises the "not found, here is how" error
    try:
        warn(f"CIFAR-10 not found in {os.path.abspath(os.fspath(data_dir))}; "
             f"downloading {CIFAR10_URL} ...")
        download_cifar10(data_dir)
    except DataError as e:
        if kind == "cifar10":
            raise
        ds = make_synthetic(*synthetic_sizes, seed=seed)
        bar = "!" * 88
        warn(_SYNTHETIC_BANNER.format(bar=bar, why=e.what, n_train=ds.n_train,
                                      n_test=ds.n_test, how=_HOW_TO_PROVIDE.replace(
                                          "pass --download, or ", "")))
        return ds
    return load_cifar10(data_dir)


def subset(ds: Dataset, n_train: Optional[int] = None, n_test: Optional[int] = None) -> Dataset:
    """The first n images of each split (None keeps the split whole)."""
    def take(x, y, n, name, avail):
        if n is None:
            return x, y
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise DataError(f"{name} must be a positive integer, got {n!r}")
        if n > avail:
            raise DataError(f"{name}={n} but the {ds.source} data has only {avail} images")
        return np.ascontiguousarray(x[:n]), np.ascontiguousarray(y[:n])

    x_train, y_train = take(ds.x_train, ds.y_train, n_train, "n_train", ds.n_train)
    x_test, y_test = take(ds.x_test, ds.y_test, n_test, "n_test", ds.n_test)
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   classes=list(ds.classes), source=ds.source, path=ds.path, seed=ds.seed)


# --------------------------------------------------------------------------- batches

class BatchLoader:
    """Mini-batches of normalised float images, ordered and augmented by (seed, epoch) alone.

    Because epoch e's order and crops depend only on (seed, e), a run resumed at epoch e
    sees exactly the batches an uninterrupted run would, and scratch and torch runs with the
    same seed see the same batches. Augmentation reproduces torchvision's
    RandomCrop(32, padding=4) + RandomHorizontalFlip() + ToTensor() + Normalize(mean, std):
    padding is zero in raw pixels, so padded pixels come out as -mean/std.
    """

    def __init__(self, x_uint8: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool,
                 seed: int, augment: bool, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD, drop_last: bool = False, dtype=np.float32,
                 shard: Tuple[int, int] = (0, 1)):
        x = np.asarray(x_uint8)
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"BatchLoader needs uint8 images (N, C, H, W), got {x.dtype} {x.shape}")
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise DataError(f"BatchLoader: {y.shape} labels for {x.shape[0]} images")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"loader seed must be a non-negative integer, got {seed!r}")
        c = x.shape[1]
        mean = np.asarray(mean, np.float64).reshape(-1)
        std = np.asarray(std, np.float64).reshape(-1)
        if mean.shape != (c,) or std.shape != (c,) or np.any(std <= 0):
            raise DataError(f"mean/std need {c} values with std > 0, got {mean} / {std}")
        rank, world = (int(v) for v in shard)
        if world < 1 or not 0 <= rank < world:
            raise DataError(f"shard (rank, world) must have 0 <= rank < world, got {shard!r}")
        # Data parallelism: a global batch is batch_size * world images in the one-process
        # order; rank r trains on its r-th slice of each. A short last global batch cannot be
        # split into equal shares, so a sharded loader drops it (as drop_last does).
        self.rank, self.world = rank, world
        self.x = np.ascontiguousarray(x)
        self.y = y.astype(np.int64)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.augment = bool(shuffle), int(seed), bool(augment)
        self.drop_last = bool(drop_last) or world > 1
        self.dtype = np.dtype(dtype)
        # (x/255 - mean)/std == x*scale + shift: one multiply-add per pixel
        self._scale = (1.0 / (255.0 * std)).astype(self.dtype).reshape(1, c, 1, 1)
        self._shift = (-mean / std).astype(self.dtype).reshape(1, c, 1, 1)
        self.data_time_s = 0.0
        self._padded = None  # reusable zero-bordered uint8 buffer for cropping

    def __len__(self) -> int:
        n, g = self.x.shape[0], self.batch_size * self.world
        return n // g if self.drop_last else -(-n // g)

    @property
    def n_images(self) -> int:
        return int(self.x.shape[0])

    def order(self, epoch: int) -> np.ndarray:
        """Indices of the images of `epoch` in the order they are served."""
        n = self.x.shape[0]
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def scale_shift(self):
        """Per-channel (scale, shift), each (C,): a batch is uint8 * scale + shift in self.dtype."""
        return self._scale.reshape(-1), self._shift.reshape(-1)

    def aug_params(self, epoch: int):
        """(crop row offsets, crop column offsets, flips) for `epoch`, one of each per position
        in the epoch's order (offsets into the image padded by CROP_PADDING on every side)."""
        # A separate stream from the order's, so switching shuffle off does not change crops.
        rng = np.random.default_rng([self.seed, int(epoch), 1])
        n = self.x.shape[0]
        offs = rng.integers(0, 2 * CROP_PADDING + 1, size=(2, n))
        flip = rng.random(n) < 0.5
        return offs[0], offs[1], flip

    def epoch(self, epoch: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Iterator over (x float (B,C,H,W) C-contiguous, y int64 (B,)) for this epoch.

        Resets data_time_s, which then accumulates the seconds spent producing batches
        (not the time the consumer spends between them).
        """
        self.data_time_s = 0.0
        t0 = time.perf_counter()
        order = self.order(epoch)
        params = self.aug_params(epoch) if self.augment else None
        self.data_time_s += time.perf_counter() - t0
        return self._batches(order, params)

    def slices(self, order, params):
        """(image indices, augmentation parameters or None) of each batch of an epoch (this
        rank's share of each global batch): the order and the per-position parameters cut
        alike (host or device arrays)."""
        b, g = self.batch_size, self.batch_size * self.world
        for i in range(len(self)):
            sl = slice(i * g + self.rank * b, i * g + (self.rank + 1) * b)
            yield order[sl], (None if params is None else tuple(a[sl] for a in params))

    def _batches(self, order, params):
        for idx, p in self.slices(order, params):
            t0 = time.perf_counter()
            raw = self.x[idx] if p is None else self._crop_flip(idx, *p)
            xb = np.empty(raw.shape, self.dtype)
            np.multiply(raw, self._scale, out=xb)
            xb += self._shift
            yb = self.y[idx]
            self.data_time_s += time.perf_counter() - t0
            yield xb, yb

    def _crop_flip(self, idx, dy, dx, flip) -> np.ndarray:
        n_b = len(idx)
        _, c, h, w = self.x.shape
        p = CROP_PADDING
        if self._padded is None or self._padded.shape[0] < n_b:
            self._padded = np.zeros((n_b, c, h + 2 * p, w + 2 * p), np.uint8)
        padded = self._padded[:n_b]
        padded[:, :, p:p + h, p:p + w] = self.x[idx]  # the zero border is never written
        win = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
        # win: (B, C, 2p+1, 2p+1, H, W); index (image, channel, dy, dx) -> its H x W crop
        out = win[np.arange(n_b)[:, None], np.arange(c)[None, :], dy[:, None], dx[:, None]]
        if flip.any():
            out[flip] = out[flip][..., ::-1]
        return out
