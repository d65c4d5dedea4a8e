"""What a checkpoint's header keeps of its evaluation reports, and the defaults chosen from them.

`xtaldiff record-evaluation` reads the reports of one set of weights (a guidance sweep at T
steps, a steps curve at the default guidance, for one sampler or several, and optionally a
charge-balanced report at the default guidance, sampler and steps) and writes this record, the
default guidance, sampler, steps and species step into the header; the CLI and the service
sample at those defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

from xtaldiff.datasets import DATASETS
from xtaldiff.samplers import DEFAULT_SAMPLER


def diversity_per_1000(report: dict, count: str) -> float:
    """A report's SR5 successes counted by `count` (a key of its sr5_successes), per 1000 samples."""
    found = report["sr5_successes"]
    return 1000 * found[count] / found["per_samples"]


def choose_default_guidance(reports: Sequence[dict]) -> float:
    """The guidance with the highest SR5 among those whose SR5 successes keep the dataset's
    diversity floor (`Dataset.default_guidance_keeps`); 0 when none does.

    ValueError when the floor is a fraction of the w = 0 model's and no report is at w = 0.
    """
    dataset = reports[0]["dataset"]
    rule = DATASETS[dataset].default_guidance_keeps
    floor = rule.per_1000
    if floor is None:
        at_w0 = [r for r in reports if r["provenance"]["settings"]["guidance"] == 0.0]
        if not at_w0:
            raise ValueError(f"{dataset}'s default guidance must keep {rule.of_w0:g} of the w = 0 model's "
                             f"{rule.count.replace('_', ' ')} SR5 successes: give its w = 0 report too")
        floor = rule.of_w0 * diversity_per_1000(at_w0[0], rule.count)
    diverse = [r for r in reports if diversity_per_1000(r, rule.count) >= floor]
    if not diverse:
        return 0.0
    best = max(diverse, key=lambda r: (r["success_rates"]["all_samples_cdvae_thresholds"]["SR5"],
                                       -r["provenance"]["settings"]["guidance"]))
    return float(best["provenance"]["settings"]["guidance"])


STEPS_TOLERANCE = 0.02  # default steps keep SR5 and validity within this of T steps


def report_sampler(report: dict, timesteps: int) -> str:
    """The sampler a report ran; at T steps rescaled and paper coincide, so they share one name."""
    provenance = report["provenance"]
    sampler = provenance.get("sampler", "paper")  # reports written before the option ran DiffCSP's sampler
    if provenance["sampling_steps"] == timesteps and sampler == "paper":
        return DEFAULT_SAMPLER
    return sampler


def charge_balanced(report: dict) -> bool:
    """Whether a report sampled with model.charge_balance's species step (reports before it did not)."""
    return bool(report["provenance"]["settings"].get("charge_balance", False))


def is_papers_protocol(report: dict, timesteps: int) -> bool:
    """Whether a report ran the paper's sampler at T steps: the reference of every other."""
    return (report["provenance"]["sampling_steps"] == timesteps and report_sampler(report, timesteps) == DEFAULT_SAMPLER
            and not charge_balanced(report))


def quality(report: dict) -> tuple[float, float]:
    """SR5 and validity, the two figures a default must keep."""
    return report["success_rates"]["all_samples_cdvae_thresholds"]["SR5"], report["validity"]["both"]


def choose_default_sampling(reports: Sequence[dict], guidance: float, timesteps: int) -> tuple[str, int]:
    """The sampler and the fewest steps at which it, at this guidance, keeps SR5 and validity
    within STEPS_TOLERANCE of the paper's sampler at T steps, as does every count it was measured
    at above them; (DEFAULT_SAMPLER, T) when none does. A tie goes to DEFAULT_SAMPLER."""
    at_guidance = [r for r in reports if r["provenance"]["settings"]["guidance"] == guidance
                   and not charge_balanced(r)]
    full = [r for r in at_guidance if is_papers_protocol(r, timesteps)]
    if not full:
        return DEFAULT_SAMPLER, timesteps

    sr5_full, valid_full = quality(full[0])
    best = (timesteps, 0, DEFAULT_SAMPLER)
    for sampler in {report_sampler(r, timesteps) for r in at_guidance}:
        curve = {r["provenance"]["sampling_steps"]: r for r in at_guidance if report_sampler(r, timesteps) == sampler}
        for steps in sorted(curve, reverse=True):
            sr5, valid = quality(curve[steps])
            if sr5 < sr5_full - STEPS_TOLERANCE or valid < valid_full - STEPS_TOLERANCE:
                break
            best = min(best, (steps, sampler != DEFAULT_SAMPLER, sampler))
    return best[2], best[0]


