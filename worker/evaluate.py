"""Validity checks and the oracle's prediction, added to each structure's record."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
# SMACT's oxidation-state search (model.metrics.compositional_problem) is exponential in the
# number of distinct elements: 12 take about 9 s here, 20 would never finish. Beyond this a
# composition is left unchecked rather than stall the job.
MAX_ELEMENTS_CHECKED = 10


def evaluate(structures, rows: list[dict], *, dataset: str, oracle: bool,
             oracle_workers: int = 1) -> None:
    """Fill the validity and prediction columns of ``rows`` (one per structure)."""
    from model.metrics import compositional_problem, structural_problem

    for row, structure in zip(rows, structures, strict=True):
        structural = structural_problem(structure)
        distinct = len(structure.composition.elements)
        if distinct > MAX_ELEMENTS_CHECKED:
            composition_valid = None
            compositional = (f"composition not checked: {distinct} distinct elements (at most "
                             f"{MAX_ELEMENTS_CHECKED} are)")
        else:
            compositional = compositional_problem(structure)
            composition_valid = compositional is None
        row["valid_structure"] = structural is None
        row["valid_composition"] = composition_valid
        row["invalid_reason"] = "; ".join(r for r in (structural, compositional) if r) or None
    if oracle:
        predict(structures, rows, dataset=dataset, oracle_workers=oracle_workers)
    else:
        for row in rows:
            row["prediction_note"] = "the oracle is off on this server (XTALDIFF_ORACLE)"


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
