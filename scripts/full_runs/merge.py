"""Merge the parallel jobs of ``go.sh`` into ``examples/results`` and ``benchmarks/results``.

    python scripts/full_runs/merge.py RES   # RES: the unpacked r.tgz of go.sh

Each job wrote the usual JSON / table / plot of its example into ``RES/<job>``; the jobs of one
example (split by data set, training-set size, seed or stream only to share the GPU) are
merged into the example's full-size result files, which the docs pages include. Only the
examples whose jobs are all in ``RES`` are merged. A merged file names the commands that
reproduce it: ``python scripts/full_runs/drive.py JOB RES/JOB`` for each of its jobs, then this script.
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


FEW_SHOT_JOBS = ("fs_F_1-5-10_0-3", "fs_F_50-100_0-3", "fs_F_all_0-1", "fs_F_all_1-1", "fs_F_all_2-1",
                 "fs_A_1-5-10_0-3", "fs_A_50-100-all_0-3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/full_runs/merge.py", description=__doc__.splitlines()[0])
    parser.add_argument("res", type=Path, help="the unpacked r.tgz of go.sh (one folder per job)")
    return parser


def reproduce(*jobs: str) -> str:
    """The commands that make a merged file: each job, then this script."""
    return " && ".join([f"python scripts/full_runs/drive.py {job} RES/{job}" for job in jobs]
                       + ["python scripts/full_runs/merge.py RES"])


def _header(path: Path, note: str) -> None:
    """Replace the line of a written table that names this machine with ``note``."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join(f"<!-- {note} -->" if line.startswith("<!-- machine:") else line
                              for line in lines) + "\n")


def _certificates_as(rows: list, name: str, machine: dict, *, plot: bool, note: str, jobs: tuple[str, ...]) -> None:
    """Write certificate ``rows`` as ``examples/results/<name>.{json,md[,png]}`` with the header ``note``."""
    cols = ["data", "prior", "n", "certificate", "gibbs_train", "kl", "posterior", "paper_diag", "test_err",
            "gibbs_test_err", "test_nll", "seconds"]
    tmp = RESULTS / f"_{name}"
    sub = _shared.make_args(certificates.NAME, quick=False, out=tmp, device="cuda")
    _shared.save_results(certificates.NAME, rows, sub, extra={"config": certificates.FULL, "machine": machine},
                         columns=cols, reproduce=reproduce(*jobs))
    if plot:
        certificates._plot(rows, sub)
    for f in tmp.iterdir():
        shutil.move(str(f), RESULTS / f"{name}{f.suffix}")
    tmp.rmdir()
    _header(RESULTS / f"{name}.md", note)


def main(argv: list[str] | None = None) -> None:
    res = build_parser().parse_args(argv).res
    args = _shared.make_args("merge", quick=False, out=RESULTS, device="cuda")
    have = {p.name for p in res.iterdir() if p.is_dir()}
    first = next(iter(sorted(res.glob("*/*.json"))), None)
    machine = json.loads(first.read_text()).get("machine", {}) if first is not None else {}
    where = f"GPU run of scripts/full_runs/go.sh on {machine}"
    if set(FEW_SHOT_JOBS) <= have:
        _few_shot(res, args, machine, where)
    if "bayes" in have:
        _copy(res, "bayes")
    if {"cont_perm", "cont_seq"} <= have:
        _continual(res, args, machine, where)
    if {"cert_A", "cert_A_damped"} <= have:
        _certificates_animal(res, machine, where)
    if "cert_F_zero" in have:
        zero = json.loads((res / "cert_F_zero" / "certificates.json").read_text())["rows"]
        _certificates_as(zero, "certificates_fashion_n60000_zero", machine, plot=False, jobs=("cert_F_zero",),
                         note=f"written by scripts/full_runs/merge.py from the {where}: examples/certificates.py full "
                         "config on Fashion-MNIST, zero-mean prior only (100 samples, the estimator's default "
                         "temperatures; the CPU rows of certificates_fashion_n60000 used 10 samples and temperatures "
                         "1, 0.3, 0.1), seed 0")
    for job in ("grid", "prog"):  # grid search and progressive networks: one job each, copied
        if job in have:
            _copy(res, job)
    if "tune" in have:
        _tuning(res)
    print("merged into", RESULTS, "and", ROOT / "benchmarks" / "results")


def _copy(res: Path, job: str) -> None:
    """Copy the results of a one-job example; they name the job and this script as their command."""
    for f in (res / job).iterdir():
        if f.suffix == ".json":
            payload = json.loads(f.read_text())
            (RESULTS / f.name).write_text(json.dumps({**payload, "command": reproduce(job)}, indent=2))
        elif f.suffix == ".md":
            lines = f.read_text().splitlines()
            (RESULTS / f.name).write_text("\n".join(f"Reproduce: `{reproduce(job)}`" if line.startswith("Reproduce:")
                                                    else line for line in lines) + "\n")
        elif not f.name.endswith("_progress.jsonl"):
            shutil.copy(f, RESULTS / f.name)


