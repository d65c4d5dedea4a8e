"""What the worker stores per structure: CIFs (symmetrised and P1), lattice, formula, space
group, the oracle's prediction and validity flags."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
SYMPREC = 0.1


def structure_record(structure) -> dict:
    """Columns of one ``structures`` row (pymatgen Structure in)."""
    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    lattice = structure.lattice
    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=SYMPREC)
        symbol, number = analyzer.get_space_group_symbol(), analyzer.get_space_group_number()
        cif = str(CifWriter(structure, symprec=SYMPREC))
    except Exception as err:
        # spglib refuses degenerate cells (overlapping atoms): they are stored as P1.
        log.info("no symmetry found for %s: %s", structure.composition.reduced_formula, err)
        symbol, number, cif = "P1", 1, str(CifWriter(structure))
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
        "predicted_property": None,
        "prediction_note": None,
        "valid_structure": None,
        "valid_composition": None,
        "invalid_reason": None,
    }