def choose_charge_balance(reports: Sequence[dict], guidance: float, sampler: str, steps: int, timesteps: int) -> bool:
    """Whether requests should sample charge-balanced: only where a charge-balanced report at the
    default guidance, sampler and steps has SR5 and validity at least those of the paper's species
    step at the same settings."""

    def at_defaults(report: dict) -> bool:
        provenance = report["provenance"]
        return (provenance["settings"]["guidance"] == guidance and provenance["sampling_steps"] == steps
                and report_sampler(report, timesteps) == sampler)

    plain = [quality(r) for r in reports if at_defaults(r) and not charge_balanced(r)]
    balanced = [quality(r) for r in reports if at_defaults(r) and charge_balanced(r)]
    return bool(plain and balanced) and all(b >= p for b, p in zip(balanced[0], plain[0], strict=True))


def evaluation_record(reports: Sequence[dict], default_guidance: float, default_sampler: str, default_steps: int,
                      default_charge_balance: bool, timesteps: int) -> dict:
    """What a checkpoint's header keeps of its evaluation (GET /models shows it): the guidance
    sweep at T steps, and the steps curve at the default guidance."""

    def summary(report: dict) -> dict:
        rates = report["success_rates"]["all_samples_cdvae_thresholds"]
        found = report["sr5_successes"]
        return {
            "guidance": report["provenance"]["settings"]["guidance"],
            **{k: round(v, 4) for k, v in rates.items()},
            "validity": round(report["validity"]["both"], 4),
            "sr5_distinct_formulas": found["distinct_formulas"],
            "sr5_unique": found["unique"],
            "sr5_unique_and_novel": found["unique_and_novel"],
        }

    full = {r["provenance"]["settings"]["guidance"]: r for r in reports if is_papers_protocol(r, timesteps)}
    curve = [r for r in reports if r["provenance"]["settings"]["guidance"] == default_guidance]
    curve.sort(key=lambda r: (-r["provenance"]["sampling_steps"], report_sampler(r, timesteps), charge_balanced(r)))
    first = full[default_guidance]
    return {
        "protocol": "SR at CDVAE's thresholds, target = training minimum, all samples",
        "n": first["n"],
        "seed": first["provenance"]["settings"]["seed"],
        "steps": timesteps,
        "evaluated_sha256": first["provenance"]["checkpoint_sha256"],
        "default_guidance": default_guidance,
        "default_sampler": default_sampler,
        "default_steps": default_steps,
        "default_charge_balance": default_charge_balance,
        "at_w0": summary(full[0.0]) if 0.0 in full else None,
        "at_default_guidance": summary(first),
        "sweep": [summary(full[w]) for w in sorted(full)],
        "steps_curve": [
            {"steps": r["provenance"]["sampling_steps"], "sampler": report_sampler(r, timesteps),
             "charge_balance": charge_balanced(r), **summary(r),
             "sampling_s": r["provenance"]["wall_time_s"]["sampling"], "device": r["provenance"]["device"]}
            for r in curve
        ],
    }


def steps_curve_table(curve: Sequence[dict]) -> str:
    """The steps curve as a Markdown table, for the terminal and the README."""
    lines = ["| steps | sampler | SR5 | SR10 | SR15 | valid | distinct SR5 formulas | unique SR5 structures "
             "| sampling s (device) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in curve:
        sampler = row["sampler"] + (", charge-balanced" if row.get("charge_balance") else "")
        lines.append(f"| {row['steps']} | {sampler} | {row['SR5']:.3f} | {row['SR10']:.3f} | "
                     f"{row['SR15']:.3f} | {row['validity']:.3f} | {row['sr5_distinct_formulas']} | "
                     f"{row['sr5_unique']} | {row['sampling_s']} ({row['device']}) |")
    return "\n".join(lines)
