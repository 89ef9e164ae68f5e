"""The Bayesian counterpart of a pretrained MNIST CNN: in-distribution fit and OOD detection.

The pretrained MNIST CNN and its Laplace posterior (exact two-term form and the compressed learned
prior), compared as MAP, Monte-Carlo and linearized predictives on held-out MNIST (accuracy, NLL,
ECE) and for telling MNIST from Fashion-MNIST and Animal-MNIST (AUROC of the maximum probability).
The posterior's scales are chosen on MNIST validation digits only (the tolerance rule of
:func:`_choose`: no detectable accuracy loss against the MAP by McNemar's exact test at level
``ACCURACY_TEST_LEVEL``, NLL within ``NLL_TOLERANCE``).

Run::

    python examples/bayesian_pretrained_cnn.py --quick            # scaled-down, CPU
    python examples/bayesian_pretrained_cnn.py --device cuda      # full size
    python examples/bayesian_pretrained_cnn.py --quick --set n_samples=20

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``); ``TEST`` is the size the tests run.
Results: ``examples/results/bayesian_pretrained_cnn*``; measurements and discussion:
``docs/examples/bayesian_pretrained_cnn.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from _shared import config, example_parser, parse_args, save_figure, save_results
from skkprior import LayerwiseGaussian, isotropic_prior, kfac, learn_prior, posterior
from skkprior.datasets import load_animal_mnist, load_fashion_mnist, load_mnist, pretrained_mnist_cnn
from skkprior.metrics import evaluate, ood_auroc
from skkprior.predictive import linearized_logit_moments, predict_proba_map, predict_proba_mc

NAME = "bayesian_pretrained_cnn"
NLL_TOLERANCE = 0.01
# the accuracy tolerance comes from the validation digits: a grid point passes unless McNemar's exact one-sided
# test on the digits where it and the MAP disagree says it is less accurate at this level (docs: the rule)
ACCURACY_TEST_LEVEL = 0.05
# posterior AUROC >= MAP AUROC - slack (docs/examples/bayesian_pretrained_cnn.md): measured spread of the gain at test size
# (sd 0.014 over 3 seeds x 4 CPU paths) and the full run's near-tie
AUROC_SLACK_SMALL = 0.02
AUROC_SLACK_FULL = 0.002
DELTA = 1e-4  # delta: the isotropic precision; alpha multiplies it
PRIOR_SCALES = (1e3, 1e4, 1e5, 1e6)  # alpha * delta from 0.1 to 100
TEMPERATURES = (0.1, 0.01, 0.001)
ISOTROPIC_PRECISIONS = (1e2, 3e2, 1e3, 3e3, 1e4)  # the control: N(theta_s, 1/p I), no curvature

FULL = {"n_fit": 7000, "n_val": 1000, "n_test": 2000, "n_ood": None, "n_samples": 100, "n_samples_val": 30,
        "all_rows": True, "seed": 0}
QUICK = {"n_fit": 1000, "n_val": 150, "n_test": 200, "n_ood": 200, "n_samples": 10, "n_samples_val": 8,
         "all_rows": True, "seed": 0}
# The size tests/test_examples_transfer.py runs (``--set`` of each entry over QUICK): only the MAP and the
# posterior's MC predictive (the claim), smaller sets, fewer samples: the CPU budget of the tests.
TEST = {"n_fit": 500, "n_val": 100, "n_test": 150, "n_ood": 150, "n_samples": 5, "n_samples_val": 4,
        "all_rows": False}

logger = logging.getLogger("examples." + NAME)


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log(np.clip(p, 1e-300, 1.0))).sum(axis=1).mean())


def _probit(mean: torch.Tensor, cov: torch.Tensor, tau: float) -> np.ndarray:
    """Linearized predictive for temperature ``tau`` from the moments at ``tau = 1`` (Cov is linear in tau)."""
    var = torch.diagonal(cov, dim1=-2, dim2=-1) * tau
    return torch.softmax(mean * torch.rsqrt(1.0 + math.pi / 8.0 * var), dim=-1).cpu().numpy()


def _paired(p: np.ndarray, p_map: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The paired comparison with the MAP on the same digits: McNemar's exact one-sided test.

    ``worse``: digits the candidate gets wrong and the MAP right; ``better``: the reverse. Under
    "as accurate as the MAP" each disagreement goes either way with probability 1/2, so the
    p-value of "less accurate" is ``P(Binomial(worse + better, 1/2) >= worse)``.
    """
    right, right_map = p.argmax(axis=1) == y, p_map.argmax(axis=1) == y
    worse, better = int((~right & right_map).sum()), int((right & ~right_map).sum())
    n = worse + better
    # exact integers (a float 2.0 ** n overflows past n = 1023 disagreements)
    p_value = float(Fraction(sum(math.comb(n, k) for k in range(worse, n + 1)), 2 ** n)) if n else 1.0
    return {"worse": worse, "better": better, "p_value": p_value}


