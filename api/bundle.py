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
    "predicted_property", "prediction_note", "valid", "valid_structure", "valid_composition",
    "invalid_reason", "a", "b", "c", "alpha", "beta", "gamma", "volume", "cif", "cif_p1",
)


def cif_name(structure: StructureRow, *, p1: bool = False) -> str:
    formula = re.sub(r"[^A-Za-z0-9]", "", structure.reduced_formula)
    return f"{structure.index:04d}_{formula}{'_P1' if p1 else ''}.cif"


def build_bundle(job: Job, structures: Sequence[StructureRow]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for structure in structures:
            archive.writestr(f"cif/{cif_name(structure)}", structure.cif)
            archive.writestr(f"cif_p1/{cif_name(structure, p1=True)}", structure.cif_p1)
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
            s.space_group_number, s.predicted_property, s.prediction_note, brief.valid,
            s.valid_structure, s.valid_composition, s.invalid_reason, s.a, s.b, s.c, s.alpha,
            s.beta, s.gamma, s.volume, f"cif/{cif_name(s)}", f"cif_p1/{cif_name(s, p1=True)}",
        ])
    return text.getvalue()
