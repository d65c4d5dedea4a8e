"""Seconds per CHGNet relaxation for each dataset's cell shapes.

    .venv/bin/python scripts/bench_relax.py [--n 10] [--strain 0.03] [--dataset perov_5 ...]

Seeded random test structures, each strained isotropically by --strain (a designed cell is
rarely at its minimum) and relaxed as `"relax": true` does (model/relax.py). Prints one JSON
object per dataset: seconds per structure (mean, median, max), FIRE steps, convergence.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from model.data import load_split
from model.relax import relax
from xtaldiff.datasets import DATASET_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--strain", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", action="append", choices=DATASET_NAMES)
    args = parser.parse_args()
    relax(Structure(Lattice.cubic(3.0), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]))  # loads CHGNet
    for dataset in args.dataset or DATASET_NAMES:
        arrays = load_split(dataset, "test")
        offsets = arrays.offsets
        seconds, steps, converged, atoms = [], [], 0, []
        for i in random.Random(args.seed).sample(range(len(arrays)), min(args.n, len(arrays))):
            a, b = offsets[i], offsets[i + 1]
            structure = Structure(Lattice(arrays.lattices[i]), arrays.atomic_numbers[a:b].tolist(),
                                  arrays.frac_coords[a:b])
            structure.apply_strain(args.strain)
            started = time.perf_counter()
            result = relax(structure)
            seconds.append(time.perf_counter() - started)
            steps.append(result.steps)
            converged += result.converged
            atoms.append(len(structure))
        print(json.dumps({
            "dataset": dataset, "n": len(seconds), "strain": args.strain, "atoms_mean": float(np.mean(atoms)),
            "seconds_per_structure": {"mean": round(float(np.mean(seconds)), 2),
                                      "median": round(float(np.median(seconds)), 2),
                                      "max": round(float(np.max(seconds)), 2)},
            "fire_steps_median": float(np.median(steps)), "converged": converged / len(seconds),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        }), flush=True)


if __name__ == "__main__":
    main()
