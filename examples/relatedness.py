"""Where does a learned prior help? Its gain against how related the target is to the source.

Two source networks of the same architecture (:class:`skkprior.datasets.MnistCNN`): the
pretrained MNIST CNN with its prior learned on MNIST, and a CNN trained here on Fashion-MNIST
with its prior learned on Fashion-MNIST. Targets in graded distance from the source (MNIST
digits rotated by 0 - 180 degrees, scikit-learn's digits upsampled to 28x28, Fashion-MNIST,
Animal-MNIST; for the Fashion CNN: rotated Fashion-MNIST test images, Animal-MNIST and MNIST) are
learned from a few examples per class under the learned prior, the isotropic prior with the
learned mean and the zero-mean isotropic prior. Every fit starts from the source network's weights (the same initialization
for all three priors) and uses the same estimator settings and scale-selection rule. The
learned prior's gain over the better isotropic prior (accuracy, NLL) is plotted against a
relatedness number measured with the source network (a few-shot linear probe of its features,
its mean confidence on the target, and its zero-shot accuracy where the label spaces agree).

Run::

    python examples/relatedness.py --quick                    # 5 per class, 4 pairs, CPU
    python examples/relatedness.py --device cuda              # full size
    python examples/relatedness.py --quick --set "shots=(1, 5)" --set scaling=validation

Settings: ``QUICK`` / ``FULL`` below (``--set KEY=VALUE``); ``TEST`` is the size the tests run.
Results: ``examples/results/relatedness*``; measurements and discussion:
``docs/examples/relatedness.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from typing import Any

import numpy as np
import torch

import skkprior
from _shared import (
    append_jsonl,
    config,
    example_parser,
    mean_std,
    parse_args,
    progress_file,
    save_figure,
    save_results,
)
from skkprior import KroneckerPrior, KroneckerPriorClassifier, learn_prior
from skkprior.datasets import (
    MnistCNN,
    cache_home,
    load_animal_mnist,
    load_digits_images,
    load_fashion_mnist,
    load_mnist,
    pretrained_mnist_cnn,
    subsample_per_class,
)
from skkprior.estimators._base import CV_SCORINGS, cv_choice  # the rule of scaling='cv'
from skkprior.gaussian import FORMAT_VERSION
from skkprior.metrics import evaluate

NAME = "relatedness"
PRIORS = ("learned", "isotropic, learned mean", "isotropic, zero mean")
SOURCES = {"mnist": "MNIST CNN (pretrained)", "fashion": "Fashion CNN (trained here)"}
HEAD = "classifier.2"
# The 10,000 MNIST digits are split once: MNIST_TARGET_FRACTION of them (stratified, seed 0) are the
# targets' digits (few-shot pool and test set, halved), the rest are the source data of the MNIST
# prior's curvature pass. The pretrained CNN has probably seen all 10,000 in its own training.
MNIST_TARGET_FRACTION = 0.3

HYPER = {"weight_decay": 1e-2, "lr": 1e-3, "batch_size": 64}
INIT_RULE = ("every prior's MAP training starts from the source network's weights, the head (classifier.2) "
             "included: the estimator gets the source network instance as `module` (deep-copied), and "
             "initializes at the prior mean except where that mean is zero, which is the source weights for the "
             "learned and the learned-mean priors and leaves the source weights in place for the zero-mean prior "
             "and for the head, whose prior is N(0, 1/delta I) under all three priors")

# shots: examples per class; pairs: "source>target" (targets: rot<degrees> (MNIST digits), frot<degrees>
# (Fashion-MNIST test images), digits, fashion, animal);
# prior_scaling / compression: the learned prior's construction (learn_prior); scaling: the estimator's
# scale-selection rule, the same for every prior (cv_scoring: its score when scaling="cv"); relatedness: the x axis of the figure (probe,
# confidence or zero_shot); probe_per_class: shots of the linear probe; fashion_*: source 2's training
# (epochs, seed, training images: None is all 60,000); n_source: source images of each prior's curvature pass
FULL = {"pairs": ("mnist>rot0", "mnist>rot30", "mnist>rot60", "mnist>rot90", "mnist>rot180", "mnist>digits",
                  "mnist>fashion", "mnist>animal", "fashion>animal", "fashion>rot0"),
        "shots": (1, 5, 10, 20, 100), "seeds": 3, "first_seed": 0, "n_test": None, "n_samples": 100, "steps": 200,
        "scaling": "validation", "cv_scoring": "accuracy", "prior_scaling": "pac-bayes", "compression": "damped", "relatedness": "probe",
        "probe_per_class": 10, "fashion_epochs": 3, "fashion_seed": 0, "fashion_n_train": None, "n_source": None}
QUICK = {**FULL, "pairs": ("mnist>rot30", "mnist>digits", "mnist>animal", "fashion>animal"), "shots": (5,),
         "seeds": 1, "n_test": 500, "n_samples": 10, "steps": 60, "fashion_epochs": 1, "n_source": 5000}
# The size tests/test_examples_relatedness.py runs (``--set`` of each entry over QUICK).
TEST = {"pairs": ("mnist>rot0", "fashion>animal"), "n_test": 200, "n_samples": 4, "steps": 30,
        "n_source": 1000, "fashion_n_train": 5000}

logger = logging.getLogger("examples." + NAME)


# ---------------------------------------------------------------------------------------------
# sources and priors
# ---------------------------------------------------------------------------------------------
def _mnist_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source X, source y, target X, target y) of the 10,000 MNIST digits, disjoint."""
    return load_mnist(test_size=MNIST_TARGET_FRACTION, random_state=0)


