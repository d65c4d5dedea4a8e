"""Scoring each designed structure: validity and the oracle's prediction added to its record
(for mp_20 its distance to the dataset's hull), its match in the dataset for a design job, and
for a job with `relax` its CHGNet relaxation."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# The columns score and mark_known fill; None until they do (and where they cannot).
SCORE_COLUMNS = ("predicted_property", "prediction_note", "valid_structure", "valid_composition",
                 "invalid_reason", "known_as", "novel", "predicted_e_above_hull")


def score(structures, rows: list[dict], *, dataset: str, oracle: bool,
             oracle_workers: int = 1) -> None:
    """Fill the validity and prediction columns of ``rows`` (one per structure)."""
    from model.metrics import validity

    for row, structure in zip(rows, structures, strict=True):
        checks = validity(structure)
        row["valid_structure"] = checks.structural
        row["valid_composition"] = checks.compositional
        row["invalid_reason"] = checks.reason
    if oracle:
        predict(structures, rows, dataset=dataset, oracle_workers=oracle_workers)
    else:
        for row in rows:
            row["prediction_note"] = "the oracle is off on this server (XTALDIFF_ORACLE)"


def mark_known(structures, rows: list[dict], *, dataset: str) -> None:
    """Name the dataset structure each structurally valid one matches (model.known); the others,
    and all of them on a machine without the dataset, stay unchecked."""
    from model.data import DatasetError
    from model.known import known_as

    checked = [i for i, row in enumerate(rows) if row["valid_structure"]]
    try:
        matches = known_as([structures[i] for i in checked], dataset)
    except DatasetError as err:
        log.warning("structures not matched against %s: %s", dataset, err)
        return
    except Exception:  # a side annotation: the job's structures are worth more than it
        log.exception("matching the structures against %s failed; they stay unchecked", dataset)
        return
    for i, match in zip(checked, matches, strict=True):
        rows[i]["known_as"] = None if match is None else match.as_json()
        rows[i]["novel"] = match is None


def predict(structures, rows: list[dict], *, dataset: str, oracle_workers: int) -> None:
    from model.oracle import Oracle, OracleUnavailable

    try:
        predictions = Oracle.for_dataset(dataset).predict(structures, workers=oracle_workers)
    except OracleUnavailable as err:
        # The structures are still worth having; each says why it has no prediction.
        log.warning("no oracle for %s: %s", dataset, err)
        for row in rows:
            row["prediction_note"] = f"oracle unavailable: {err}"
        return
    for row, prediction in zip(rows, predictions, strict=True):
        row["predicted_property"] = prediction.value
        row["prediction_note"] = prediction.reason
    mark_hull_distance(structures, rows, dataset=dataset)


def mark_hull_distance(structures, rows: list[dict], *, dataset: str) -> None:
    """For a formation-energy dataset, each predicted structure's distance to the hull of the
    dataset's compounds (model.stability), from the oracle's prediction."""
    from model.data import DatasetError
    from model.formation import FORMATION_DATASETS
    from model.stability import dataset_hull

    if dataset not in FORMATION_DATASETS:
        return
    try:
        hull = dataset_hull(dataset)
    except DatasetError as err:
        log.warning("no hull distances for %s: %s", dataset, err)
        return
    for row, structure in zip(rows, structures, strict=True):
        if row["predicted_property"] is None:
            continue
        try:
            row["predicted_e_above_hull"] = hull.e_above_hull(structure.composition, row["predicted_property"])
        except Exception:  # a side figure: the structure is worth more than it
            log.exception("no hull distance for %s", structure.composition.reduced_formula)


def relax(structures, rows: list[dict], *, dataset: str, oracle: bool, oracle_workers: int,
          max_fire_steps: int, progress) -> None:
    """Relax each structure with CHGNet (model.relax); its row gains the relaxed cell as a P1
    CIF and `relaxation`: CHGNet's energies, steps, convergence and displacement, with the
    validity and the oracle's prediction of the relaxed structure, and for a formation-energy
    dataset (mp_20) the relaxed structure's distance to the dataset's hull and CHGNet's own
    formation energy. progress(done, total) after each structure:
    where a cancelled job stops. A relaxation not converged after max_fire_steps is kept, marked so."""
    from pymatgen.io.cif import CifWriter

    from model.formation import FORMATION_DATASETS, elemental_references, formation_energy
    from model.relax import relax_all

    results = relax_all(structures, max_steps=max_fire_steps, progress=progress)
    references = elemental_references(dataset) if dataset in FORMATION_DATASETS else None
    relaxed = [result.relaxed for result in results if result.relaxed is not None]
    checked = [{} for _ in relaxed]
    if relaxed:
        score(relaxed, checked, dataset=dataset, oracle=oracle, oracle_workers=oracle_workers)
    checked_rows = iter(checked)
    for row, result in zip(rows, results, strict=True):
        record = result.as_dict()
        if result.relaxed is not None:
            found = next(checked_rows)
            record.update(
                predicted_property=found.get("predicted_property"), prediction_note=found.get("prediction_note"),
                predicted_e_above_hull=found.get("predicted_e_above_hull"),
                valid=bool(found["valid_structure"] and found["valid_composition"]),
            )
            row["relaxed_cif"] = str(CifWriter(result.relaxed))
            if references is not None:
                energy, why = formation_energy(result.relaxed.composition, result.energy_after, references)
                record.update(formation_energy_chgnet=energy, formation_energy_note=why)
        row["relaxation"] = record