def _few_shot(res: Path, args: argparse.Namespace, machine: dict, where: str) -> None:
    """Few-shot transfer: jobs split by data set, size and seed."""
    runs, configs = [], []
    for job in sorted(res / name for name in FEW_SHOT_JOBS):
        payload = json.loads((job / "few_shot_transfer.json").read_text())
        runs += payload["runs"]
        configs.append({"job": job.name, **payload["config"]})
    order = {"Fashion-MNIST": 0, "Animal-MNIST": 1}
    size = lambda k: 10 ** 9 if k == "all" else k  # noqa: E731
    runs.sort(key=lambda r: (order[r["dataset"]], size(r["per_class"]), r["seed"]))
    rows = few_shot_transfer._aggregate(runs)
    _shared.save_results(few_shot_transfer.NAME, rows, args,
                         extra={"jobs": configs, "hyper": few_shot_transfer.HYPER, "runs": runs, "machine": machine},
                         columns=["dataset", "per_class", "prior", "accuracy", "nll", "ece", "seeds"],
                         reproduce=reproduce(*FEW_SHOT_JOBS))
    _header(RESULTS / "few_shot_transfer.md", f"written by scripts/full_runs/merge.py from the {where}: "
            "examples/few_shot_transfer.py full config (3 seeds, full test sets, 100 posterior samples)")
    few_shot_transfer._plot(rows, _shared.make_args(few_shot_transfer.NAME, quick=False, out=RESULTS))


def _continual(res: Path, args: argparse.Namespace, machine: dict, where: str) -> None:
    """Continual learning: one job per stream."""
    rows, results, matrices, cfgs = [], {}, {}, {}
    for job in ("cont_perm", "cont_seq"):
        payload = json.loads((res / job / "continual.json").read_text())
        rows += payload["rows"]
        matrices.update(payload["matrices"])
        cfgs[job] = payload["config"]
        for key, m in payload["matrices"].items():
            stream, method = key.split("/")
            results[(stream, method)] = {"acc": np.array(m["acc"])}
    _shared.save_results("continual", rows, args, extra={"configs": cfgs, "matrices": matrices, "machine": machine},
                         reproduce=reproduce("cont_perm", "cont_seq"))
    _header(RESULTS / "continual.md", f"written by scripts/full_runs/merge.py from the {where}: "
            "examples/continual.py full config (5 permuted tasks of 10,000; 3 x 4,000 for the sequence)")
    continual._plot(results, _shared.make_args(continual.NAME, quick=False, out=RESULTS))


def _certificates_animal(res: Path, machine: dict, where: str) -> None:
    """Certificates on Animal-MNIST (all 8,005 images), both compressions and the isotropic priors."""
    rows = []
    for job in ("cert_A", "cert_A_damped"):
        for r in json.loads((res / job / "certificates.json").read_text())["rows"]:
            if r["prior"] == "learned":
                r["prior"] = "learned (damped)" if job.endswith("damped") else "learned (nearest)"
            rows.append(r)
    rows.sort(key=lambda r: ["learned (nearest)", "learned (damped)", "isotropic, learned mean",
                             "isotropic, zero mean"].index(r["prior"]))
    _certificates_as(rows, "certificates_animal_full", machine, plot=True, jobs=("cert_A", "cert_A_damped"),
                     note=f"written by scripts/full_runs/merge.py from the {where}: examples/certificates.py full "
                     "config on Animal-MNIST (all 8,005 training images, 3 epochs, 100 samples), seed 0")


def _tuning(res: Path) -> None:
    """The PAC-Bayes tuning benchmark at full ResNet-50 factor sizes."""
    bench = ROOT / "benchmarks" / "results"
    payload = json.loads((res / "tune" / "tuning.json").read_text())
    (bench / "tuning_cuda.json").write_text(json.dumps({**payload, "command": reproduce("tune")}, indent=2) + "\n")
    table = (res / "tune" / "tuning.md").read_text().replace(
        "## PAC-Bayes tuning benchmark (`benchmarks/tuning.py`)\n",
        "## PAC-Bayes tuning benchmark on a GPU (`benchmarks/tuning.py --device cuda`)\n\n> Measured in "
        "`scripts/full_runs/go.sh` while two example jobs (grid search, progressive networks) shared the GPU and "
        "the CPU cores; both routes ran under the same sharing, but only one after the other, so the ratios are "
        f"indicative, not clean timings.\n\nReproduce: `{reproduce('tune')}`\n", 1)
    (bench / "tuning_cuda.md").write_text(table)


if __name__ == "__main__":
    main()
