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
import sys
import time

sys.path.insert(0, "examples"); sys.path.insert(0, ".")
import torch

torch.set_num_threads(2)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
job, out = sys.argv[1], sys.argv[2]
dev = sys.argv[3] if len(sys.argv) > 3 else ("cuda" if torch.cuda.is_available() else "cpu")
tiny = len(sys.argv) > 4  # CPU smoke test of the driver
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
args = argparse.Namespace(device=dev, quick=False, seeds=None, out=out, threads=None)
t0 = time.perf_counter()
import _shared

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
    m.run(args, **ov)
elif job == "bayes":
    import bayesian_pretrained_cnn as m
    m.run(args, **(dict(n_fit=300, n_val=100, n_test=100, n_ood=100, n_samples=2, n_samples_val=2) if tiny else {}))
elif job.startswith("cont_"):
    import continual as m
    args.overrides = dict(streams=({"perm": "permuted_fashion", "seq": "mnist_fashion_animal"}[job[5:]],))
    if tiny:
        args.overrides.update(n_perm_tasks=2, perm_per_class=10, seq_per_class=10, n_test=100, max_epochs=1)
    m.run(args)
elif job.startswith("cert_"):
    import certificates as m
    spec = {"cert_A": dict(datasets=("animal_mnist",)),
            "cert_A_damped": dict(datasets=("animal_mnist",), priors=("learned",), compression="damped"),
            "cert_F_zero": dict(datasets=("fashion_mnist",), priors=("isotropic, zero mean",))}[job]
    args.overrides = spec
    if tiny:
        args.overrides.update(n_per_class=10, max_epochs=1, paper_samples=2, predictive_samples=2, n_test=100)
    m.run(args)
elif job == "grid":
    import grid_search as m
    if tiny:
        args.overrides = dict(digits=dict(prior_scale=[1.0], temperature=[1.0, 0.1], cv=2, max_epochs=1, n_samples=2),
                              animal=dict(n_per_class=10, prior_scale=[1.0], temperature=[1.0, 0.1], cv=2,
                                          max_epochs=1, n_samples=2))
    m.run(args)
elif job == "tune":
    import subprocess
    raise SystemExit(subprocess.call([sys.executable, "benchmarks/tuning.py", "--device", dev, "--workloads",
                                      "resnet50_synthetic", "mnist_cnn", "--budget", "90", "--out-json",
                                      f"{out}/tuning.json", "--out-md", f"{out}/tuning.md"]))
elif job == "prog":
    import subprocess
    raise SystemExit(subprocess.call([sys.executable, "examples/progressive.py", "--device", dev, "--out", out]))
else:
    raise SystemExit(f"unknown job {job}")
print(f"JOB {job} done in {time.perf_counter() - t0:.1f} s", flush=True)
