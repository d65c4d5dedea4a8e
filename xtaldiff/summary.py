"""A job's summary: validity counts, hits at or below the target, predicted-value spread; and
the spread of values itself, which `xtaldiff evaluate`'s report uses too."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
# eV/atom above the hull within which a structure is commonly counted metastable (model.stability).
NEAR_HULL = 0.1
STEP = 0.05  # every quantile asked for is a multiple of it


def summarize(rows: Iterable[dict], *, target: float) -> dict:
    """``rows`` carry ``predicted_property``, ``valid_structure``, ``valid_composition``, ``novel``.

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
        "num_novel": sum(1 for r in rows if r.get("novel") is True),
        "num_known": sum(1 for r in rows if r.get("novel") is False),
        "num_near_hull": sum(1 for r in rows if r.get("predicted_e_above_hull") is not None
                             and r["predicted_e_above_hull"] <= NEAR_HULL),
        "predicted": distribution(predicted) if predicted else None,
    }


def distribution(values: Iterable[float], quantiles: Iterable[float] = QUANTILES) -> dict:
    """Count, mean, population std, extremes and quantiles (keyed "0.1", ...; linear
    interpolation between order statistics, numpy's default) of a non-empty sample."""
    values = list(values)
    steps = round(1 / STEP)
    cuts = statistics.quantiles(values, n=steps, method="inclusive") if len(values) > 1 else values * (steps - 1)
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
        "quantiles": {f"{q:g}": cuts[round(q / STEP) - 1] for q in quantiles},
    }
