"""Scaled-down runs of examples/bayesian_pretrained_cnn.py and examples/few_shot_transfer.py.

Each test imports the example's ``run`` and calls its ``--quick`` path on the CPU (no
subprocess); the examples assert their own claims and these tests assert them again with the
thresholds measured on the quick runs (see each example's docstring and the numbers below).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    pytest.importorskip("skorch")
    try:
        from skkprior.datasets import load_animal_mnist, load_fashion_mnist, load_mnist, pretrained_mnist_cnn

        load_mnist(), load_fashion_mnist(), load_animal_mnist(), pretrained_mnist_cnn()
    except FileNotFoundError as exc:  # pragma: no cover - the README's test command fetches the data
        pytest.skip(f"offline data missing: {exc}")
    return importlib.import_module(name)


def _args(tmp_path: Path, **kwargs) -> argparse.Namespace:
    base = {"device": "cpu", "quick": True, "seeds": None, "out": str(tmp_path), "threads": None}
    base.update(kwargs)
    return argparse.Namespace(**base)


@pytest.mark.slow
def test_bayesian_pretrained_cnn_quick(tmp_path):
    example = _example("bayesian_pretrained_cnn")
    result = example.run(_args(tmp_path))
    by = {r["method"]: r for r in result["rows"]}
    mp = by["MAP (pretrained CNN)"]
    # the pretrained network has (almost certainly) seen these digits
    assert mp["accuracy"] >= 0.99
    for label in ("posterior, MC", "posterior, linearized"):
        post = by[label]
        assert post["accuracy"] >= mp["accuracy"] - 0.01
        # OOD: the posterior's max-probability AUROC is at least the MAP network's
        assert post["auroc_fashion"] >= mp["auroc_fashion"]
        assert post["auroc_animal"] >= mp["auroc_animal"]
    # the scales were chosen on validation digits only, inside the NLL tolerance
    chosen = result["chosen"]["mc"]
    assert chosen["nll"] <= result["validation"]["map"]["nll"] + example.NLL_TOLERANCE
    assert (tmp_path / "bayesian_pretrained_cnn_quick.json").exists()
    assert (tmp_path / "bayesian_pretrained_cnn_quick.md").exists()


@pytest.mark.slow
def test_few_shot_transfer_quick(tmp_path):
    example = _example("few_shot_transfer")
    result = example.run(_args(tmp_path, seeds=1))
    by = {(r["dataset"], r["per_class"], r["prior"]): r for r in result["rows"]}
    learned = by[("Animal-MNIST", 10, "learned")]
    for other in ("isotropic, learned mean", "isotropic, zero mean"):
        base = by[("Animal-MNIST", 10, other)]
        assert learned["accuracy_mean"] > base["accuracy_mean"], (learned, base)
        assert learned["nll_mean"] < base["nll_mean"], (learned, base)
    assert (tmp_path / "few_shot_transfer_quick.json").exists()