def source_data(source: str, n_source: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The source task's data: the curvature pass of its prior (and the Fashion CNN's training)."""
    if source == "mnist":
        X, y, _, _ = _mnist_split()
    else:
        X, y, _, _ = load_fashion_mnist()
    if n_source is not None and n_source < len(y):
        X, y = X[:n_source], y[:n_source]
    return X, y


def _version() -> str:
    """Names the package version and the prior file format in cache keys (a cached prior without the
    source factors that ``reweighted`` and ``scaling="cv"`` need is never reused)."""
    return f"skkprior-{skkprior.__version__}_format{FORMAT_VERSION}"


def fashion_cnn(*, epochs: int, seed: int, n_train: int | None, device: str = "cpu",
                cache: bool = True) -> MnistCNN:
    """An :class:`MnistCNN` trained on the first ``n_train`` Fashion-MNIST training images (None: all
    60,000) for ``epochs`` epochs (Adam, lr 1e-3, batch 128), cached with its seed in the name."""
    path = cache_home() / "sources" / f"fashion_cnn_e{epochs}_n{n_train or 'all'}_seed{seed}_skkprior-{skkprior.__version__}.pt"
    net = MnistCNN(10)
    if cache and path.exists():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.to(device).eval()
    X, y = source_data("fashion", n_train)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MnistCNN(10).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(yt), generator=gen)
            for i in range(0, len(yt), 128):
                idx = order[i:i + 128]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(Xt[idx].to(device)), yt[idx].to(device))
                loss.backward()
                opt.step()
    net.eval()
    logger.info("trained the Fashion CNN (%d epochs) in %.1f s", epochs, time.perf_counter() - start)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
    return net


def source_network(source: str, cfg: dict[str, Any], device: str) -> MnistCNN:
    if source == "mnist":
        return pretrained_mnist_cnn().to(device).eval()
    return fashion_cnn(epochs=cfg["fashion_epochs"], seed=cfg["fashion_seed"], n_train=cfg["fashion_n_train"],
                       device=device)


def source_prior(source: str, net: MnistCNN, kind: str, cfg: dict[str, Any], device: str,
                 cache: bool = True) -> KroneckerPrior:
    """``learn_prior`` of the source network on its source data (cached): the learned prior
    (``kind="kronecker"``, ``cfg["prior_scaling"]``, ``cfg["compression"]``) or the isotropic one
    with the learned mean; the head gets ``N(0, 1/delta I)`` in both."""
    wd = HYPER["weight_decay"]
    net_tag = "pretrained" if source == "mnist" else \
        f"e{cfg['fashion_epochs']}_n{cfg['fashion_n_train'] or 'all'}_seed{cfg['fashion_seed']}"
    tag = f"relatedness_{source}_{net_tag}_{kind}_wd{wd:g}_n{cfg['n_source'] or 'all'}"
    if kind == "kronecker":
        tag += f"_{cfg['prior_scaling']}_{cfg['compression']}"
    path = cache_home() / "priors" / f"{tag}_{_version()}.pt"
    if cache and path.exists():
        return KroneckerPrior.load(path, map_location=device)
    X, y = source_data(source, cfg["n_source"])
    start = time.perf_counter()
    options = {} if kind == "isotropic" else {"scaling": cfg["prior_scaling"], "compression": cfg["compression"]}
    prior = learn_prior(net, torch.from_numpy(X), torch.from_numpy(y), kind=kind, weight_decay=wd, head=HEAD,
                        device=device, generator=torch.Generator(device=device).manual_seed(0), progress=False,
                        **options)
    logger.info("learned the %s %s prior in %.1f s", source, kind, time.perf_counter() - start)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        prior.to("cpu").save(path)
    return prior


# ---------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------
def rotate(X: np.ndarray, degrees: float) -> np.ndarray:
    """Images ``(n, 1, 28, 28)`` rotated counter-clockwise by ``degrees`` about their centre (bilinear)."""
    if degrees % 360 == 0:
        return X.copy()
    from scipy.ndimage import rotate as nd_rotate

    out = nd_rotate(X, degrees, axes=(3, 2), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def target_data(target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(few-shot pool X, y, test X, y) of a target."""
    if target.startswith("rot"):
        from sklearn.model_selection import train_test_split

        _, _, X, y = _mnist_split()  # disjoint from the MNIST prior's source digits
        X_pool, X_test, y_pool, y_test = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
        degrees = float(target[3:])
        return rotate(X_pool, degrees), y_pool, rotate(X_test, degrees), y_test
    if target.startswith("frot"):  # Fashion-MNIST test images: the Fashion CNN never trained on them
        from sklearn.model_selection import train_test_split

        _, _, X, y = load_fashion_mnist()
        X_pool, X_test, y_pool, y_test = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
        degrees = float(target[4:])
        return rotate(X_pool, degrees), y_pool, rotate(X_test, degrees), y_test
    if target == "digits":
        return load_digits_images(size=28)
    if target == "fashion":
        return load_fashion_mnist()
    if target == "animal":
        return load_animal_mnist()
    raise ValueError(f"unknown target {target!r}: rot<degrees>, frot<degrees>, digits, fashion or animal")


