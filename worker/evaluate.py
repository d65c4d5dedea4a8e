"""Validity checks and the oracle's prediction, added to each structure's record."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def evaluate(structures, rows: list[dict], *, dataset: str, oracle: bool,
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
