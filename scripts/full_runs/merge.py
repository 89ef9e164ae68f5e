"""Merge the parallel jobs of ``go.sh`` into ``examples/results`` and ``benchmarks/results``.

    python scripts/full_runs/merge.py RES   # RES: the unpacked r.tgz of go.sh

Each job wrote the usual JSON / table / plot of its example into ``RES/<job>``; the jobs of one
example (split by data set, training-set size, seed or stream only to share the GPU) are
merged into the example's full-size result files, which the docs pages include.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]

import certificates  # noqa: E402
import continual  # noqa: E402
import few_shot_transfer  # noqa: E402

import _shared  # noqa: E402

RESULTS = ROOT / "examples" / "results"


def _header(path: Path, note: str) -> None:
    """Replace the first line of a written table (it names this machine) with ``note``."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join([f"<!-- {note} -->", *lines[1:]]) + "\n")


def _certificates_as(rows: list, name: str, machine: dict, *, plot: bool, note: str) -> None:
    """Write certificate ``rows`` as ``examples/results/<name>.{json,md[,png]}`` with the header ``note``."""
    cols = ["data", "prior", "n", "certificate", "gibbs_train", "kl", "posterior", "paper_diag", "test_err",
            "gibbs_test_err", "test_nll", "seconds"]
    tmp = RESULTS / f"_{name}"
    sub = argparse.Namespace(quick=False, out=str(tmp), device="cuda")
    _shared.save_results("certificates", rows, sub, extra={"config": certificates.CONFIG["full"], "machine": machine},
                         columns=cols)
    if plot:
        certificates._plot(rows, sub)
    for f in tmp.iterdir():
        shutil.move(str(f), RESULTS / f"{name}{f.suffix}")
    tmp.rmdir()
    _header(RESULTS / f"{name}.md", note)


def main() -> None:
    res = Path(sys.argv[1])
    args = argparse.Namespace(quick=False, out=str(RESULTS), device="cuda")
    machine = json.loads((res / "bayes" / "bayesian_pretrained_cnn.json").read_text())["machine"]
    where = f"GPU run of scripts/full_runs/go.sh on {machine}"

    # few-shot transfer: jobs split by data set, size and seed
    runs, configs = [], []
    for job in sorted(p for p in res.glob("fs_*") if p.is_dir()):
        payload = json.loads((job / "few_shot_transfer.json").read_text())
        runs += payload["runs"]
        configs.append({"job": job.name, **payload["config"]})
    order = {"Fashion-MNIST": 0, "Animal-MNIST": 1}
    size = lambda k: 10 ** 9 if k == "all" else k  # noqa: E731
    runs.sort(key=lambda r: (order[r["dataset"]], size(r["per_class"]), r["seed"]))
    rows = few_shot_transfer._aggregate(runs)
    _shared.save_results(few_shot_transfer.NAME, rows, args,
                         extra={"jobs": configs, "hyper": few_shot_transfer.HYPER, "runs": runs, "machine": machine},
                         columns=["dataset", "per_class", "prior", "accuracy", "nll", "ece", "seeds"])
    _header(RESULTS / "few_shot_transfer.md", f"written by scripts/full_runs/merge.py from the {where}: "
            "examples/few_shot_transfer.py full config (3 seeds, full test sets, 100 posterior samples)")
    few_shot_transfer._plot(rows, args)

    # Bayesian pretrained CNN: one job
    for f in (res / "bayes").iterdir():
        shutil.copy(f, RESULTS / f.name)

    # continual: one job per stream
    rows, results, matrices, cfgs = [], {}, {}, {}
    for job in ("cont_perm", "cont_seq"):
        payload = json.loads((res / job / "continual.json").read_text())
        rows += payload["rows"]
        matrices.update(payload["matrices"])
        cfgs[job] = payload["config"]
        for key, m in payload["matrices"].items():
            stream, method = key.split("/")
            results[(stream, method)] = {"acc": np.array(m["acc"])}
    _shared.save_results("continual", rows, args, extra={"configs": cfgs, "matrices": matrices, "machine": machine})
    _header(RESULTS / "continual.md", f"written by scripts/full_runs/merge.py from the {where}: "
            "examples/continual.py full config (5 permuted tasks of 10,000; 3 x 4,000 for the sequence)")
    continual._plot(results, args)

    # certificates: Animal-MNIST (all 8,005 images), both compressions and the isotropic priors
    rows = []
    for job in ("cert_A", "cert_A_damped"):
        for r in json.loads((res / job / "certificates.json").read_text())["rows"]:
            if r["prior"] == "learned":
                r["prior"] = "learned (damped)" if job.endswith("damped") else "learned (nearest)"
            rows.append(r)
    rows.sort(key=lambda r: ["learned (nearest)", "learned (damped)", "isotropic, learned mean",
                             "isotropic, zero mean"].index(r["prior"]))
    _certificates_as(rows, "certificates_animal_full", machine, plot=True,
                     note=f"written by scripts/full_runs/merge.py from the {where}: examples/certificates.py full "
                     "config on Animal-MNIST (all 8,005 training images, 3 epochs, 100 samples), seed 0")
    # Fashion-MNIST, zero-mean prior at n = 60,000 (the other priors: certificates_fashion_n60000, CPU)
    zero = json.loads((res / "cert_F_zero" / "certificates.json").read_text())["rows"]
    _certificates_as(zero, "certificates_fashion_n60000_zero", machine, plot=False,
                     note=f"written by scripts/full_runs/merge.py from the {where}: examples/certificates.py full "
                     "config on Fashion-MNIST, zero-mean prior only (100 samples, the estimator's default "
                     "temperatures; the CPU rows of certificates_fashion_n60000 used 10 samples and temperatures "
                     "1, 0.3, 0.1), seed 0")

    # grid search and progressive networks: one job each, copied
    for job in ("grid", "prog"):
        for f in (res / job).iterdir():
            shutil.copy(f, RESULTS / f.name)
    # the PAC-Bayes tuning benchmark at full ResNet-50 factor sizes
    bench = ROOT / "benchmarks" / "results"
    shutil.copy(res / "tune" / "tuning.json", bench / "tuning_cuda.json")
    table = (res / "tune" / "tuning.md").read_text().replace(
        "# PAC-Bayes tuning benchmark (`benchmarks/tuning.py`)\n",
        "# PAC-Bayes tuning benchmark on a GPU (`benchmarks/tuning.py --device cuda`)\n\n> Measured in "
        "`scripts/full_runs/go.sh` while two example jobs (grid search, progressive networks) shared the GPU and "
        "the CPU cores; both routes ran under the same sharing, but only one after the other, so the ratios are "
        "indicative, not clean timings.\n", 1)
    (bench / "tuning_cuda.md").write_text(table)
    print("merged into", RESULTS, "and", bench)


if __name__ == "__main__":
    main()
