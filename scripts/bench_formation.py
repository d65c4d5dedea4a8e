"""How well CHGNet's formation energy agrees with mp_20's labels, and what relaxation costs.

    .venv/bin/python scripts/bench_formation.py [--n 200] [--seed 0]

A seeded random subset of mp_20's test split is relaxed with CHGNet (model/relax.py) and its
formation energy per atom computed against CHGNet's elemental references (model/formation.py;
computed once and cached). Prints one JSON object: the MAE against the labels (DFT formation
energies with the Materials Project's corrections, which CHGNet's raw energies lack), how many
structures had no reference, and seconds per structure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from model.data import load_split
from model.formation import elemental_references, formation_energy
from model.relax import CHGNET_VERSION, relax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    references = elemental_references("mp_20")
    arrays = load_split("mp_20", "test")
    offsets = arrays.offsets
    chosen = sorted(random.Random(args.seed).sample(range(len(arrays)), min(args.n, len(arrays))))
    errors, unreferenced, not_converged, seconds = [], 0, 0, []
    by_oxygen = {True: [], False: []}
    for i in chosen:
        a, b = offsets[i], offsets[i + 1]
        structure = Structure(Lattice(arrays.lattices[i]), arrays.atomic_numbers[a:b].tolist(), arrays.frac_coords[a:b])
        started = time.perf_counter()
        result = relax(structure)
        seconds.append(time.perf_counter() - started)
        not_converged += not result.converged
        if result.energy_after is None:
            unreferenced += 1
            continue
        value, why = formation_energy(structure.composition, result.energy_after, references)
        if value is None:
            unreferenced += 1
            continue
        error = abs(value - float(arrays.properties[i]))
        errors.append(error)
        by_oxygen["O" in structure.composition.chemical_system.split("-")].append(error)
    print(json.dumps({
        "dataset": "mp_20", "split": "test", "n": len(chosen), "seed": args.seed, "chgnet": CHGNET_VERSION,
        "elemental_references": len(references),
        "mae_ev_per_atom": round(float(np.mean(errors)), 4), "median_abs_error": round(float(np.median(errors)), 4),
        "mae_with_oxygen": round(float(np.mean(by_oxygen[True])), 4) if by_oxygen[True] else None,
        "mae_without_oxygen": round(float(np.mean(by_oxygen[False])), 4) if by_oxygen[False] else None,
        "compared": len(errors), "no_reference_or_failed": unreferenced, "not_converged": not_converged,
        "relax_seconds_per_structure": {"mean": round(float(np.mean(seconds)), 2),
                                        "median": round(float(np.median(seconds)), 2)},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
