"""A job's summary: validity counts, hits at or below the target, predicted-value spread."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def summarize(rows: Iterable[dict], *, target: float) -> dict:
    """``rows`` carry ``predicted_property``, ``valid_structure``, ``valid_composition``.

    Fields are None where nothing was predicted or checked (the oracle is optional).
    """
    rows = list(rows)
    checked = [r for r in rows if r["valid_structure"] is not None
               and r["valid_composition"] is not None]
    predicted = sorted(r["predicted_property"] for r in rows
                       if r["predicted_property"] is not None)
    return {
        "num_structures": len(rows),
        "num_checked": len(checked),
        "num_valid": sum(1 for r in checked if r["valid_structure"] and r["valid_composition"]),
        "num_predicted": len(predicted),
        "num_at_or_below_target": sum(1 for v in predicted if v <= target),
        "predicted": _distribution(predicted),
    }


def _distribution(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "min": values[0],
        "max": values[-1],
        "mean": statistics.fmean(values),
        "quantiles": {f"{q:g}": _quantile(values, q) for q in QUANTILES},
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
