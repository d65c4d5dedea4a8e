"""`xtaldiff evaluate`: sample a checkpoint, score the samples, write report.json and report.md.

The protocol is the paper's Table 1: condition on the minimum property value of the training
split (or a given target), generate n structures, predict every one with the oracle, and count
the fraction at or below the 5th/10th/15th training percentiles (CDVAE's hard-coded thresholds
for the headline, our training split's percentiles beside them). Invalid or unpredicted samples
fail. The conditioning error samples targets spread over the training range.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from model import metrics
from model.formation import FORMATION_DATASETS
from model.oracle import Oracle, Prediction
from model.report_markdown import render_markdown
from xtaldiff.datasets import DATASETS
from xtaldiff.samplers import DEFAULT_SAMPLER
from xtaldiff.summary import NEAR_HULL, distribution
from xtaldiff.training_systems import reference_of

CONDITIONING_QUANTILES = (5, 27.5, 50, 72.5, 95)  # targets spread over the training range


@dataclass(frozen=True)
class EvaluationSettings:
    """What `evaluate` was asked to do; recorded in the report."""

    checkpoint: str
    n: int = 1000
    target: float | None = None  # None: the training minimum (the paper's protocol)
    steps: int | None = None  # None: T (the paper's protocol), not the model's default_steps
    sampler: str | None = None  # None: model.diffusion.DEFAULT_SAMPLER
    atom_counts: str = "training"  # the paper's protocol; "near_target": xtaldiff.design_params.ATOM_COUNTS
    charge_balance: bool = False  # the paper's species step; True: model.charge_balance's
    guidance: float = 0.0
    seed: int = 0
    batch_size: int = 128
    conditioning_n: int = 100  # samples for the conditioning error (0: skip)
    systems: tuple[tuple[str, ...], ...] | None = None  # None: the dataset's design_systems
    system_n: int = 100  # samples per chemical system for element-constrained design (0: skip)
    relax_n: int = 0  # SR5 successes (the first, by index) relaxed with CHGNet (0: skip)
    workers: int = 2
    samples: str | None = None  # drawn elsewhere (scripts/gpu_train.py): a CSV(.gz) with a JSON sidecar


class SamplesError(ValueError):
    """A samples file that does not belong to the checkpoint or cannot be read."""


def samples_sidecar(path: Path) -> Path:
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    return path.with_name(name + ".json")


def write_samples(path: Path, structures: Sequence[Structure], drawn: dict) -> None:
    """A samples file and its sidecar `drawn` (checkpoint_sha256, n, seed, steps, guidance,
    target, device, sampling_s), for `evaluate --samples` on another machine. Structures are
    stored as pymatgen JSON: exact, and readable even where a collapsed cell has no valid CIF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "formula", "structure"])
        for i, structure in enumerate(structures):
            writer.writerow([i, structure.composition.reduced_formula, json.dumps(structure.as_dict())])
    samples_sidecar(path).write_text(json.dumps({**drawn, "n": len(structures)}, indent=2) + "\n")


def read_samples_settings(path: Path) -> dict:
    """The JSON sidecar of a samples file: checkpoint sha256, n, seed, steps, guidance, target, device."""
    path, sidecar = Path(path), samples_sidecar(Path(path))
    if not path.is_file() or not sidecar.is_file():
        raise SamplesError(f"--samples needs {path} and its sidecar {sidecar} (scripts/gpu_train.py writes both)")
    try:
        drawn = json.loads(sidecar.read_text())
        missing = [k for k in ("checkpoint_sha256", "n", "seed", "steps", "guidance", "target") if k not in drawn]
    except (json.JSONDecodeError, TypeError) as exc:
        raise SamplesError(f"{sidecar} is not a samples sidecar ({exc})") from exc
    if missing:
        raise SamplesError(f"{sidecar} lacks {missing}")
    return drawn