def target_label(target: str) -> str:
    if target.startswith("rot"):
        return f"MNIST {target[3:]}°"
    if target.startswith("frot"):
        return f"Fashion-MNIST {target[4:]}°"
    return {"digits": "sklearn digits 28x28", "fashion": "Fashion-MNIST", "animal": "Animal-MNIST"}[target]


def labels_agree(source: str, target: str) -> bool:
    """Whether the source network's classes are the target's (digits 0 - 9 on both sides)."""
    return ((source == "mnist" and (target.startswith("rot") or target == "digits"))
            or (source == "fashion" and target.startswith("frot")))


@torch.no_grad()
def _forward(net: MnistCNN, X: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities, penultimate features) of the source network."""
    probs, feats = [], []
    for i in range(0, len(X), 512):
        x = torch.from_numpy(X[i:i + 512]).to(device)
        h = net.features((x - net.MEAN) / net.STD).flatten(1)
        h = net.classifier[1](net.classifier[0](h))
        probs.append(torch.softmax(net.classifier[2](h), 1).cpu().numpy())
        feats.append(h.cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats)


def relatedness(net: MnistCNN, source: str, target: str, X_pool: np.ndarray, y_pool: np.ndarray,
                X_test: np.ndarray, y_test: np.ndarray, probe_per_class: int, device: str) -> dict[str, Any]:
    """Relatedness numbers of a (source, target) pair; no target label trains anything but the probe.

    - ``probe``: test accuracy of a logistic regression on the source network's penultimate
      (128-d) features, fitted on ``probe_per_class`` target examples per class (seed 0);
    - ``confidence``: the source network's mean max-softmax probability on the target's test
      inputs (no labels at all);
    - ``zero_shot``: the source network's test accuracy where its classes are the target's.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    proba_test, feats_test = _forward(net, X_test, device)
    Xp, yp = subsample_per_class(X_pool, y_pool, probe_per_class, random_state=0)
    _, feats_probe = _forward(net, Xp, device)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(feats_probe, yp)
    return {"probe": float(probe.score(feats_test, y_test)),
            "confidence": float(proba_test.max(1).mean()),
            "zero_shot": float((proba_test.argmax(1) == y_test).mean()) if labels_agree(source, target) else None}


