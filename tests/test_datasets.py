"""Tests of skkprior.datasets: loaders, checksums, the restricted unpickler, the pretrained
network and the task streams.

Tests marked ``data`` read the data home fetched by ``bash scripts/fetch_data.sh``. When it
lacks a file they are skipped, unless ``SKKPRIOR_REQUIRE_DATA=1`` (the README's test command,
which CI runs, sets it): then they fail (see the repository's ``conftest.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from skkprior import datasets as ds
from skkprior.datasets import (
    MnistCNN,
    Task,
    data_home,
    dataset_sequence,
    load_animal_mnist,
    load_digits_images,
    load_fashion_mnist,
    load_mnist,
    load_mnist1d,
    permuted_tasks,
    pretrained_mnist_cnn,
    split_tasks,
    subsample_per_class,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_data.sh"
MNIST_CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


@pytest.fixture(scope="session")
def home() -> Path:
    """The real data home, or a test failure that says how to fetch it (``data`` tests only)."""
    folder = data_home()
    missing = [rel for rel in ds._SHA256 if not (folder / rel).is_file()]
    if missing:
        pytest.fail(f"the data home {folder} lacks {missing}. Run `bash scripts/fetch_data.sh` "
                    "(set SKKPRIOR_DATA to use another folder) before the tests.", pytrace=False)
    return folder


@pytest.fixture(scope="module")
def mnist(home):
    return load_mnist()


@pytest.fixture(scope="module")
def fashion(home):
    return load_fashion_mnist()


@pytest.fixture(scope="module")
def animal(home):
    return load_animal_mnist()


def _check_images(data, n_train, n_test, side=28):
    X_train, y_train, X_test, y_test = data
    assert X_train.shape == (n_train, 1, side, side) and X_test.shape == (n_test, 1, side, side)
    assert y_train.shape == (n_train,) and y_test.shape == (n_test,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0


# ------------------------------------------------------------------------------- data home


def test_data_home_env_default_and_explicit(monkeypatch, tmp_path):
    monkeypatch.setenv("SKKPRIOR_DATA", str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.setenv("SKKPRIOR_DATA", "")
    assert data_home() == Path("~/skkprior_data").expanduser()
    monkeypatch.delenv("SKKPRIOR_DATA")
    assert data_home() == Path("~/skkprior_data").expanduser()
    assert data_home(tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("loader, source", [
    (load_mnist, "mnist"), (load_fashion_mnist, "fashion-mnist"),
    (load_animal_mnist, "animal-mnist"), (pretrained_mnist_cnn, "mnist-cnn"),
    (dataset_sequence, "mnist"),
])
def test_missing_source_names_the_fetch_command(loader, source, tmp_path, monkeypatch):
    monkeypatch.setenv("SKKPRIOR_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError,
                       match=rf"Got no such file instead\..*`bash scripts/fetch_data\.sh "
                             rf"{source}`"):
        loader()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "elsewhere")):
        loader(data_home=tmp_path / "elsewhere")


@pytest.mark.data
def test_checksum_mismatch_and_broken_gzip_raise(home, tmp_path):
    target = tmp_path / "animal-mnist"
    target.mkdir()
    shutil.copy(home / "animal-mnist/animal_data_version_3.gz", target)
    label_file = target / "animal_label_version_3.gz"
    label_file.write_bytes(gzip.compress(pickle.dumps(np.zeros(10000, dtype=np.int64))))
    with pytest.raises(ValueError, match="sha256 of the data file .*animal_label.*fetch_data"):
        load_animal_mnist(data_home=tmp_path)
    label_file.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="a valid gzip file"):
        load_animal_mnist(data_home=tmp_path)
    (tmp_path / "mnist-cnn").mkdir()
    weights = (home / "mnist-cnn/mnist.pth").read_bytes()
    (tmp_path / "mnist-cnn/mnist.pth").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(ValueError, match=f"must be {ds._SHA256['mnist-cnn/mnist.pth']}"):
        pretrained_mnist_cnn(data_home=tmp_path)


def _script_sums() -> dict[str, str]:
    text = SCRIPT.read_text()
    return {m.group(2): m.group(1)
            for m in re.finditer(r"^([0-9a-f]{64})  (\S+)$", text, flags=re.MULTILINE)}


@pytest.mark.data
def test_checksums_of_the_data_home_and_the_fetch_script(home):
    script = _script_sums()
    assert set(script) == set(ds._SHA256)
    for rel, expected in ds._SHA256.items():
        raw = (home / rel).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == script[rel], rel  # the file the script made
        content = gzip.decompress(raw) if rel.endswith(".gz") else raw
        assert hashlib.sha256(content).hexdigest() == expected, rel  # what the loader checks
        if not rel.endswith(".gz"):
            assert script[rel] == expected


# ------------------------------------------------------------------------------- loaders


@pytest.mark.data
def test_load_mnist(mnist):
    _check_images(mnist, 8000, 2000)
    X_train, y_train, X_test, y_test = mnist
    assert (np.bincount(y_train) + np.bincount(y_test)).tolist() == MNIST_CLASS_COUNTS
    # stratified: each class's test share is 20 % up to rounding
    assert np.all(np.abs(np.bincount(y_test) - 0.2 * np.array(MNIST_CLASS_COUNTS)) <= 1)
    assert np.array_equal(np.round(X_train * 255) / 255, X_train)  # exact k / 255 values


def _rows(X):
    return [row.tobytes() for row in X.reshape(len(X), -1)]


@pytest.mark.data
def test_seeded_splits_are_deterministic_and_disjoint(home, mnist, animal):
    again = load_mnist(random_state=0)
    assert all(np.array_equal(a, b) for a, b in zip(mnist, again))
    other = load_mnist(random_state=1)
    assert not np.array_equal(mnist[1], other[1])
    assert all(np.array_equal(a, b) for a, b in zip(animal, load_animal_mnist(random_state=0)))
    assert not np.array_equal(animal[1], load_animal_mnist(random_state=1)[1])
    small = load_animal_mnist(test_size=500, random_state=3)
    assert 500 <= len(small[3]) <= 530 and np.all(np.abs(np.bincount(small[3]) - 50) <= 3)
    # MNIST: train and test together are the 10,000 distinct digits
    assert len(set(_rows(mnist[0])) | set(_rows(mnist[2]))) == 10000
    # Animal-MNIST: together they are the source (as a multiset), and no image is on both sides
    # although the source holds 284 pairs of copies
    source = ds._unpickle_array(
        ds._read_checked("animal-mnist/animal_data_version_3.gz", None), "images")
    source_rows = _rows(ds._as_images(source))
    assert len(set(source_rows)) == 9716
    assert sorted(_rows(animal[0]) + _rows(animal[2])) == sorted(source_rows)
    assert not set(_rows(animal[0])) & set(_rows(animal[2]))


def test_test_size_is_validated():
    for bad in (0.0, 1.0, -0.5, "0.2", True, 5, 1796):
        with pytest.raises(ValueError, match="test_size of load_digits_images must be"):
            load_digits_images(test_size=bad)


@pytest.mark.data
def test_load_fashion_mnist(fashion):
    _check_images(fashion, 60000, 10000)
    assert np.bincount(fashion[1]).tolist() == [6000] * 10
    assert np.bincount(fashion[3]).tolist() == [1000] * 10


@pytest.mark.data
def test_load_animal_mnist(animal):
    _check_images(animal, 8005, 1995)
    assert (np.bincount(animal[1]) + np.bincount(animal[3])).tolist() == [1000] * 10
    assert np.all(np.abs(np.bincount(animal[3]) - 200) <= 10)


def test_load_digits_images():
    data8 = load_digits_images()
    _check_images(data8, 1347, 450, side=8)
    data28 = load_digits_images(size=28)
    _check_images(data28, 1347, 450, side=28)
    assert np.array_equal(data8[1], data28[1])  # same split
    assert data28[0][:, :, :4].max() == 0 and data28[0][:, :, -4:].max() == 0  # the border
    with pytest.raises(ValueError, match="size of load_digits_images must be 8 or 28"):
        load_digits_images(size=16)
    with pytest.raises(ValueError, match="interpolation of load_digits_images"):
        load_digits_images(size=28, interpolation="lanczos")


def test_load_mnist1d_generates_caches_and_rebuilds(tmp_path):
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    X_train, y_train, X_test, y_test = load_mnist1d(data_home=tmp_path)
    assert (random.random(), np.random.rand()) == before  # global random states restored
    assert X_train.shape == (4000, 40) and X_test.shape == (1000, 40)
    assert X_train.dtype == np.float32 and y_train.dtype == y_test.dtype == np.int64
    assert set(np.unique(y_train)) == set(range(10))
    cache = tmp_path / "mnist1d" / "mnist1d.npz"
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == ds._MNIST1D_SHA256
    cached = load_mnist1d(data_home=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(cached, (X_train, y_train, X_test, y_test)))
    cache.write_bytes(b"corrupt")
    rebuilt = load_mnist1d(data_home=tmp_path)
    assert np.array_equal(rebuilt[0], X_train)
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == ds._MNIST1D_SHA256


# ------------------------------------------------------------------------------- unpickler


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_refuses_code_and_reads_arrays(protocol, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=protocol)
    pickle.loads(payload)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match=r"Got (posix|nt)\.system instead"):
        ds._unpickle_array(payload, "test")
    assert not marker.exists()
    nested = pickle.dumps([np.arange(3), _Exploit(marker)], protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):
        ds._unpickle_array(nested, "test")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="Got builtins.eval instead"):
        ds._unpickle_array(b"cbuiltins\neval\n(S'1+1'\ntR.", "test")
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    if protocol >= 3:  # protocol 2 spells bytes with _codecs.encode, which is refused
        loaded = ds._unpickle_array(pickle.dumps(array, protocol=protocol), "test")
        assert np.array_equal(loaded, array) and loaded.dtype == array.dtype
        with pytest.raises(pickle.UnpicklingError, match="a pickled numeric numpy array"):
            ds._unpickle_array(pickle.dumps(np.array([1, "a"], dtype=object),
                                            protocol=protocol), "test")


# ------------------------------------------------------------------------------- network


def test_mnist_cnn_module():
    net = MnistCNN(n_classes=3)
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 3)
    assert list(dict(net.named_buffers())) == []
    assert sorted(net.state_dict()) == sorted(
        f"{block}.{i}.{p}" for block, idx in (("features", (0, 3)), ("classifier", (0, 2)))
        for i in idx for p in ("weight", "bias"))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_classes of MnistCNN must be a positive int"):
            MnistCNN(bad)


def _accuracy(net, X, y):
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(X[i:i + 2000])).argmax(1)
                          for i in range(0, len(X), 2000)])
    return float((pred.numpy() == y).mean())


@pytest.mark.data
@pytest.mark.slow
def test_pretrained_cnn_accuracy(mnist):
    net = pretrained_mnist_cnn()
    assert not net.training and all(p.dtype == torch.float32 for p in net.parameters())
    X = np.concatenate([mnist[0], mnist[2]])
    y = np.concatenate([mnist[1], mnist[3]])
    assert _accuracy(net, X, y) >= 0.99  # 0.9985 measured
    X_tr, y_tr, X_te, y_te = load_digits_images(size=28)
    digits_acc = _accuracy(net, np.concatenate([X_tr, X_te]), np.concatenate([y_tr, y_te]))
    assert 0.65 <= digits_acc <= 0.75  # 0.698 measured: a shifted domain


# ------------------------------------------------------------------------------- task streams


def test_split_tasks_cover_the_classes_disjointly():
    data = load_digits_images()
    tasks = split_tasks(*data, class_groups=[[0, 1, 2], [5, 3], [9]])
    assert [t.classes.tolist() for t in tasks] == [[0, 1, 2], [5, 3], [9]]
    for task in tasks:
        for X, y, y_all in ((task.X_train, task.y_train, data[1]),
                            (task.X_test, task.y_test, data[3])):
            assert len(X) == len(y) == np.isin(y_all, task.classes).sum()
            assert set(np.unique(y)) == set(range(len(task.classes)))
    # labels remapped in the order of the group: task 1's label 0 is class 5
    assert np.array_equal(tasks[1].X_train[tasks[1].y_train == 0], data[0][data[1] == 5])
    kept = split_tasks(*data, class_groups=5, relabel=False)
    assert sorted(c for t in kept for c in t.classes.tolist()) == list(range(10))
    assert sum(len(t.y_train) for t in kept) == len(data[1])
    assert all(set(np.unique(t.y_test)) == set(t.classes.tolist()) for t in kept)
    assert "Task(name='classes [0, 1]'" in repr(kept[0])
    for bad in ([[0, 1], [1, 2]], [[0], []], [[42]], 0, 11):
        with pytest.raises(ValueError, match="class_groups of split_tasks must be"):
            split_tasks(*data, class_groups=bad)
    with pytest.raises(TypeError, match="X_train of split_tasks must be a numpy array"):
        split_tasks(list(data[0]), *data[1:])
    with pytest.raises(ValueError, match="y_test of split_tasks must be a 1-D integer array"):
        split_tasks(*data[:3], data[3][:-1])


def test_permuted_tasks_are_fixed_bijections():
    data = load_digits_images()
    tasks = permuted_tasks(*data, n_tasks=4, random_state=7)
    assert isinstance(tasks[0], Task) and len(tasks) == 4
    assert np.array_equal(tasks[0].permutation, np.arange(64))
    assert np.array_equal(tasks[0].X_train, data[0])
    perms = [t.permutation for t in tasks]
    for perm in perms:
        assert np.array_equal(np.sort(perm), np.arange(64))  # a bijection
    assert len({p.tobytes() for p in perms}) == 4
    for task in tasks:
        for X, X0 in ((task.X_train, data[0]), (task.X_test, data[2])):
            assert X.shape == X0.shape
            flat, flat0 = X.reshape(len(X), -1), X0.reshape(len(X0), -1)
            assert np.array_equal(flat, flat0[:, task.permutation])
        assert np.array_equal(task.y_train, data[1])
        assert np.array_equal(task.y_test, data[3])
    longer = permuted_tasks(*data, n_tasks=6, random_state=7)
    assert all(np.array_equal(a.permutation, b.permutation) for a, b in zip(tasks, longer))
    with pytest.raises(ValueError, match="n_tasks of permuted_tasks must be a positive int"):
        permuted_tasks(*data, n_tasks=0)


@pytest.mark.data
def test_dataset_sequence(home):
    tasks = dataset_sequence(("animal_mnist", "mnist"), test_size=0.1, random_state=2)
    assert [t.name for t in tasks] == ["animal_mnist", "mnist"]
    assert [len(t.y_train) + len(t.y_test) for t in tasks] == [10000, 10000]
    assert len(tasks[1].y_test) == 1000 and 990 <= len(tasks[0].y_test) <= 1010
    assert all(t.classes.tolist() == list(range(10)) for t in tasks)
    with pytest.raises(ValueError, match="datasets of dataset_sequence must be"):
        dataset_sequence(("mnist", "cifar10"))


def test_subsample_per_class_is_nested_and_balanced():
    X, y, _, _ = load_digits_images()
    X5, y5 = subsample_per_class(X, y, 5, random_state=1)
    X20, y20 = subsample_per_class(X, y, 20, random_state=1)
    assert np.bincount(y5).tolist() == [5] * 10 and np.bincount(y20).tolist() == [20] * 10
    rows20 = {r.tobytes() for r in X20.reshape(len(X20), -1)}
    assert all(r.tobytes() in rows20 for r in X5.reshape(len(X5), -1))
    with pytest.raises(ValueError, match="n_per_class of subsample_per_class must be"):
        subsample_per_class(X, y, 10_000)


def test_caches_go_to_the_session_folder_not_the_data_home(monkeypatch, tmp_path):
    """The tests write caches into $SKKPRIOR_CACHE (a temporary folder, see conftest.py)."""
    import skkprior

    cache = ds.cache_home()
    assert os.environ[ds.CACHE_ENV_VAR] == str(cache)
    assert cache != data_home() and data_home() not in cache.parents
    examples = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.syspath_prepend(str(examples))
    from _shared import prior_path

    path = prior_path(weight_decay=1.0)
    assert cache in path.parents and f"skkprior-{skkprior.__version__}" in path.name
    monkeypatch.setenv(ds.CACHE_ENV_VAR, "")
    monkeypatch.setenv("SKKPRIOR_DATA", str(tmp_path))
    assert ds.cache_home() == tmp_path  # without SKKPRIOR_CACHE: the data home
    monkeypatch.setenv(ds.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert ds.cache_home() == tmp_path / "c" and ds.cache_home(tmp_path / "d") == tmp_path / "d"
    load_mnist1d()  # generated, cached in the cache home
    assert (tmp_path / "c" / "mnist1d" / "mnist1d.npz").is_file()