def _choose(scores: list[dict[str, Any]], map_val: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tolerance rule choice, plain NLL choice) among grid ``scores``.

    The rule: among the grid points whose validation accuracy is not detectably below the MAP's
    (McNemar's exact test, :func:`_paired`, p-value at least ``ACCURACY_TEST_LEVEL``) and whose
    validation NLL is within ``NLL_TOLERANCE`` of the MAP's, the broadest (highest mean predictive
    entropy); none passing: the lowest validation NLL.
    """
    ok = [s for s in scores
          if s["p_value"] >= ACCURACY_TEST_LEVEL and s["nll"] <= map_val["nll"] + NLL_TOLERANCE]
    rule = max(ok, key=lambda s: s["entropy"]) if ok else min(scores, key=lambda s: s["nll"])
    return rule, min(scores, key=lambda s: s["nll"])


def build_parser() -> argparse.ArgumentParser:
    return example_parser(NAME, __doc__, FULL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison (the settings: :func:`_shared.config`)."""
    cfg = config(args, QUICK, FULL)
    device = torch.device(args.device)
    start = time.perf_counter()
    gen = lambda seed: torch.Generator(device=device).manual_seed(seed + 10 * cfg["seed"])  # noqa: E731

    # --- data: MNIST train split -> curvature part + validation part; test and OOD sets --------------
    X_train, y_train, X_test, y_test = load_mnist()
    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=cfg["n_val"], random_state=cfg["seed"],
                                                  stratify=y_train)
    X_fit, y_fit = X_fit[:cfg["n_fit"]], y_fit[:cfg["n_fit"]]
    rng = np.random.default_rng(cfg["seed"])

    def subset(X: np.ndarray, n: int | None) -> np.ndarray:
        return X if n is None or n >= len(X) else X[np.sort(rng.choice(len(X), n, replace=False))]

    keep = np.sort(rng.choice(len(y_test), min(cfg["n_test"], len(y_test)), replace=False))
    X_in, y_in = X_test[keep], y_test[keep]
    X_fashion = subset(load_fashion_mnist()[2], cfg["n_ood"])
    X_animal = subset(load_animal_mnist()[2], cfg["n_ood"])
    to_t = torch.from_numpy

    # --- the Laplace posterior of the pretrained network --------------------------------------------------
    net = pretrained_mnist_cnn().to(device)
    t0 = time.perf_counter()
    curvature = kfac(net, to_t(X_fit), to_t(y_fit), fisher="mc", device=device, generator=gen(0), progress=False)
    base = posterior(isotropic_prior(net, weight_decay=DELTA, zero_mean=False), curvature, net)
    t_posterior = time.perf_counter() - t0

    # --- scales on the validation digits ------------------------------------------------------------------
    p_val_map = predict_proba_map(net, to_t(X_val)).cpu().numpy()
    map_val = evaluate(p_val_map, y_val)
    grid_mc, grid_lin = [], []
    for a in PRIOR_SCALES:
        q_a = base.with_scales(prior_scale=a)
        if cfg["all_rows"]:
            mean, cov = linearized_logit_moments(net, q_a, to_t(X_val), batch_size=256)
        for t in TEMPERATURES:
            if cfg["all_rows"]:
                p_lin = _probit(mean, cov, t)
                grid_lin.append({"alpha": a, "tau": t, **evaluate(p_lin, y_val), "entropy": _entropy(p_lin),
                                 **_paired(p_lin, p_val_map, y_val)})
            p_mc = predict_proba_mc(net, q_a.with_scales(temperature=t), to_t(X_val),
                                    n_samples=cfg["n_samples_val"], generator=gen(1)).cpu().numpy()
            grid_mc.append({"alpha": a, "tau": t, **evaluate(p_mc, y_val), "entropy": _entropy(p_mc),
                            **_paired(p_mc, p_val_map, y_val)})
    mc_rule, mc_nll = _choose(grid_mc, map_val)
    lin_rule, lin_nll = _choose(grid_lin, map_val) if grid_lin else (None, None)
    grid_iso = []
    for prec in ISOTROPIC_PRECISIONS if cfg["all_rows"] else ():
        p_iso = predict_proba_mc(net, LayerwiseGaussian.isotropic(net, prec), to_t(X_val),
                                 n_samples=cfg["n_samples_val"], generator=gen(1)).cpu().numpy()
        grid_iso.append({"alpha": prec / DELTA, "tau": 1.0, **evaluate(p_iso, y_val), "entropy": _entropy(p_iso),
                         **_paired(p_iso, p_val_map, y_val)})
    iso_rule = _choose(grid_iso, map_val)[0] if grid_iso else None

    # --- evaluation on MNIST test, Fashion-MNIST and Animal-MNIST ----------------------------------------------
    def predict_mc(q: Any) -> Any:
        return lambda X: predict_proba_mc(net, q, to_t(X), n_samples=cfg["n_samples"], generator=gen(2)).cpu().numpy()

    def predict_lin(a: float, t: float) -> Any:
        q = base.with_scales(prior_scale=a)

        def f(X: np.ndarray) -> np.ndarray:
            mean, cov = linearized_logit_moments(net, q, to_t(X), batch_size=256)
            return _probit(mean, cov, t)
        return f

    # the same Gaussian as a learned prior (one Kronecker product per layer), with each compression of
    # learn_prior: "damped" is what few_shot_transfer.py uses, "nearest" the paper's Frobenius-nearest one
    def predict_learned(a: float, t: float, compression: str) -> tuple[Any, Any]:
        prior = learn_prior(net, None, curvature=curvature, weight_decay=DELTA, prior_scale=a, temperature=t,
                            compression=compression)
        return predict_mc(prior), prior

    methods = [
        ("MAP (pretrained CNN)", None, None, lambda X: predict_proba_map(net, to_t(X)).cpu().numpy()),
        ("posterior, MC", mc_rule["alpha"], mc_rule["tau"],
         predict_mc(base.with_scales(prior_scale=mc_rule["alpha"], temperature=mc_rule["tau"]))),
    ]
    nkp_error = {}
    if cfg["all_rows"]:
        methods.append(("posterior, linearized", lin_rule["alpha"], lin_rule["tau"],
                        predict_lin(lin_rule["alpha"], lin_rule["tau"])))
        for compression in ("damped", "nearest"):
            f, learned = predict_learned(mc_rule["alpha"], mc_rule["tau"], compression)
            nkp_error[compression] = learned.metadata.get("nkp_error")
            methods.append((f"learned prior ({compression} NKP), MC", mc_rule["alpha"], mc_rule["tau"], f))
        methods += [
            ("posterior, MC, val-NLL choice", mc_nll["alpha"], mc_nll["tau"],
             predict_mc(base.with_scales(prior_scale=mc_nll["alpha"], temperature=mc_nll["tau"]))),
            ("control: isotropic N(MAP, 1/p I), MC", iso_rule["alpha"], 1.0,
             predict_mc(LayerwiseGaussian.isotropic(net, iso_rule["alpha"] * DELTA))),
        ]
    rows, probas = [], {}
    X_all = np.concatenate([X_in, X_fashion, X_animal])  # one call: the same posterior draws for all three sets
    cuts = np.cumsum([len(X_in), len(X_fashion)])
    for label, a, t, predict in methods:
        p_in, p_f, p_a = np.split(predict(X_all), cuts)
        probas[label] = (p_in, p_f, p_a)
        rows.append({"method": label, "alpha*delta (p)": "" if a is None else a * DELTA, "tau": "" if t is None else t,
                     **{k: v for k, v in evaluate(p_in, y_in).items() if k != "brier"},
                     "auroc_fashion": ood_auroc(p_in, p_f), "auroc_animal": ood_auroc(p_in, p_a)})
    elapsed = time.perf_counter() - start
    extra = {
        "config": cfg, "delta": DELTA, "nll_tolerance": NLL_TOLERANCE, "accuracy_test_level": ACCURACY_TEST_LEVEL,
        "grid": {"prior_scales": PRIOR_SCALES, "temperatures": TEMPERATURES},
        "isotropic_precisions": ISOTROPIC_PRECISIONS,
        "validation": {"map": map_val, "mc": grid_mc, "linearized": grid_lin, "isotropic": grid_iso},
        "chosen": {"mc": mc_rule, "linearized": lin_rule, "mc_val_nll": mc_nll, "linearized_val_nll": lin_nll,
                   "isotropic": iso_rule},
        "nkp_error": nkp_error,
        "n_fit": int(len(y_fit)), "n_val": int(len(y_val)), "n_test": int(len(y_in)),
        "n_fashion": int(len(X_fashion)), "n_animal": int(len(X_animal)),
        "seconds": elapsed, "seconds_posterior": t_posterior,
    }
    save_results(NAME, rows, args, extra=extra)
    _plot(probas, args)
    print(f"chosen scales: MC alpha*delta={mc_rule['alpha'] * DELTA:g} tau={mc_rule['tau']:g}; "
          + (f"linearized alpha*delta={lin_rule['alpha'] * DELTA:g} tau={lin_rule['tau']:g}; " if lin_rule else "")
          + f"{elapsed:.0f} s")
    result = {"rows": rows, **extra}
    _check(result)
    return result


