"""Learn a prior from a source set too big for one process: K-FAC over ``torchrun`` workers.

    torchrun --standalone --nproc_per_node=2 scripts/distributed_prior.py --out prior.pt
    python scripts/distributed_prior.py --out prior.pt   # the same, one process

Each process reads its own shard of the source data (here: a strided slice of scikit-learn's
digits; in real use, each worker's files) and runs :func:`skkprior.curvature.kfac` with
``distributed=True``: the float64 sums and counts of the pass are all-reduced at its end, so
every process holds the factors of the *whole* source set, equal to those of one process
(``tests/test_scaling.py`` checks this). Rank 0 then forms the prior with
:func:`skkprior.learn_prior` (``curvature=``, no second pass) and saves it. The network is
the same on every rank (here a seeded MLP; in real use, the pretrained weights every rank
loads). Backend: gloo on CPUs, nccl with ``--device cuda`` (one GPU per rank, ``LOCAL_RANK``).
See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

from skkprior import learn_prior
from skkprior.curvature import kfac
from skkprior.networks import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where rank 0 saves the prior (.pt)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, GPU LOCAL_RANK)")
    parser.add_argument("--factors", help="also save the dense K-FAC factors here (rank 0; for the tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        X, y = load_digits(return_X_y=True)
        X = torch.from_numpy((X / 16).astype(np.float64))
        y = torch.from_numpy(y)
        torch.manual_seed(0)
        model = MLP(64, 10, hidden_sizes=(32,)).double().to(device)  # the same weights on every rank
        shard = slice(rank, None, world)  # this process's part of the source set
        curv = kfac(model, X[shard].to(device), y[shard].to(device), fisher="exact", batch_size=128,
                    progress=False, distributed=world > 1)
        if rank == 0:
            prior = learn_prior(model, None, weight_decay=1.0, curvature=curv)  # the merged factors
            prior.save(args.out)
            if args.factors:
                torch.save({"n": curv.n_samples, "nll": curv.nll_sum,
                            "factors": {k: K.to_dense().cpu() for k, K in curv.factors.items()}}, args.factors)
            print(f"prior of {curv.n_samples} source examples from {world} process(es) saved to {args.out}")
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
