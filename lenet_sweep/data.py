"""Fashion-MNIST: find the four IDX files, verify them, load them as numpy, split, wrap in tf.data.

:func:`fashion_mnist` is the default ``data._target_``; :func:`load` splits whatever the group's
builder returns (:mod:`lenet_sweep.builders`). No TensorFlow at import time: finding and verifying
data must fail fast, before TF loads.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lenet_sweep.config import FASHION_MNIST, UserError

#: SHA-256 of the *decompressed* IDX bytes. The .gz bytes differ between sources (Debian recompressed
#: them), the decompressed bytes are the publisher's everywhere.
SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
KERAS_CACHE = Path.home() / ".keras" / "datasets" / "fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
HOW_TO_GET = (
    "install it with 'apt-get install dataset-fashion-mnist', or set data.dir to a folder "
    "holding the four original *-ubyte.gz files"
)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataError(UserError, RuntimeError):
    """Missing or corrupt data; the message names the path and how to fix it."""


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # where they come from (:mod:`lenet_sweep.provenance`): the SHA-256 of each source of the "train"
    # and "test" parts ({file or array: checksum}), the source's URI (None: the code), a dataset name
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    origin: str | None = None
    name: str = "fashion-mnist"
    class_names: Sequence[str] = CLASS_NAMES


def find_dir(configured: str | None, candidates: Sequence[Path] = (KERAS_CACHE, DEBIAN_DIR),
             download: bool = True) -> Path:
    """The folder holding all four files: ``data.dir`` alone if set, else the first candidate."""
    if configured is not None:
        folder = Path(configured).expanduser()
        missing = [n for n in SHA256 if not (folder / n).is_file()]
        if missing:
            raise DataError(f"data.dir={folder}: {missing[0]} not found there; {HOW_TO_GET}")
        return folder
    for folder in candidates:
        if all((folder / n).is_file() for n in SHA256):
            return folder
    if download:
        try:
            return _download()
        except Exception as exc:  # offline, proxy, ...: fall through to the clear message
            reason = f"; download from {ORIGIN} failed ({type(exc).__name__})"
    else:
        reason = ""
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"Fashion-MNIST not found (looked in {looked}){reason}; {HOW_TO_GET}")


def _download() -> Path:
    from keras.utils import get_file  # imported only when nothing is on disk

    for name in SHA256:
        get_file(name, origin=ORIGIN + name, cache_dir=str(KERAS_CACHE.parent.parent),
                 cache_subdir=str(KERAS_CACHE.relative_to(KERAS_CACHE.parent.parent)))
    return KERAS_CACHE


def read_idx(path: Path, sha256: str | None) -> np.ndarray:
    """Decompress one IDX file, check its SHA-256, return it as a uint8 array."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read it as gzip ({exc}); {HOW_TO_GET}") from None
    if sha256 is not None:
        actual = hashlib.sha256(raw).hexdigest()
        if actual != sha256:
            raise DataError(f"{path} is corrupt: SHA-256 of its decompressed bytes is {actual}, "
                            f"expected {sha256}; delete it, then {HOW_TO_GET}")
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; {HOW_TO_GET}")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {data.size} bytes; {HOW_TO_GET}")
    return data.reshape(shape)


def load_arrays(folder: Path, checksums: Mapping[str, str | None] = SHA256):
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays, like keras' load_data()."""
    x_train, y_train, x_test, y_test = (
        read_idx(folder / name, checksums.get(name)) for name in SHA256
    )
    return (x_train, y_train), (x_test, y_test)


def split(train, test, validation_split: float, train_limit: int | None = None,
          test_limit: int | None = None, normalize: bool = False) -> Splits:
    """Keras' ``validation_split``: the last fraction of the (limited) training set validates."""
    (x, y), (xt, yt) = train, test
    x, y, xt, yt = x[:train_limit], y[:train_limit], xt[:test_limit], yt[:test_limit]
    cut = int(np.floor(len(x) * (1.0 - validation_split)))
    if cut == 0 or cut == len(x):
        raise DataError(f"data.validation_split={validation_split} leaves no training or no "
                        f"validation images out of {len(x)}")

    def images(a: np.ndarray) -> np.ndarray:
        a = (a if a.ndim == 4 else a[..., None]).astype(np.float32)  # (N, H, W) -> (N, H, W, 1)
        return a / 255.0 if normalize else a

    return Splits(images(x[:cut]), y[:cut].astype(np.int32), images(x[cut:]),
                  y[cut:].astype(np.int32), images(xt), yt.astype(np.int32))