# ---------------------------------------------------------------------------------------------
# the estimator and the initialization check
# ---------------------------------------------------------------------------------------------
def make_classifier(net: MnistCNN, prior: Any, n_train: int, *, cfg: dict[str, Any], device: str,
                    seed: int, **overrides: Any) -> KroneckerPriorClassifier:
    """The estimator with the shared settings (only the prior differs between methods).

    ``module`` is the source network instance (deep-copied at fit), so every prior's MAP training
    starts from the source weights (:data:`INIT_RULE`). About ``cfg["steps"]`` Adam steps.
    """
    batches = math.ceil(n_train / HYPER["batch_size"])
    settings = {"weight_decay": HYPER["weight_decay"], "lr": HYPER["lr"], "batch_size": HYPER["batch_size"],
                "max_epochs": max(1, math.ceil(cfg["steps"] / batches)), "scaling": cfg["scaling"],
                "cv_scoring": cfg["cv_scoring"],
                "predictive": "mc", "n_samples": cfg["n_samples"], "device": device, "random_state": seed,
                **overrides}
    return KroneckerPriorClassifier(net, prior=prior, **settings)


def cv_record(clf: KroneckerPriorClassifier, n_train: int) -> dict[str, Any] | None:
    """``scaling="cv"``: the chosen prior member and scales (``scales_``), and the member and scales each
    scoring would have chosen from the same folds (``cv_results_``, every one of the ``n_train``
    examples held out once; not refitted). None otherwise."""
    if not hasattr(clf, "scales_"):
        return None
    keys = ("source_weight", "zero_mean", "prior_scale", "temperature", "mean_accuracy", "mean_nll")
    rows = clf.cv_results_
    return {"chosen": {k: clf.scales_[k] for k in (*keys, "scoring")},
            **{f"by_{scoring}": {k: rows[cv_choice(rows, scoring, n_held_out=n_train)][k] for k in keys}
               for scoring in CV_SCORINGS}}


def check_init_rule(net: MnistCNN, priors: dict[str, Any], X: np.ndarray, y: np.ndarray, cfg: dict[str, Any],
                    device: str) -> dict[str, float]:
    """The largest |initial weight - source weight| of each prior's fit (0.0: it starts at the source).

    The estimator with ``max_epochs=0`` keeps its starting point as ``module_`` (diagonal
    curvature, fixed scales and the MAP predictive, to make the check cheap).
    """
    source = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    out = {}
    for name, prior in priors.items():
        clf = make_classifier(net, prior, len(y), cfg=cfg, device=device, seed=0, max_epochs=0, scaling="fixed",
                              predictive="map", curvature="diag")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
        start = clf.module_.state_dict()
        out[name] = max(float((start[k].detach().cpu() - v).abs().max()) for k, v in source.items())
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    return example_parser(NAME, __doc__, FULL)


