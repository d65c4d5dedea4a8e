"""Sample a checkpoint and print how many structures are structurally valid and how many cells
look like cubic perovskites (edges 3.5-5 A, angles within 10 degrees of 90).

    .venv/bin/python scripts/sample_stats.py checkpoints/perov_5_cdi.safetensors -n 100 --steps 1000
"""

import argparse
import json
import time

import numpy as np

from model.checkpoint import load_model
from model.metrics import structural_problem
from model.sampling import design


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_model(args.checkpoint)
    start = time.perf_counter()
    target = model.meta.property.min
    structures = design(model, n=args.n, target=target, steps=args.steps, seed=args.seed)
    seconds = time.perf_counter() - start
    abc = np.array([s.lattice.abc for s in structures])
    angles = np.array([s.lattice.angles for s in structures])
    perovskite_like = ((abc >= 3.5) & (abc <= 5.0)).all(1) & (np.abs(angles - 90) <= 10).all(1)
    print(json.dumps({
        "checkpoint_sha256": model.sha256, "epochs": model.meta.training["epochs"], "n": args.n,
        "steps": args.steps or model.schedule.config.timesteps, "seed": args.seed, "target": target,
        "device": str(model.device), "sampling_seconds": round(seconds, 1),
        "structurally_valid": sum(structural_problem(s) is None for s in structures),
        "perovskite_like_cells": int(perovskite_like.sum()),
        "median_edge_A": round(float(np.median(abc)), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
