"""The bundle of a finished job: every CIF, summary.json and summary.csv, zipped."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Sequence

from api.views import job_out, structure_brief
from xtaldiff.tables import Job, StructureRow

CSV_COLUMNS = (
    "index", "formula", "full_formula", "num_atoms", "space_group", "space_group_number",
    "predicted_property", "predicted_e_above_hull", "prediction_note", "valid", "valid_structure", "valid_composition",
    "invalid_reason", "novel", "known_as_material_id", "known_as_split",
    "a", "b", "c", "alpha", "beta", "gamma", "volume", "cif", "cif_p1",
    "relaxed_energy_before_ev_per_atom", "relaxed_energy_after_ev_per_atom", "relax_steps", "relax_converged",
    "relax_rms_displacement", "relaxed_predicted_property", "relaxed_valid", "relax_error", "cif_relaxed",
)
RELAXATION_KEYS = ("energy_before_ev_per_atom", "energy_after_ev_per_atom", "steps", "converged",
                   "rms_displacement", "predicted_property", "valid", "error")
CELL_SUFFIX = {"symmetrized": "", "p1": "_P1", "relaxed": "_relaxed"}


def cif_name(structure: StructureRow, *, cell: str = "symmetrized") -> str:
    formula = re.sub(r"[^A-Za-z0-9]", "", structure.reduced_formula)
    return f"{structure.index:04d}_{formula}{CELL_SUFFIX[cell]}.cif"


def build_bundle(job: Job, structures: Sequence[StructureRow]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for structure in structures:
            archive.writestr(f"cif/{cif_name(structure)}", structure.cif)
            archive.writestr(f"cif_p1/{cif_name(structure, cell='p1')}", structure.cif_p1)
            if structure.relaxed_cif is not None:
                archive.writestr(f"cif_relaxed/{cif_name(structure, cell='relaxed')}", structure.relaxed_cif)
        summary = job_out(job, structures).model_dump(mode="json")
        archive.writestr("summary.json", json.dumps(summary, indent=2))
        archive.writestr("summary.csv", _csv(structures))
    return buffer.getvalue()


def _csv(structures: Sequence[StructureRow]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for s in structures:
        brief = structure_brief(s)
        writer.writerow([
            s.index, brief.formula, s.formula, s.num_atoms, s.space_group_symbol,
            s.space_group_number, s.predicted_property, s.predicted_e_above_hull, s.prediction_note, brief.valid,
            s.valid_structure, s.valid_composition, s.invalid_reason, s.novel,
            *[(s.known_as or {}).get(key) for key in ("material_id", "split")], s.a, s.b, s.c, s.alpha,
            s.beta, s.gamma, s.volume, f"cif/{cif_name(s)}", f"cif_p1/{cif_name(s, cell='p1')}",
            *[(s.relaxation or {}).get(key) for key in RELAXATION_KEYS],
            f"cif_relaxed/{cif_name(s, cell='relaxed')}" if s.relaxed_cif is not None else None,
        ])
    return text.getvalue()
