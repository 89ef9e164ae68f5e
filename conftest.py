"""Session set-up shared by the tests (``tests/``) and the doctests (``skkprior/``).

- torch threads: ``SKKPRIOR_TEST_THREADS`` (default 1), so a run is reproducible and the
  thread count can be varied to check that no test depends on it;
- caches: every cache written during the session (the MNIST-1D cache, the examples' MNIST
  priors) goes to a temporary folder (``SKKPRIOR_CACHE``), removed at the end, so the tests
  leave the data home as it was (a change is reported at the end of the session). Set
  ``SKKPRIOR_TEST_CACHE`` to a folder to keep the caches between runs instead;
- the ``data`` marker: doctests that load the offline data get it automatically. When the data
  home lacks a file, ``data`` tests are skipped, unless ``SKKPRIOR_REQUIRE_DATA=1`` (the README's
  test command sets it): then they run and fail, naming the command that fetches the data.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from _pytest.doctest import DoctestItem

from skkprior import datasets as _ds

THREADS = int(os.environ.get("SKKPRIOR_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

# A doctest that calls one of these reads the data home (``load_mnist1d`` generates its data).
_NEEDS_DATA = re.compile(
    r"\b(load_mnist|load_fashion_mnist|load_animal_mnist|pretrained_mnist_cnn|dataset_sequence)\s*\(")


def _missing_data() -> list[str]:
    home = _ds.data_home()
    return [rel for rel in _ds._SHA256 if not (home / rel).is_file()]


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, DoctestItem) and any(_NEEDS_DATA.search(ex.source) for ex in item.dtest.examples):
            item.add_marker(pytest.mark.data)
    missing = _missing_data()
    if not missing or os.environ.get("SKKPRIOR_REQUIRE_DATA") == "1":
        return
    skip = pytest.mark.skip(reason=f"offline data missing in {_ds.data_home()} ({', '.join(missing)}); "
                                   "run `bash scripts/fetch_data.sh`")
    for item in items:
        if item.get_closest_marker("data") is not None:
            item.add_marker(skip)


_DATA_HOME_CHANGES: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _cache_in_a_temporary_folder():
    """``SKKPRIOR_CACHE`` -> a temporary folder for the session, removed at its end.

    The data home is listed before and after; a change is reported in the terminal summary (a
    warning, not an error: another process may share the data home).
    """
    keep = os.environ.get("SKKPRIOR_TEST_CACHE")
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="skkprior-test-cache-"))
    home = _ds.data_home()
    before = _listing(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(_ds.CACHE_ENV_VAR, str(folder))
        yield folder
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    after = _listing(home)
    _DATA_HOME_CHANGES.extend(sorted(str(home / rel) for rel in set(before) ^ set(after)
                                     | {rel for rel in before if rel in after and before[rel] != after[rel]}))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _DATA_HOME_CHANGES:
        terminalreporter.write_line(
            "WARNING: the data home changed during the tests (tests write caches into $SKKPRIOR_CACHE; "
            f"another process sharing the data home?): {', '.join(_DATA_HOME_CHANGES)}", yellow=True)
