"""report.md: an `xtaldiff evaluate` report rendered for people (Table 1 beside the published rows)."""

from __future__ import annotations

from pathlib import Path

from xtaldiff.datasets import DATASET_NAMES, PUBLISHED

ATOM_COUNT_SOURCES = {"training": "from the training split",
                      "near_target": "from the training structures near the target"}
SPECIES_STEPS = {False: "the paper's", True: "charge-balanced (model/charge_balance.py)"}


def _cell(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def render_markdown(report: dict) -> str:
    """report.md: Table 1 with our row beside the published ones, then the other metrics."""
    dataset = report["dataset"]
    success = report["success_rates"]
    ours = success["all_samples_cdvae_thresholds"]
    header = "| method | " + " | ".join(f"{d} SR5 / SR10 / SR15" for d in DATASET_NAMES) + " |"
    lines = [
        f"# Evaluation: {Path(report['provenance']['checkpoint']).name} ({dataset})",
        "",
        f"Conditioned on {report['property']['name']} = {report['target']:.4g} "
        f"{report['property']['unit']}"
        + (" (training minimum)" if report["target_is_training_minimum"] else "")
        + f"; {report['n']} samples. Success rate = fraction of all samples whose predicted "
        "property is at or below CDVAE's threshold; invalid or unpredicted samples fail.",
        "",
        "## Table 1: success rates",
        "",
        header,
        "|---" * (len(DATASET_NAMES) + 1) + "|",
    ]
    for method, rates in PUBLISHED.items():
        cells = [" / ".join(_cell(v) for v in rates[d]) for d in DATASET_NAMES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    our_cells = [
        " / ".join(_cell(ours[k]) for k in ("SR5", "SR10", "SR15")) if d == dataset else "—" for d in DATASET_NAMES
    ]
    lines.append("| **this checkpoint** | " + " | ".join(our_cells) + " |")
    lines += ["", "| variant | SR5 | SR10 | SR15 |", "|---|---|---|---|"]
    variants = [
        ("all samples, CDVAE's thresholds (headline)", "all_samples_cdvae_thresholds"),
        ("all samples, our training split's percentiles", "all_samples_training_thresholds"),
        (
            "all samples, CDVAE's thresholds, implausible predictions fail",
            "all_samples_cdvae_thresholds_implausible_fail",
        ),
        ("CDVAE's grouped protocol (best of 10 per group)", "cdvae_grouped_best_of_10"),
        ("thresholds: CDVAE", "cdvae_thresholds"),
        ("thresholds: our training split", "training_thresholds"),
    ]
    for label, key in variants:
        if key in success:
            row = success[key]
            lines.append(f"| {label} | " + " | ".join(f"{row[k]:.4g}" for k in row) + " |")

    validity, unique, novel = report["validity"], report["uniqueness"], report["novelty"]
    lines += [
        "",
        "## Validity, uniqueness, novelty",
        "",
        f"- Structural validity {validity['structural']:.3f}, compositional "
        f"{validity['compositional']:.3f}, both {validity['both']:.3f}.",
        f"- Oracle gave no prediction for {report['oracle_failures']} of {report['n']} samples.",
        f"- Uniqueness {unique['fraction_of_valid']:.3f} ({unique['unique']} of {unique['valid']} valid samples).",
        f"- Novelty {novel['fraction_of_valid']:.3f} ({novel['novel']} of {unique['valid']} valid "
        "samples match no training structure); in large groups of equal composition only the "
        f"{novel['nearest_candidates']} nearest training structures are matched "
        f"({novel['queries_checked_against_nearest_only']} samples).",
    ]
    found = report.get("sr5_successes")
    if found:
        lines.append(
            f"- SR5 successes: {found['count']} of {found['per_samples']} samples, {found['distinct_formulas']} "
            f"distinct formulas, {found['unique']} unique structures (StructureMatcher), {found['novel']} novel, "
            f"{found['unique_and_novel']} unique and novel."
        )
        if found.get("space_groups"):
            groups = list(found["space_groups"].items())
            shown = ", ".join(f"{name} {count}" for name, count in groups[:10])
            more = f", {len(groups) - 10} more" if len(groups) > 10 else ""
            lines.append(f"- Space groups of the SR5 successes (spglib, symprec {found['space_group_symprec']} A): "
                         f"{shown}{more}.")
    stability = report.get("stability")
    if stability:
        lines.append(
            f"- Valid and predicted within {stability['near_hull_ev_per_atom']} eV/atom of the hull of "
            f"{stability['hull']}: {stability['near_hull']:.3f} of all samples; also unique and novel "
            f"(S.U.N.): {stability['stable_unique_novel']:.3f}. The hull holds fewer phases than the Materials "
            "Project's, so these are upper bounds."
        )
    spread = report["predicted_distribution_of_valid"]
    if spread["count"]:
        lines.append(
            f"- Predicted {report['property']['name']} of valid samples: "
            f"mean {spread['mean']:.4g}, std {spread['std']:.3g}, min {spread['min']:.4g}, median "
            f"{spread['quantiles']['0.5']:.4g}, max {spread['max']:.4g}."
        )
    implausible = report["implausible_predictions"]
    if implausible["count"]:
        low, high = implausible["plausible_range"]
        lines.append(
            f"- {implausible['count']} valid samples have predictions outside [{low:.4g}, "
            f"{high:.4g}] (one training range beyond its extremes): the oracle extrapolating. "
            "They count like any other prediction in the headline, as in CDVAE."
        )
    conditioning = report["conditioning_error"]
    if conditioning is not None:
        lines += [
            "",
            "## Conditioning error",
            "",
            f"Mean |target - predicted| = {_cell(conditioning['mean_absolute_error'])} "
            f"{report['property']['unit']} over {conditioning['predicted']} predicted samples "
            f"({conditioning['failed']} invalid or unpredicted), "
            f"{conditioning['samples_per_target']} per target.",
            "",
            "| target | MAE | predicted | failed |",
            "|---|---|---|---|",
        ]
        for row in conditioning["by_target"]:
            lines.append(
                f"| {row['target']:.4g} | {_cell(row['mean_absolute_error'])} | {row['predicted']} | {row['failed']} |"
            )
    constrained = report.get("constrained_design")
    if constrained:
        lines += [
            "",
            "## Design within chemical systems",
            "",
            f"{constrained[0]['n']} samples per system, the sampler restricted to the system's elements and "
            "conditioned on the least property among the training structures made only of them (the "
            "report's target where there are none); p5: those structures' 5th percentile.",
            "",
            "| system | target | training structures (min / p5) | valid | only its elements | all its elements "
            "| novel (of valid) | distinct valid formulas | SR5 | at or below p5 | median predicted |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in constrained:
            unknown = f" (not in the model's vocabulary: {', '.join(row['unknown_to_model'])})" \
                if row["unknown_to_model"] else ""
            inside = row["training_in_system"]
            reference = "none" if inside is None else \
                f"{inside['count']} ({inside['minimum']:.4g} / {inside['p5']:.4g})"
            lines.append(
                f"| {row['system']}{unknown} | {row['target']:.4g} | {reference} | {row['valid']:.2f} | "
                f"{row['only_system_elements']:.2f} | {row['every_system_element']:.2f} | "
                f"{_cell(row['novel_of_valid'])} | {row['distinct_valid_formulas']} | {row['sr5']:.2f} | "
                f"{_cell(row['at_or_below_system_p5'])} | {_cell(row['median_predicted'])} |"
            )
    provenance = report["provenance"]
    relaxed = report.get("relaxation")
    if relaxed:
        moved = relaxed["median_rms_displacement"]
        lines += [
            "",
            "## Relaxation of the SR5 successes",
            "",
            f"{relaxed['relaxed']} SR5 successes relaxed ({relaxed['potential']}): "
            f"{relaxed['still_sr5_success_by_oracle']:.3f} are still SR5 successes by the oracle on the relaxed "
            f"structure"
            + ("" if relaxed.get("still_sr5_success_by_chgnet_formation_energy") is None else
               f", {relaxed['still_sr5_success_by_chgnet_formation_energy']:.3f} by CHGNet's formation energy")
            + f"; {relaxed['converged']:.3f} converged, {relaxed['failed']} could not be evaluated, "
            f"{relaxed['no_match']:.3f} no longer match their generated structure; median RMS displacement "
            f"{'n/a' if moved is None else f'{moved:.3f}'}, median energy drop "
            f"{relaxed['median_energy_drop_ev_per_atom']} eV/atom, "
            f"{relaxed['seconds_per_structure']:.1f} s per structure.",
        ]
    lines += [
        "",
        "## Provenance",
        "",
        f"- Checkpoint `{provenance['checkpoint']}`, sha256 `{provenance['checkpoint_sha256']}`.",
        f"- n = {report['n']}, seed {provenance['settings']['seed']}, "
        f"{provenance['sampling_steps']} sampling steps ({provenance.get('sampler', 'paper')} sampler), guidance "
        f"{provenance['settings']['guidance']}, atom counts "
        f"{ATOM_COUNT_SOURCES[provenance['settings'].get('atom_counts', 'training')]}, species step "
        f"{SPECIES_STEPS[provenance['settings'].get('charge_balance', False)]}, device {provenance['device']}.",
        "- Wall time (s): " + ", ".join(f"{k} {v}" for k, v in provenance["wall_time_s"].items()) + ".",
    ]
    if report["training_split_note"]:
        lines.append(f"- Note: {report['training_split_note']} (data/README.md).")
    return "\n".join(lines) + "\n"

