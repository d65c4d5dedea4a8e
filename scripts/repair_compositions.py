"""How far a model's invalid compositions are from valid ones: give each compositionally invalid
sample of an `xtaldiff evaluate` folder the first one-atom change of species (to another element
of the same cell, geometry and the set of elements kept) that passes SMACT, and write samples files for
`xtaldiff evaluate --samples` to score: all samples, the repaired ones only, the rest only.

An experiment on the samples, not part of the sampler: the paper's protocol scores the model's
own compositions.

    M=checkpoints/mp_20_cdi.safetensors
    .venv/bin/xtaldiff evaluate --checkpoint $M -n 300 --cond-n 0 --system-n 0 --out eval/m20
    .venv/bin/python scripts/repair_compositions.py eval/m20 eval/repaired
    .venv/bin/xtaldiff evaluate --checkpoint $M --samples eval/repaired/all.csv.gz --cond-n 0 --system-n 0 \
        --out eval/m20_repaired
    .venv/bin/xtaldiff evaluate --checkpoint $M --samples eval/repaired/repaired.csv.gz --cond-n 0 --system-n 0 \
        --relax 60 --out eval/m20_repaired_relaxed
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

from pymatgen.core import Structure

from model.metrics import compositional_problem
from model.report import write_samples


def one_atom_repair(structure: Structure) -> Structure | None:
    """A copy with one site's species changed so that SMACT passes, every element kept, or None if
    no such change exists."""
    counts = structure.composition.get_el_amt_dict()
    for symbol in counts:
        if counts[symbol] < 2:
            continue
        site = next(i for i, each in enumerate(structure) if each.specie.symbol == symbol)
        for other in counts:
            if other != symbol:
                repaired = structure.copy()
                repaired.replace(site, other)
                if compositional_problem(repaired) is None:
                    return repaired
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="an `xtaldiff evaluate` output folder")
    parser.add_argument("out", type=Path, help="folder for all.csv.gz, repaired.csv.gz, kept.csv.gz")
    args = parser.parse_args()

    report = json.loads((args.report / "report.json").read_text())
    provenance, settings = report["provenance"], report["provenance"]["settings"]
    drawn = {"checkpoint_sha256": provenance["checkpoint_sha256"], "seed": settings["seed"],
             "steps": provenance["sampling_steps"], "guidance": settings["guidance"], "target": report["target"],
             "sampler": provenance["sampler"], "atom_counts": settings["atom_counts"],
             "charge_balance": settings.get("charge_balance", False)}
    csv.field_size_limit(1 << 24)
    groups: dict[str, list[Structure]] = {"all": [], "repaired": [], "kept": []}
    with gzip.open(args.report / "samples.csv.gz", "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            structure = Structure.from_str(row["cif"], fmt="cif")
            repaired = None if row["compositional_valid"] == "True" else one_atom_repair(structure)
            groups["all"].append(repaired or structure)
            groups["kept" if repaired is None else "repaired"].append(repaired or structure)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, structures in groups.items():
        write_samples(args.out / f"{name}.csv.gz", structures, {**drawn, "n": len(structures)})
    print(f"{len(groups['repaired'])} of {len(groups['all'])} samples repaired; files in {args.out}")


if __name__ == "__main__":
    main()