@functools.lru_cache(maxsize=2)
def _verified(folder: Path, stamp: tuple) -> tuple:
    return load_arrays(folder)


def fashion_mnist(data_cfg):
    """The default ``data._target_``: Fashion-MNIST's four files (``data.dir``, else the usual places),
    verified. A sweep worker runs many trials: the verified arrays are kept per process while the
    files stay the same (size, mtime)."""
    folder = find_dir(data_cfg.dir)
    return _verified(folder, _stamp(folder))


def _stamp(folder: Path) -> tuple:
    """The four files' sizes and mtimes: a changed file is read (and verified) again."""
    return tuple((s.st_size, s.st_mtime_ns) for s in ((folder / n).stat() for n in SHA256))


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def load(data_cfg) -> Splits:
    """The arrays of ``data._target_`` (:mod:`lenet_sweep.builders`), split as ``data_cfg`` says.
    Fashion-MNIST's sources are its files' checksums (verified as read); another builder's are the
    checksums of the arrays it returned."""
    from lenet_sweep import builders

    train, test = builders.load_data(data_cfg)
    splits = split(train, test, data_cfg.validation_split, data_cfg.train_limit,
                   data_cfg.test_limit, data_cfg.normalize)
    target = builders.target(data_cfg, "data")
    if target == FASHION_MNIST:
        files = list(SHA256)
        splits.sources = {"train": {n: SHA256[n] for n in files[:2]}, "test": {n: SHA256[n] for n in files[2:]}}
        splits.origin = find_dir(data_cfg.dir, download=False).resolve().as_uri()
        return splits
    (x, y), (xt, yt) = train, test
    splits.sources = {"train": {"x_train": _sha256(x), "y_train": _sha256(y)},
                      "test": {"x_test": _sha256(xt), "y_test": _sha256(yt)}}
    splits.name = target
    splits.class_names = tuple(map(str, range(int(max(y.max(), yt.max())) + 1)))  # classes by number
    return splits


def cache_key(data_cfg) -> tuple:
    """What selects a run's splits: the data settings, and Fashion-MNIST's files as they are now (a
    changed file is read again). Another builder's arrays are taken as fixed by its settings."""
    from lenet_sweep import builders

    target = builders.target(data_cfg, "data")
    settings = (target, data_cfg.validation_split, data_cfg.train_limit, data_cfg.test_limit,
                bool(data_cfg.normalize))
    if target == FASHION_MNIST:
        folder = find_dir(data_cfg.dir)
        return (*settings, str(folder), _stamp(folder))
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else vars(data_cfg)
    return (*settings, json.dumps(values, sort_keys=True, default=str))


def to_datasets(splits: Splits, batch_size: int, seed: int):
    """tf.data pipelines for ``fit`` (``trainer.fast=false``): the arrays are held once in memory
    (``from_tensor_slices`` + ``cache``), reshuffled every epoch (as fit's shuffle=True), batched and
    prefetched."""
    import tensorflow as tf

    train = (tf.data.Dataset.from_tensor_slices((splits.x_train, splits.y_train)).cache()
             .shuffle(len(splits.x_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    val = (tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).cache()
           .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    test = (tf.data.Dataset.from_tensor_slices((splits.x_test, splits.y_test))
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    return train, val, test


def to_tensors(splits: Splits) -> Splits:
    """The splits as TensorFlow tensors, held once in memory, for the in-graph trainer
    (``trainer.fast=true``, :mod:`lenet_sweep.model.fast_fit`), which shuffles and batches by index."""
    import tensorflow as tf

    return Splits(*(tf.convert_to_tensor(a) for a in (
        splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test, splits.y_test)))
