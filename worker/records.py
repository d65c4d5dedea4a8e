"""What the worker stores per structure: CIFs (symmetrised and P1), lattice, formula, space
group, the oracle's prediction and validity flags."""

from __future__ import annotations

from worker.scoring import SCORE_COLUMNS


def structure_record(structure) -> dict:
    """Columns of one ``structures`` row (pymatgen Structure in)."""
    from pymatgen.io.cif import CifWriter

    from model.metrics import SYMPREC, space_group

    lattice = structure.lattice
    symbol, number = space_group(structure)
    # spglib refuses degenerate cells (overlapping atoms): they are stored as P1.
    cif = str(CifWriter(structure, symprec=SYMPREC)) if number > 1 else str(CifWriter(structure))
    return {
        "formula": structure.composition.formula,
        "reduced_formula": structure.composition.reduced_formula,
        "num_atoms": len(structure),
        "a": lattice.a, "b": lattice.b, "c": lattice.c,
        "alpha": lattice.alpha, "beta": lattice.beta, "gamma": lattice.gamma,
        "volume": lattice.volume,
        "space_group_symbol": symbol,
        "space_group_number": number,
        "cif": cif,
        "cif_p1": str(CifWriter(structure)),
        **dict.fromkeys(SCORE_COLUMNS),
    }