def _pairs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for text in cfg["pairs"]:
        source, sep, target = str(text).partition(">")
        if not sep or source not in SOURCES or (source == target):
            raise ValueError(f"pair {text!r}: expected 'mnist>TARGET' or 'fashion>TARGET'")
        target_label(target)  # a KeyError names an unknown target
        pairs.append((source, target))
    return pairs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the study (the settings: :func:`_shared.config`)."""
    cfg = config(args, QUICK, FULL)
    start = time.perf_counter()
    pairs = _pairs(cfg)
    runs: list[dict[str, Any]] = []
    pair_info: list[dict[str, Any]] = []
    sources: dict[str, dict[str, Any]] = {}
    progress = progress_file(NAME, args)
    for source in dict.fromkeys(s for s, _ in pairs):
        net = source_network(source, cfg, args.device)
        priors = {"learned": source_prior(source, net, "kronecker", cfg, args.device),
                  "isotropic, learned mean": source_prior(source, net, "isotropic", cfg, args.device),
                  "isotropic, zero mean": None}
        Xs, ys = source_data(source, cfg["n_source"])
        Xc, yc = subsample_per_class(Xs, ys, 2, random_state=0)
        init = check_init_rule(net, priors, Xc, yc, cfg, args.device)
        _, _, Xt, yt = load_fashion_mnist() if source == "fashion" else _mnist_split()
        check_acc = float((_forward(net, Xt[:2000], args.device)[0].argmax(1) == yt[:2000]).mean())
        learned = priors["learned"]
        sources[source] = {"net": net, "priors": priors}
        pair_info.append({"source": source, "init_max_abs_diff": init, "source_accuracy_check": check_acc,
                          "prior_calibration": learned.metadata.get("calibration"),
                          "nkp_error": learned.metadata.get("nkp_error")})
        logger.info("source %s: accuracy %.4f (first 2000 target digits or Fashion test images), init check %s",
                    source, check_acc, init)
    relations: dict[tuple[str, str], dict[str, Any]] = {}
    for source, target in pairs:
        net, priors = sources[source]["net"], sources[source]["priors"]
        X_pool, y_pool, X_test, y_test = target_data(target)
        if cfg["n_test"] is not None and cfg["n_test"] < len(y_test):
            keep = np.sort(np.random.default_rng(0).choice(len(y_test), cfg["n_test"], replace=False))
            X_test, y_test = X_test[keep], y_test[keep]
        rel = relatedness(net, source, target, X_pool, y_pool, X_test, y_test, cfg["probe_per_class"], args.device)
        relations[(source, target)] = rel
        logger.info("%s > %s: %s", source, target, rel)
        for k in cfg["shots"]:
            for seed in range(cfg["first_seed"], cfg["first_seed"] + cfg["seeds"]):
                X, y = subsample_per_class(X_pool, y_pool, k, random_state=seed)
                for name, prior in priors.items():
                    t0 = time.perf_counter()
                    clf = make_classifier(net, prior, len(y), cfg=cfg, device=args.device, seed=seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        clf.fit(X, y)
                    post = clf.posterior_
                    runs.append({"source": source, "target": target, "per_class": k, "prior": name, "seed": seed,
                                 **evaluate(clf.predict_proba(X_test), y_test),
                                 "prior_scale": float(next(iter(post.prior_scale.values()))),
                                 "temperature": float(next(iter(post.temperature.values()))),
                                 "train_loss": float(clf.history_[-1]["train_loss"]) if clf.history_ else None,
                                 "cv": cv_record(clf, len(y)), "seconds": time.perf_counter() - t0})
                    r = runs[-1]
                    append_jsonl(progress, r)
                    logger.info("%s>%s k=%d seed=%d %-24s acc %.4f nll %.4f ece %.4f (%.1f s)", source, target, k,
                                seed, name, r["accuracy"], r["nll"], r["ece"], r["seconds"])
    prior_rows = aggregate(runs)
    rows = gains(runs, relations)
    elapsed = time.perf_counter() - start
    extra = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "hyper": HYPER,
             "init_rule": INIT_RULE, "sources": pair_info,
             "relatedness": [{"source": s, "target": t, **rel} for (s, t), rel in relations.items()],
             "prior_rows": prior_rows, "runs": runs, "seconds": elapsed}
    save_results(NAME, rows, args, extra=extra,
                 columns=["source", "target", "probe", "confidence", "zero_shot", "per_class", "acc_learned",
                          "acc_iso_mean", "acc_zero", "nll_learned", "nll_iso_mean", "nll_zero", "acc_gain",
                          "nll_gain", "seeds"])
    _plot(rows, cfg["relatedness"], args)
    print(f"{elapsed:.0f} s")
    result = {"rows": rows, **extra}
    _check(result)
    return result


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (source, target, shots, prior)."""
    rows = []
    for key in dict.fromkeys((r["source"], r["target"], r["per_class"], r["prior"]) for r in runs):
        sel = [r for r in runs if (r["source"], r["target"], r["per_class"], r["prior"]) == key]
        row: dict[str, Any] = dict(zip(("source", "target", "per_class", "prior"), key), seeds=len(sel))
        for metric in ("accuracy", "nll", "ece", "brier"):
            row[metric + "_mean"], row[metric + "_std"] = mean_std(r[metric] for r in sel)
        rows.append(row)
    return rows


