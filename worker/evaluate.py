"""The oracle's prediction and the validity checks, added to each structure's record."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def evaluate(structures, rows: list[dict], *, dataset: str, oracle_workers: int = 1) -> None:
    """Fill ``predicted_property``/``prediction_note`` of ``rows`` (one per structure)."""
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
