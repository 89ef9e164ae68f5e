"""One job of the full-size GPU run: ``python scripts/full_runs/drive.py JOB OUT [DEVICE [tiny]]``.

The examples' full configurations, split into jobs that can share one GPU (by data set, size,
seed or stream); ``go.sh`` runs them in parallel and ``merge.py`` puts the pieces together.
JOB: ``priors`` (computes and caches every MNIST prior the others load), ``fs_<F|A>_<sizes>_<first
seed>-<seeds>`` (few-shot transfer, e.g. ``fs_A_1-5-10_0-3``), ``bayes``, ``cont_perm``,
``cont_seq``, ``cert_A``, ``cert_A_damped``, ``cert_F_zero``, ``grid``, ``prog``, ``tune``. A
fourth argument runs a tiny configuration (a CPU smoke test of the driver).
"""
import argparse
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]

JOBS = re.compile(r"priors|fs_[FA]_(\d+|all)(-(\d+|all))*_\d+-\d+|bayes|cont_(perm|seq)"
                  r"|cert_(A|A_damped|F_zero)|grid|prog|tune")


def _job(text: str) -> str:
    if not JOBS.fullmatch(text):
        raise argparse.ArgumentTypeError(f"unknown job {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/full_runs/drive.py", description=__doc__.splitlines()[0])
    parser.add_argument("job", type=_job, help="see the module docstring")
    parser.add_argument("out", help="folder for the job's results")
    parser.add_argument("device", nargs="?", default=None, help="default: cuda when available")
    parser.add_argument("tiny", nargs="?", default=None, help="any value: a tiny configuration (CPU smoke test)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    import _shared

    opts = build_parser().parse_args(argv)
    torch.set_num_threads(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    job, out, tiny = opts.job, opts.out, opts.tiny is not None
    dev = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()

    def args(name: str, **settings) -> object:
        return _shared.make_args(name, quick=False, device=dev, out=out, **settings)

    if job == "priors":
        for kw in [dict(weight_decay=1e-2, compression="damped"), dict(weight_decay=1e-2, compression="nearest"),
                   dict(weight_decay=1e-2, kind="isotropic"), dict(weight_decay=1.0, compression="nearest"),
                   dict(weight_decay=1.0, compression="damped"), dict(weight_decay=1.0, kind="isotropic"),
                   dict(weight_decay=1.0, n_source=4000), dict(weight_decay=1.0, kind="isotropic", n_source=4000)]:
            s = time.perf_counter()
            _shared.mnist_prior(device=dev, **kw)
            print("prior", kw, f"{time.perf_counter() - s:.1f} s", flush=True)
    elif job.startswith("fs_"):
        import few_shot_transfer as m
        _, ds, sizes, seeds = job.split("_")  # fs_<F|A>_<1-5-10|all>_<first>-<n>
        first, n = map(int, seeds.split("-"))
        ov = dict(datasets=({"F": "Fashion-MNIST", "A": "Animal-MNIST"}[ds],),
                  sizes=tuple(None if s == "all" else int(s) for s in sizes.split("-")), first_seed=first, seeds=n)
        if tiny:
            ov.update(n_test=100, n_samples=2, steps=5)
        m.run(args(m.NAME, **ov))
    elif job == "bayes":
        import bayesian_pretrained_cnn as m
        m.run(args(m.NAME, **(dict(n_fit=300, n_val=100, n_test=100, n_ood=100, n_samples=2, n_samples_val=2)
                              if tiny else {})))
    elif job.startswith("cont_"):
        import continual as m
        ov = dict(streams=({"perm": "permuted_fashion", "seq": "mnist_fashion_animal"}[job[5:]],))
        if tiny:
            ov.update(n_perm_tasks=2, perm_per_class=10, seq_per_class=10, n_test=100, max_epochs=1)
        m.run(args(m.NAME, **ov))
    elif job.startswith("cert_"):
        import certificates as m
        ov = {"cert_A": dict(datasets=("animal_mnist",)),
              "cert_A_damped": dict(datasets=("animal_mnist",), priors=("learned",), compression="damped"),
              "cert_F_zero": dict(datasets=("fashion_mnist",), priors=("isotropic, zero mean",))}[job]
        if tiny:
            ov.update(n_per_class=10, max_epochs=1, paper_samples=2, predictive_samples=2, n_test=100)
        m.run(args(m.NAME, **ov))
    elif job == "grid":
        import grid_search as m
        ov = {}
        if tiny:
            ov = dict(digits=dict(prior_scale=[1.0], temperature=[1.0, 0.1], cv=2, max_epochs=1, n_samples=2),
                      animal=dict(n_per_class=10, prior_scale=[1.0], temperature=[1.0, 0.1], cv=2,
                                  max_epochs=1, n_samples=2))
        m.run(args(m.NAME, **ov))
    elif job == "tune":
        return subprocess.call([sys.executable, str(ROOT / "benchmarks" / "tuning.py"), "--device", dev, "--workloads",
                                "resnet50_synthetic", "mnist_cnn", "--budget", "90", "--out-json",
                                f"{out}/tuning.json", "--out-md", f"{out}/tuning.md"])
    elif job == "prog":
        return subprocess.call([sys.executable, str(ROOT / "examples" / "progressive.py"), "--device", dev, "--out", out])
    print(f"JOB {job} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