def read_samples(path: Path, checkpoint: Path) -> tuple[list[Structure], dict]:
    """Structures drawn elsewhere and how they were drawn; refuses another checkpoint's samples."""
    from model.checkpoint import names_these_weights

    drawn = read_samples_settings(path)
    if not names_these_weights(drawn, checkpoint):
        raise SamplesError(
            f"{path} was drawn from checkpoint {str(drawn.get('checkpoint_sha256'))[:12]}..., not {checkpoint}"
        )
    csv.field_size_limit(1 << 24)
    opener = gzip.open if path.suffix == ".gz" else open
    structures = []
    with opener(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                if "structure" in row:
                    structures.append(Structure.from_dict(json.loads(row["structure"])))
                else:
                    structures.append(Structure.from_str(row["cif"], fmt="cif"))
            except (ValueError, KeyError, TypeError) as exc:
                raise SamplesError(f"{path}, row {row.get('index')}: not a readable structure ({exc})") from exc
    if len(structures) != drawn["n"]:
        raise SamplesError(f"{path} holds {len(structures)} structures; its sidecar says {drawn['n']}")
    return structures, drawn


def training_structures(dataset: str) -> tuple[list[Structure], np.ndarray]:
    """The training split as Structures (for novelty) and its property values (for percentiles)."""
    from model.data import load_split

    arrays = load_split(dataset, "train")
    offsets = arrays.offsets
    structures = [
        Structure(
            Lattice(arrays.lattices[i]),
            arrays.atomic_numbers[offsets[i] : offsets[i + 1]],
            arrays.frac_coords[offsets[i] : offsets[i + 1]],
        )
        for i in range(len(arrays))
    ]
    return structures, arrays.properties


def score(
    structures: Sequence[Structure], oracle: Oracle, workers: int, progress: bool
) -> tuple[list[metrics.Validity], list[Prediction]]:
    """Validity and oracle prediction of every structure."""
    validities = [metrics.validity(structure) for structure in structures]
    predictions = oracle.predict(structures, workers=workers, progress=progress)
    return validities, predictions


def counted_values(validities: Sequence[metrics.Validity], predictions: Sequence[Prediction]) -> list[float | None]:
    """The predicted value where the structure is valid, else None (a failure)."""
    return [
        prediction.value if validity.valid else None
        for validity, prediction in zip(validities, predictions, strict=True)
    ]


def plausible_range(training_values: np.ndarray) -> tuple[float, float]:
    """One training range beyond the training extremes on either side.

    The oracle extrapolates freely on structures unlike its training data (perov_5 cells
    "predicted" at 30 eV), and such a value still counts as a success when it is low; values
    outside this range are flagged, and one success-rate variant counts them as failures.
    """
    low, high = float(training_values.min()), float(training_values.max())
    return low - (high - low), high + (high - low)


def _rates(values: Sequence[float], names=("SR5", "SR10", "SR15")) -> dict:
    return dict(zip(names, values, strict=True))


def success_rate_section(values: Sequence[float | None], dataset: str, training_values: np.ndarray) -> dict:
    """Table 1's rates (headline: all samples, CDVAE's thresholds) and the labelled variants."""
    cdvae_thresholds = DATASETS[dataset].cdvae_thresholds
    our_thresholds = metrics.training_thresholds(training_values)
    low, high = plausible_range(training_values)
    plausible = [v if v is not None and low <= v <= high else None for v in values]
    section = {
        "headline": "fraction of all samples at or below CDVAE's thresholds",
        "cdvae_thresholds": _rates(cdvae_thresholds),
        "training_thresholds": _rates(our_thresholds),
        "all_samples_cdvae_thresholds": _rates(metrics.success_rates(values, cdvae_thresholds)),
        "all_samples_training_thresholds": _rates(metrics.success_rates(values, our_thresholds)),
        "all_samples_cdvae_thresholds_implausible_fail": _rates(metrics.success_rates(plausible, cdvae_thresholds)),
    }
    if len(values) >= metrics.GROUP_SIZE:
        section["cdvae_grouped_best_of_10"] = _rates(metrics.grouped_success_rates(values, cdvae_thresholds))
    return section


def sample_rows(
    structures: Sequence[Structure], validities: Sequence[metrics.Validity], predictions: Sequence[Prediction]
) -> list[dict]:
    """One row per sample for samples.csv.gz: its checks, prediction and CIF."""
    return [
        {
            "index": i,
            "formula": structure.composition.reduced_formula,
            "num_atoms": len(structure),
            "predicted": prediction.value,
            "structural_valid": validity.structural,
            "compositional_valid": validity.compositional,
            "reason": "; ".join(r for r in (validity.reason, prediction.reason) if r) or None,
            "cif": structure.to(fmt="cif"),
        }
        for i, (structure, validity, prediction) in enumerate(zip(structures, validities, predictions, strict=True))
    ]


def run_evaluation(
    settings: EvaluationSettings, device: str | None = None, progress: bool = False
) -> tuple[dict, list[dict]]:
    """Sample, score and measure. Returns the report (JSON-ready) and one row per sample."""
    from model.checkpoint import load_model, weights_sha256
    from model.sampling import allowed_class_mask, design

    started = time.time()
    trained = load_model(settings.checkpoint, device=device)
    dataset = trained.meta.dataset
    prop = trained.meta.property
    training, training_values = training_structures(dataset)
    target = float(training_values.min()) if settings.target is None else settings.target
    steps = settings.steps or trained.schedule.config.timesteps
    sampler = settings.sampler or DEFAULT_SAMPLER
    systems = DATASETS[dataset].design_systems if settings.systems is None else settings.systems
    for system in systems:  # refuse a system the model cannot design in before the long sampling
        allowed_class_mask(trained, system)

    def sample(n: int, targets: float | list[float], seed: int,
               elements: Sequence[str] | None = None) -> list[Structure]:
        return design(
            trained,
            n=n,
            target=targets,
            elements=elements,
            guidance=settings.guidance,
            steps=steps,
            sampler=sampler,
            atom_counts=settings.atom_counts,
            charge_balance=settings.charge_balance,
            seed=seed,
            batch_size=settings.batch_size,
            progress=_step_bar(n) if progress else None,
        )

    sampling_started = time.time()
    sampled_on = str(trained.device)
    if settings.samples is None:
        structures = sample(settings.n, target, settings.seed)
        sampling_s = time.time() - sampling_started
    else:
        structures, drawn = read_samples(Path(settings.samples), Path(settings.checkpoint))
        if abs(drawn["target"] - target) > 1e-9:
            raise SamplesError(f"{settings.samples} was drawn for target {drawn['target']}, not {target}")
        sampling_s, sampled_on = drawn.get("sampling_s"), drawn.get("device", "unknown")
        sampler = drawn.get("sampler", "paper")  # files written before the sampler option drew with it

    oracle = Oracle.for_dataset(dataset)
    scoring_started = time.time()
    validities, predictions = score(structures, oracle, settings.workers, progress)
    values = counted_values(validities, predictions)
    scoring_s = time.time() - scoring_started

    success = success_rate_section(values, dataset, training_values)
    low, high = plausible_range(training_values)

    valid_structures = [s for s, v in zip(structures, validities, strict=True) if v.valid]
    metrics_started = time.time()
    unique = metrics.uniqueness(valid_structures)
    novel = metrics.novelty(valid_structures, training)
    successes = sr5_successes(structures, values, validities, novel.novel, DATASETS[dataset].cdvae_thresholds[0])
    stability = stability_report(structures, values, validities, unique, novel, dataset)
    metrics_s = time.time() - metrics_started

    relaxation = None
    relax_started = time.time()
    if settings.relax_n > 0:
        threshold = DATASETS[dataset].cdvae_thresholds[0]
        chosen = [i for i, value in enumerate(values) if value is not None and value <= threshold][: settings.relax_n]
        relaxation = relaxation_report([structures[i] for i in chosen], oracle, threshold, settings.workers,
                                       dataset)
    relax_s = time.time() - relax_started

    conditioning = None
    conditioning_started = time.time()
    if settings.conditioning_n > 0:
        conditioning = conditioning_report(
            settings, oracle, training_values, lambda n, t: sample(n, t, settings.seed + 1)
        )
    conditioning_s = time.time() - conditioning_started

    constrained = None
    constrained_started = time.time()
    if settings.system_n > 0 and systems:
        constrained = constrained_design_report(
            systems, lambda system, at: sample(settings.system_n, at, settings.seed + 2, system), trained.meta.elements,
            oracle, training, training_values, target, DATASETS[dataset].cdvae_thresholds[0], settings.workers,
        )
    constrained_s = time.time() - constrained_started

    predicted = [v for v in values if v is not None]
    unpredicted = [p for p in predictions if p.value is None]
    report = {
        "dataset": dataset,
        "conditioning": trained.meta.conditioning,
        "property": {"name": prop.name, "unit": prop.unit},
        "target": target,
        "target_is_training_minimum": settings.target is None,
        "n": settings.n,
        "success_rates": success,
        "validity": {
            "structural": float(np.mean([v.structural for v in validities])),
            "compositional": float(np.mean([v.compositional is True for v in validities])),
            "both": float(np.mean([v.valid for v in validities])),
        },
        "oracle_failures": len(unpredicted),
        "uniqueness": {
            "fraction_of_valid": unique.fraction,
            "unique": unique.unique,
            "valid": len(valid_structures),
            "queries_checked_against_nearest_only": unique.capped_queries,
        },
        "novelty": {
            "fraction_of_valid": novel.fraction,
            "novel": sum(novel.novel),
            "queries_checked_against_nearest_only": novel.capped_queries,
            "nearest_candidates": metrics.MAX_CANDIDATES,
        },
        "sr5_successes": successes,
        "stability": stability,
        "predicted_distribution_of_valid": distribution(predicted, (0.05, 0.25, 0.5, 0.75, 0.95))
        if predicted else {"count": 0},
        "implausible_predictions": {
            "count": sum(not low <= v <= high for v in predicted),
            "plausible_range": [low, high],
        },
        "conditioning_error": conditioning,
        "constrained_design": constrained,
        "relaxation": relaxation,
        "training_split_note": DATASETS[dataset].split_note,
        "provenance": {
            "checkpoint": str(settings.checkpoint),
            "checkpoint_sha256": trained.sha256,
            "weights_sha256": weights_sha256(Path(settings.checkpoint)),
            "settings": asdict(settings),
            "sampling_steps": steps,
            "sampler": sampler,
            "device": sampled_on,
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "wall_time_s": {
                "sampling": None if sampling_s is None else round(sampling_s, 1),
                "validity_and_oracle": round(scoring_s, 1),
                "uniqueness_and_novelty": round(metrics_s, 1),
                "conditioning_error": round(conditioning_s, 1),
                "constrained_design": round(constrained_s, 1),
                "relaxation": round(relax_s, 1),
                "total": round(time.time() - started, 1),
            },
        },
    }
    return report, sample_rows(structures, validities, predictions)


def sr5_successes(structures, values, validities, novel_of_valid: list[bool], threshold: float) -> dict:
    """What a scientist gets from the SR5 successes: how many distinct, unique and novel ones."""
    novel_flags = iter(novel_of_valid)
    novel_all = [next(novel_flags) if v.valid else False for v in validities]
    chosen = [i for i, value in enumerate(values) if value is not None and value <= threshold]
    found = [structures[i] for i in chosen]
    unique = metrics.uniqueness(found)
    unique_ids = set(unique.first_match)
    groups = Counter(f"{symbol} ({number})" for symbol, number in map(metrics.space_group, found))
    return {
        "count": len(chosen),
        "distinct_formulas": len({s.composition.reduced_formula for s in found}),
        "unique": unique.unique,
        "novel": sum(novel_all[i] for i in chosen),
        "unique_and_novel": sum(novel_all[chosen[j]] for j in unique_ids),
        "per_samples": len(structures),
        "space_groups": dict(groups.most_common()),
        "space_group_symprec": metrics.SYMPREC,
    }


def stability_report(structures, values, validities, unique: metrics.Uniqueness, novel: metrics.Novelty,
                     dataset: str) -> dict | None:
    """For a formation-energy dataset: the samples predicted within NEAR_HULL of the hull of the dataset's
    compounds (model.stability), and those that are also unique and novel (the S.U.N. rate), per sample."""
    if dataset not in FORMATION_DATASETS:
        return None
    # Imported here: pymatgen's phase diagram needs plotly, which a GPU machine that only draws samples lacks.
    from model.stability import dataset_hull

    hull = dataset_hull(dataset)
    valid = [i for i, validity in enumerate(validities) if validity.valid]
    near = [values[i] is not None and hull.e_above_hull(structures[i].composition, values[i]) <= NEAR_HULL
            for i in valid]
    sun = sum(near[j] and unique.first_match[j] == j and novel.novel[j] for j in range(len(valid)))
    return {"near_hull_ev_per_atom": NEAR_HULL, "near_hull": sum(near) / len(structures),
            "stable_unique_novel": sun / len(structures), "hull": "the dataset's compounds, all splits"}


def relaxation_report(successes: Sequence[Structure], oracle: Oracle, threshold: float, workers: int,
                      dataset: str) -> dict:
    """Relax SR5 successes with CHGNet; how many the oracle still counts as successes (and, for
    a formation-energy set, CHGNet's own formation energy), how far they moved, how their
    energy fell."""
    from model.formation import FORMATION_DATASETS, elemental_references, formation_energy
    from model.relax import CHGNET_VERSION, FMAX, MAX_STEPS, relax_all

    started = time.time()
    results = relax_all(successes)
    seconds = time.time() - started
    relaxed = [r.relaxed for r in results if r.relaxed is not None]
    validities, predictions = score(relaxed, oracle, workers, progress=False) if relaxed else ([], [])
    after = iter(counted_values(validities, predictions))
    still = [r.relaxed is not None and (v := next(after)) is not None and v <= threshold for r in results]
    moved = [r.rms_displacement for r in results if r.rms_displacement is not None]
    drops = [r.energy_before - r.energy_after for r in results if r.energy_after is not None]
    count = max(1, len(results))
    by_chgnet = None
    if dataset in FORMATION_DATASETS:
        references = elemental_references(dataset)
        energies = [formation_energy(r.relaxed.composition, r.energy_after, references)[0]
                    if r.relaxed is not None else None for r in results]
        by_chgnet = sum(e is not None and e <= threshold for e in energies) / count
    return {
        "potential": f"CHGNet {CHGNET_VERSION}, FIRE on the cell filter, fmax {FMAX} eV/A, at most {MAX_STEPS} steps",
        "relaxed": len(results),
        "still_sr5_success_by_oracle": sum(still) / count,
        "still_sr5_success_by_chgnet_formation_energy": by_chgnet,
        "converged": sum(r.converged for r in results) / count,
        "failed": sum(r.error is not None for r in results),
        "failures": sorted({r.error for r in results if r.error is not None})[:10],
        "no_match": sum(r.relaxed is not None and r.rms_displacement is None for r in results) / count,
        "median_rms_displacement": float(np.median(moved)) if moved else None,
        "median_energy_drop_ev_per_atom": float(np.median(drops)) if drops else None,
        "median_steps": float(np.median([r.steps for r in results])) if results else None,
        "seconds_per_structure": seconds / count,
    }


def system_reference(training: Sequence[Structure], training_values: np.ndarray, system: Sequence[str]) -> dict | None:
    """The training structures made only of the system's elements: how many, and their property's
    minimum, 5th percentile and median (None when there are none)."""
    element_sets = [frozenset(element.symbol for element in structure.composition.elements) for structure in training]
    reference = reference_of(element_sets, map(float, training_values), system)
    return None if reference is None else reference.as_json()


def constrained_design_report(systems, sample, vocabulary, oracle, training, training_values, target, threshold,
                              workers) -> list[dict]:
    """Design within each chemical system: how many samples are valid, keep to the system's elements
    (the sampler's mask should make that all), use every one of them, are novel, and reach SR5.

    The dataset's minimum lies outside most systems (mp_20's, -4.47 eV/atom, is a fluoride), so a
    system's samples are conditioned on the least property among the training structures inside it,
    and measured against their 5th percentile as well (`at_or_below_system_p5`); a system with no
    training structure inside it keeps the report's target. sample(system, target) draws them."""
    rows = []
    for system in systems:
        reference = system_reference(training, training_values, system)
        system_target = target if reference is None else reference["minimum"]
        structures = sample(system, system_target)
        validities, predictions = score(structures, oracle, workers, progress=False)
        values = counted_values(validities, predictions)
        allowed = set(system)
        present = [{element.symbol for element in structure.composition.elements} for structure in structures]
        valid = [structure for structure, validity in zip(structures, validities, strict=True) if validity.valid]
        predicted = [v for v in values if v is not None]
        rows.append({
            "system": "-".join(system),
            "unknown_to_model": [element for element in system if element not in vocabulary],
            "n": len(structures),
            "target": system_target,
            "training_in_system": reference,
            "valid": float(np.mean([v.valid for v in validities])),
            "only_system_elements": float(np.mean([elements <= allowed for elements in present])),
            "every_system_element": float(np.mean([elements == allowed for elements in present])),
            "novel_of_valid": metrics.novelty(valid, training).fraction if valid else None,
            "distinct_valid_formulas": len({structure.composition.reduced_formula for structure in valid}),
            "sr5": float(np.mean([v is not None and v <= threshold for v in values])),
            "at_or_below_system_p5": None if reference is None
            else float(np.mean([v is not None and v <= reference["p5"] for v in values])),
            "median_predicted": float(np.median(predicted)) if predicted else None,
        })
    return rows


def conditioning_report(settings, oracle, training_values, sample) -> dict:
    """Mean |target - predicted| for targets at training quantiles, samples split evenly."""
    targets = [float(np.percentile(training_values, q)) for q in CONDITIONING_QUANTILES]
    per_target = max(1, settings.conditioning_n // len(targets))
    repeated = [t for t in targets for _ in range(per_target)]
    structures = sample(len(repeated), repeated)
    validities, predictions = score(structures, oracle, settings.workers, progress=False)
    values = counted_values(validities, predictions)
    overall = metrics.conditioning_error(repeated, values)
    by_target = []
    for k, target in enumerate(targets):
        chunk = slice(k * per_target, (k + 1) * per_target)
        error = metrics.conditioning_error(repeated[chunk], values[chunk])
        by_target.append({"target": target, **asdict(error)})
    return {
        "targets_at_training_percentiles": list(CONDITIONING_QUANTILES),
        "samples_per_target": per_target,
        **asdict(overall),
        "by_target": by_target,
    }


def _step_bar(n: int):
    from tqdm import tqdm

    bar = tqdm(desc=f"sampling {n}", unit="step", total=1)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def write_report(report: dict, rows: list[dict], out_dir: Path) -> None:
    """report.json, report.md and samples.csv.gz (one row per sample, with its CIF)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["index"])
    writer.writeheader()
    writer.writerows(rows)
    with gzip.open(out_dir / "samples.csv.gz", "wt") as handle:
        handle.write(buffer.getvalue())