def _check(result: dict[str, Any]) -> None:
    """The claims, with thresholds from the measured runs (see docs/examples/bayesian_pretrained_cnn.md).

    The full configuration (``n_ood`` None: all OOD test images) is checked against its own
    measured run (GPU), where the earlier selection rule fell back to the sharpest posterior
    (docs/examples/bayesian_pretrained_cnn.md); its slack stays that small until a full run with the
    current rule is measured.
    """
    by = {r["method"]: r for r in result["rows"]}
    mp = by["MAP (pretrained CNN)"]
    # the pretrained net has (almost certainly) seen these digits: near-perfect held-out accuracy
    assert mp["accuracy"] >= 0.99, mp
    # at full size a tie is allowed (the earlier rule's run: -0.0005 .. +0.003 against the MAP); on
    # the OOD subsets of the test and quick sizes, the measured spread of the gain (docs/examples/bayesian_pretrained_cnn.md)
    full = result["config"]["n_ood"] is None
    slack = AUROC_SLACK_FULL if full else AUROC_SLACK_SMALL
    for label in ("posterior, MC", "posterior, linearized"):
        if label not in by:  # the test size has the MC predictive only
            continue
        r = by[label]
        # in distribution, the posterior keeps the MAP's accuracy (tolerance: one or two digits)
        assert r["accuracy"] >= mp["accuracy"] - 0.01, (r, mp)
        # out of distribution, it is at least as good at flagging foreign images (up to the slack)
        assert r["auroc_fashion"] >= mp["auroc_fashion"] - slack, (r, mp)
        assert r["auroc_animal"] >= mp["auroc_animal"] - slack, (r, mp)
    if full and "control: isotropic N(MAP, 1/p I), MC" in by:
        control = by["control: isotropic N(MAP, 1/p I), MC"]  # measured +0.027 / +0.023 over the MAP
        assert control["auroc_fashion"] > mp["auroc_fashion"] + 0.01, (control, mp)
    # the compressed (learned-prior) forms: still no worse than the MAP at flagging foreign images
    for label in ("learned prior (damped NKP), MC", "learned prior (nearest NKP), MC"):
        if label in by:
            nkp = by[label]
            assert nkp["accuracy"] >= 0.97, nkp
            assert nkp["auroc_fashion"] >= mp["auroc_fashion"] - slack, (nkp, mp)
            assert nkp["auroc_animal"] >= mp["auroc_animal"] - slack, (nkp, mp)


def _plot(probas: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot")
        return

    labels = [k for k in ("MAP (pretrained CNN)", "posterior, MC", "posterior, linearized") if k in probas]
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.2), sharey=True)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, label in zip(axes, labels):
        for p, name in zip(probas[label], ("MNIST (in)", "Fashion-MNIST", "Animal-MNIST")):
            ax.hist(p.max(axis=1), bins=bins, histtype="step", density=True, label=name, linewidth=1.5)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("max predictive probability")
        ax.set_yscale("log")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8, loc="upper left")
    save_figure(fig, NAME, args)


if __name__ == "__main__":
    run(parse_args(build_parser()))
