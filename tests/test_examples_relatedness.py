"""A scaled-down run of examples/relatedness.py (issue 12: where does a learned prior help?).

The test imports the example's ``run`` and calls it on the CPU with its ``TEST`` settings over the
quick configuration: the pairs MNIST CNN > MNIST (0 degrees) and Fashion CNN > Animal-MNIST, 5
examples per class, one seed, 30 optimizer steps, 200 test images, 4 posterior samples, each
prior's curvature pass on 1,000 source images and the Fashion CNN trained for one epoch on 5,000
images. It asserts the structure of the result, the stated initialization rule (every prior's
MAP training starts exactly at the source network's weights) and the relatedness numbers that
hold by a wide margin, and the one order of the priors that every measured run shows with a
wide margin (numbers at the asserts and in docs/examples/relatedness.md).
"""

from __future__ import annotations

import pytest

# real data and the pretrained network: skipped when they are missing (see conftest.py)
pytestmark = pytest.mark.data



def test_rotate_keeps_shape_range_and_inverts_quarter_turns(example_module):
    import numpy as np

    example = example_module("relatedness")
    X = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    for degrees in (0, 90, 180, 30):
        out = example.rotate(X, degrees)
        assert out.shape == X.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    # a quarter turn is exact (a pixel permutation), so four of them give the images back
    back = X
    for _ in range(4):
        back = example.rotate(back, 90)
    np.testing.assert_allclose(back, X, atol=1e-6)
    np.testing.assert_array_equal(example.rotate(X, 0), X)


@pytest.mark.slow
def test_relatedness_quick(example_module, tmp_path):
    example = example_module("relatedness")
    from _shared import make_args

    result = example.run(make_args(example.NAME, out=tmp_path, **example.TEST))
    # the stated initialization rule, checked by the example with max_epochs=0 fits: every prior
    # (learned, isotropic with the learned mean, zero-mean isotropic) starts at the source weights
    assert "source network's weights" in result["init_rule"]
    assert {s["source"] for s in result["sources"]} == {"mnist", "fashion"}
    for info in result["sources"]:
        assert info["init_max_abs_diff"] == {name: 0.0 for name in example.PRIORS}, info
        assert info["prior_calibration"]["scaling"] == "pac-bayes"
    # one row per (pair, shots), with each prior's metrics and the learned prior's gain
    rows = {(r["source"], r["target"], r["per_class"]): r for r in result["rows"]}
    assert set(rows) == {("mnist", "rot0", 5), ("fashion", "animal", 5)}
    for row in rows.values():
        for col in ("acc_learned_mean", "acc_iso_mean_mean", "acc_zero_mean", "nll_learned_mean",
                    "acc_gain_mean", "nll_gain_mean", "probe", "confidence"):
            assert isinstance(row[col], float), (col, row)
        assert row["best_isotropic_acc"] in example.PRIORS[1:]
        assert row["seeds"] == 1
    assert len(result["runs"]) == 2 * len(example.PRIORS)
    # relatedness: the MNIST CNN reads the unrotated held-out digits (it has probably seen them:
    # 0.999 measured on 2,000 of them); zero-shot accuracy only where the label spaces agree
    # Measured at this size (seed 0, 525 s on a loaded 2-core CPU), accuracy / NLL:
    #   mnist>rot0      probe 0.99  zero-shot 1.0   learned 1.000 / 0.000  iso mean 1.000 / 0.001  zero 1.000 / 0.000
    #   fashion>animal  probe 0.53  confidence 0.60 learned 0.285 / 2.431  iso mean 0.430 / 2.374  zero 0.435 / 2.444
    near, far = rows[("mnist", "rot0", 5)], rows[("fashion", "animal", 5)]
    assert near["zero_shot"] >= 0.98 and far["zero_shot"] is None
    # the source features separate the unrotated digits far better than animal silhouettes
    # (linear probe on 10 per class: 0.99 against 0.53 here, 0.91 - 0.99 against 0.53 - 0.57 in
    # every measured configuration; margin 0.2)
    assert near["probe"] > far["probe"] + 0.2
    # The one order measured stable everywhere with a margin: the learned (calibrated) prior of the
    # Fashion CNN is less accurate on Animal-MNIST than the better isotropic prior, by 0.15 here,
    # 0.18 in the quick run and 0.186 / 0.190 / 0.215 on seeds 0 / 1 / 2 of the CPU configuration
    # (docs/examples/relatedness.md). Margin: asserted at 0.05, a third of the smallest gap.
    assert far["acc_gain_mean"] < -0.05, far
    # with the source weights as the start, every prior keeps the MNIST digits nearly perfect
    assert min(near["acc_learned_mean"], near["acc_iso_mean_mean"], near["acc_zero_mean"]) >= 0.95
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"relatedness_quick.{ext}").exists()