def gains(runs: list[dict[str, Any]], relations: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (source, target, shots): each prior's mean accuracy and NLL, and the learned prior's gain.

    ``acc_gain`` = learned - better isotropic prior (higher accuracy), ``nll_gain`` = better isotropic
    prior (lower NLL) - learned: positive where the learned prior is better. The better isotropic
    prior is chosen per cell by its seed mean; the gain is the paired (same seed, same shots)
    difference, mean and standard deviation over seeds.
    """
    rows = []
    short = {"learned": "learned", "isotropic, learned mean": "iso_mean", "isotropic, zero mean": "zero"}
    for key in dict.fromkeys((r["source"], r["target"], r["per_class"]) for r in runs):
        sel = [r for r in runs if (r["source"], r["target"], r["per_class"]) == key]
        by = {name: {r["seed"]: r for r in sel if r["prior"] == name} for name in PRIORS}
        seeds = sorted(by["learned"])
        rel = relations[key[:2]]
        row: dict[str, Any] = {"source": key[0], "target": key[1], "target_label": target_label(key[1]),
                               "per_class": key[2], **rel, "seeds": len(seeds)}
        for name in PRIORS:
            for metric, col in (("accuracy", "acc"), ("nll", "nll")):
                m, s = mean_std(by[name][sd][metric] for sd in seeds)
                row[f"{col}_{short[name]}"] = f"{m:.4f} ± {s:.4f}"
                row[f"{col}_{short[name]}_mean"], row[f"{col}_{short[name]}_std"] = m, s
        best_acc = max(PRIORS[1:], key=lambda n: row[f"acc_{short[n]}_mean"])
        best_nll = min(PRIORS[1:], key=lambda n: row[f"nll_{short[n]}_mean"])
        acc_gain = [by["learned"][sd]["accuracy"] - by[best_acc][sd]["accuracy"] for sd in seeds]
        nll_gain = [by[best_nll][sd]["nll"] - by["learned"][sd]["nll"] for sd in seeds]
        row["best_isotropic_acc"], row["best_isotropic_nll"] = best_acc, best_nll
        for col, values in (("acc_gain", acc_gain), ("nll_gain", nll_gain)):
            m, s = mean_std(values)
            row[col] = f"{m:+.4f} ± {s:.4f}"
            row[col + "_mean"], row[col + "_std"] = m, s
        rows.append(row)
    return rows


def _check(result: dict[str, Any]) -> None:
    """The structure and the stated initialization rule (claims about the gain: see the docs page)."""
    for info in result["sources"]:
        for name, diff in info["init_max_abs_diff"].items():
            assert diff == 0.0, (info["source"], name, diff)  # every prior starts at the source weights
    for row in result["rows"]:
        assert 0.0 <= row["probe"] <= 1.0 and 0.0 < row["confidence"] <= 1.0, row
        assert math.isfinite(row["acc_gain_mean"]) and math.isfinite(row["nll_gain_mean"]), row


def _plot(rows: list[dict[str, Any]], measure: str, args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot")
        return

    xlabel = {"probe": "relatedness: few-shot linear-probe accuracy of the source features",
              "confidence": "relatedness: mean max-softmax confidence of the source network",
              "zero_shot": "relatedness: zero-shot accuracy of the source network"}[measure]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    shots = sorted(dict.fromkeys(r["per_class"] for r in rows))
    markers = "osD^v<>"
    for ax, (metric, label) in zip(axes, (("acc_gain", "accuracy gain (learned - better isotropic)"),
                                          ("nll_gain", "NLL gain (better isotropic - learned)"))):
        for i, k in enumerate(shots):
            sel = sorted((r for r in rows if r["per_class"] == k and r[measure] is not None), key=lambda r: r[measure])
            if not sel:
                continue
            x = np.array([r[measure] for r in sel])
            ax.errorbar(x, [r[metric + "_mean"] for r in sel], yerr=[r[metric + "_std"] for r in sel],
                        marker=markers[i % len(markers)], linestyle=":", capsize=3, label=f"{k} per class")
            if i == 0:
                for r in sel:
                    ax.annotate(f"{r['source']}>{r['target']}", (r[measure], r[metric + "_mean"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(label, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("learned prior's gain against source-target relatedness (above 0: the learned prior is better)",
                 fontsize=10)
    save_figure(fig, NAME, args)


if __name__ == "__main__":
    run(parse_args(build_parser()))
