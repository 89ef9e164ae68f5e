"""Scaled-down runs of examples/bayesian_pretrained_cnn.py and examples/few_shot_transfer.py.

Each test imports the example's ``run`` and calls it on the CPU (no subprocess) with the
example's ``TEST`` settings over its quick configuration (smaller than ``--quick``: one seed, fewer images, steps and posterior
samples, to fit the test suite's CPU budget); the examples assert their own claims, and these
tests assert them again with thresholds measured on exactly this configuration (numbers below
and on each example's docs page, docs/examples/). Everything is seeded, so a run is deterministic up to
floating-point rounding; the margins are several times the spread measured across seeds.
The MNIST priors of ``few_shot_transfer`` are cached after their first computation (about 30 s
per prior on one CPU thread) in the session's temporary cache folder (``$SKKPRIOR_CACHE``, see
the repository's ``conftest.py``), so the other example tests reuse them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

# real data and the pretrained network: skipped when they are missing (see conftest.py)
pytestmark = pytest.mark.data



def _args(example, tmp_path: Path) -> argparse.Namespace:
    from _shared import make_args

    return make_args(example.NAME, out=tmp_path, **example.TEST)


def test_scale_rule_mcnemar_counts_and_choice(example_module):
    """The Bayesian CNN's scale rule on cases with known answers: McNemar's exact one-sided p-value
    (against scipy's binomial test) and the choice it makes among grid points."""
    import numpy as np
    from scipy.stats import binomtest

    example = example_module("bayesian_pretrained_cnn")
    y = np.zeros(40, dtype=int)
    right, wrong = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    p_map = np.tile(right, (40, 1))
    p_map[:2] = wrong  # the MAP misses digits 0 and 1
    for worse, better in ((0, 0), (3, 2), (4, 0), (5, 0), (6, 1)):
        p = p_map.copy()
        p[2:2 + worse] = wrong        # the candidate misses digits the MAP gets right
        p[:better] = right            # and gets some of the MAP's misses right
        out = example._paired(p, p_map, y)
        assert (out["worse"], out["better"]) == (worse, better)
        expected = binomtest(worse, worse + better, 0.5, alternative="greater").pvalue if worse + better else 1.0
        assert out["p_value"] == pytest.approx(expected, rel=1e-12)
    # a MAP right on every digit: up to four extra errors pass at level 0.05 (0.5^4), five do not
    assert example._paired(np.tile(wrong, (4, 1)), np.tile(right, (4, 1)), y[:4])["p_value"] == 0.0625
    assert example._paired(np.tile(wrong, (5, 1)), np.tile(right, (5, 1)), y[:5])["p_value"] == 0.03125
    # thousands of disagreements (a posterior at chance on a large validation set): no overflow
    many = np.zeros(3000, dtype=int)
    out = example._paired(np.tile(wrong, (3000, 1)), np.tile(right, (3000, 1)), many)
    assert out["worse"] == 3000 and out["p_value"] == 0.0

    map_val = {"accuracy": 1.0, "nll": 0.001}
    tol = example.NLL_TOLERANCE
    grid = [{"name": "sharp", "entropy": 0.01, "nll": 0.002, "p_value": 1.0},
            {"name": "broad, one extra error", "entropy": 0.05, "nll": 0.001 + tol / 2, "p_value": 0.5},
            {"name": "broader, five extra errors", "entropy": 0.2, "nll": 0.001 + tol / 2, "p_value": 0.03125},
            {"name": "broadest, NLL too high", "entropy": 0.9, "nll": 0.001 + 2 * tol, "p_value": 1.0}]
    rule, by_nll = example._choose(grid, map_val)
    assert rule["name"] == "broad, one extra error" and by_nll["name"] == "sharp"
    # nothing passes: the lowest validation NLL
    rule, _ = example._choose(grid[2:], map_val)
    assert rule["name"] == "broader, five extra errors"


@pytest.mark.slow
def test_bayesian_pretrained_cnn_quick(example_module, tmp_path):
    example = example_module("bayesian_pretrained_cnn")
    result = example.run(_args(example, tmp_path))
    by = {r["method"]: r for r in result["rows"]}
    mp, post = by["MAP (pretrained CNN)"], by["posterior, MC"]
    # the pretrained network has (almost certainly) seen these digits
    assert mp["accuracy"] >= 0.99
    assert post["accuracy"] >= mp["accuracy"] - 0.01
    # OOD: the posterior's max-probability AUROC is at least the MAP network's, up to the measured
    # spread. Measured at this size, seeds 0 / 1 / 2, each on four CPU paths (default AVX-512, AVX2,
    # ATen default + MKL SSE4.2, 2 threads; table in docs/examples/bayesian_pretrained_cnn.md): with the
    # McNemar rule the gain over the MAP has mean +0.020, sd 0.012, min +0.002, max +0.043 (none negative);
    # with the earlier rule mean +0.015, sd 0.014, min -0.006 (seed 0, AVX2 path: Animal 0.9470 -> 0.9413).
    # The posterior's Monte-Carlo draws, hence its chosen scales, differ between paths. Margin:
    # AUROC_SLACK_SMALL = 0.02, the earlier rule's mean minus 2.5 sd, wider than the current rule's
    # (-0.010) (pinned here, so widening it needs a new measurement).
    slack = example.AUROC_SLACK_SMALL
    assert slack == 0.02
    assert post["auroc_fashion"] >= mp["auroc_fashion"] - slack
    assert post["auroc_animal"] >= mp["auroc_animal"] - slack
    # the scales were chosen on validation digits only, inside the NLL tolerance and not detectably
    # less accurate than the MAP (McNemar's exact test; every grid point records its counts)
    chosen = result["chosen"]["mc"]
    assert chosen["nll"] <= result["validation"]["map"]["nll"] + example.NLL_TOLERANCE
    assert chosen["p_value"] >= example.ACCURACY_TEST_LEVEL
    for point in result["validation"]["mc"]:
        assert {"worse", "better", "p_value"} <= set(point)
    assert (tmp_path / "bayesian_pretrained_cnn_quick.json").exists()
    assert (tmp_path / "bayesian_pretrained_cnn_quick.md").exists()


@pytest.mark.slow
def test_few_shot_transfer_quick(example_module, tmp_path):
    example = example_module("few_shot_transfer")
    result = example.run(_args(example, tmp_path))
    by = {(r["dataset"], r["per_class"], r["prior"]): r for r in result["rows"]}
    learned, iso, zero = (by[("Animal-MNIST", 10, name)] for name in example.PRIORS)
    # The paper's claim (the learned prior beats both isotropic priors in accuracy and NLL at 10
    # examples per class) does not hold here (see docs/examples/few_shot_transfer.md). Measured at this
    # size, accuracy / NLL, with the current code (named seed streams, rounding-aware PSD projection;
    # seeds 0 / 1, the test runs seed 0) and, in brackets, before them (seeds 0 / 1 / 2):
    #   learned                  0.485 / 2.454   0.480 / 2.179   [0.400 / 2.267  0.545 / 1.957  0.500 / 1.997]
    #   isotropic, learned mean  0.475 / 2.444   0.440 / 2.014   [0.420 / 2.228  0.530 / 1.916  0.470 / 1.801]
    #   isotropic, zero mean     0.530 / 2.357   0.535 / 2.157   [0.545 / 2.528  0.585 / 2.121  0.560 / 2.193]
    # Stable in all five runs: training from scratch is more accurate (by 0.045 - 0.15). Not stable:
    # the NLL order of the learned and the zero-mean prior (learned lower by 0.16 - 0.26 before,
    # higher by 0.02 - 0.10 now), learned vs isotropic with the MNIST mean. Those get bands.
    assert min(r["accuracy_mean"] for r in (learned, iso, zero)) > 0.3
    # margin 0.02 below an order whose smallest measured gap is +0.045: the Monte-Carlo draws
    # (4 samples, 200 test images) differ between CPU code paths
    assert zero["accuracy_mean"] > learned["accuracy_mean"] - 0.02
    assert abs(learned["nll_mean"] - zero["nll_mean"]) <= 0.45
    assert abs(learned["accuracy_mean"] - iso["accuracy_mean"]) <= 0.12
    assert abs(learned["nll_mean"] - iso["nll_mean"]) <= 0.45
    assert (tmp_path / "few_shot_transfer_quick.json").exists()
