"""`xtaldiff predict` and `xtaldiff evaluate`: the property oracle and the paper's metrics.

Plain functions with Typer annotations, registered on the app in `xtaldiff.cli`. Heavy imports
stay inside them so that `xtaldiff --help` is instant. Errors a user can fix are one line on
stderr and exit code 2.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from xtaldiff.datasets import DatasetName
from xtaldiff.design_params import ATOM_COUNTS_CHOICES
from xtaldiff.samplers import DEFAULT_SAMPLER, SAMPLER_CHOICES


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def read_inputs(path: Path) -> list[tuple[str, object]]:
    """(id, Structure or the reason it could not be read) for every structure in ``path``.

    ``path`` is a CSV (optionally .gz) with a ``cif`` column, a CIF file, or a folder of CIFs.
    A malformed file as a whole raises ValueError; one bad entry of many becomes its reason.
    """
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif")
        if not files:
            raise ValueError(f"{path} holds no .cif files")
        return [(file.name, _parse_cif(file.read_text(errors="replace"))) for file in files]
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _read_csv(path)
    if name.endswith(".cif"):
        entries = _parse_cif_blocks(path)
        if len(entries) == 1:
            return [(path.name, entries[0])]
        return [(f"{path.name}#{k}", entry) for k, entry in enumerate(entries)]
    raise ValueError(f"{path}: expected a .cif file, a .csv/.csv.gz with a 'cif' column or a folder")


def _read_csv(path: Path) -> list[tuple[str, object]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    csv.field_size_limit(1 << 24)  # a CIF of a few hundred atoms exceeds csv's 128 kB default
    try:
        with opener(path, "rt", newline="") as handle:
            reader = csv.DictReader(handle)
            if "cif" not in (reader.fieldnames or []):
                raise ValueError(f"{path} has no 'cif' column (columns: {reader.fieldnames})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable CSV ({error})") from error
    id_column = next((c for c in ("material_id", "id") if c in (reader.fieldnames or [])), None)
    return [(row[id_column] if id_column else str(i), _parse_cif(row["cif"])) for i, row in enumerate(rows)]


def _parse_cif(text: str) -> object:
    """The structure in a CIF string, or the reason it is unusable (a str)."""
    import warnings

    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns on every snapped coordinate
            return Structure.from_str(text, fmt="cif")
    except Exception as error:  # pymatgen raises many types on malformed CIFs
        return f"not a readable CIF ({type(error).__name__}: {error})".splitlines()[0]


def _parse_cif_blocks(path: Path) -> list[object]:
    import warnings

    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser(path).parse_structures(primitive=False)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a readable CIF ({message})") from error
    if not structures:
        raise ValueError(f"{path} contains no structure")
    return structures


def predict(
    dataset: Annotated[DatasetName, typer.Option(help="Which CDVAE predictor to use.")],
    input_path: Annotated[Path, typer.Option("--input", help="CSV(.gz) with a 'cif' column, a CIF, or a folder.")],
    out: Annotated[Path | None, typer.Option(help="Output CSV (default: stdout).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="CrystalNN worker processes.")] = 2,
    timeout: Annotated[float, typer.Option(min=0.1, help="CrystalNN seconds per structure.")] = 60,
) -> None:
    """Predict the dataset's property for every structure with CDVAE's DimeNet++ oracle."""
    from model.metrics import validity
    from model.oracle import Oracle, OracleUnavailable
    from xtaldiff.datasets import DATASETS

    try:
        entries = read_inputs(input_path)
    except ValueError as error:
        raise _fail(str(error)) from None
    structures = [entry for _, entry in entries if not isinstance(entry, str)]
    try:
        oracle = Oracle.for_dataset(dataset.value)
    except OracleUnavailable as error:
        raise _fail(str(error)) from None
    predictions = iter(oracle.predict(structures, workers=workers, timeout_s=timeout, progress=len(structures) > 20))

    spec = DATASETS[dataset.value]
    value_column = f"predicted_{spec.property_name}_{spec.unit.replace('/', '_per_')}"
    columns = ["id", "formula", "num_atoms", value_column, "structural_valid", "compositional_valid", "reason"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    predicted = 0
    for identifier, entry in entries:
        if isinstance(entry, str):
            writer.writerow({"id": identifier, "reason": entry})
            continue
        prediction = next(predictions)
        checks = validity(entry)
        predicted += prediction.value is not None
        reasons = [r for r in (prediction.reason, checks.reason) if r]
        writer.writerow(
            {
                "id": identifier,
                "formula": entry.composition.reduced_formula,
                "num_atoms": len(entry),
                value_column: "" if prediction.value is None else f"{prediction.value:.6f}",
                "structural_valid": checks.structural,
                "compositional_valid": checks.compositional,
                "reason": "; ".join(reasons),
            }
        )
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(buffer.getvalue())
    typer.echo(f"predicted {predicted} of {len(entries)} structures", err=True)


def parse_target(text: str) -> float | None:
    """'min' -> None (the training minimum); otherwise a finite number."""
    if text.strip().lower() == "min":
        return None
    try:
        value = float(text)
    except ValueError:
        raise _fail(f"--target must be 'min' or a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _fail(f"--target must be finite, got {text!r}")
    return value


def parse_system(text: str) -> tuple[str, ...]:
    """'Li-Fe-P-O' -> ('Li', 'Fe', 'P', 'O'), every part an element symbol."""
    from pymatgen.core import Element

    elements = tuple(part.strip() for part in text.split("-"))
    bad = [part for part in elements if not Element.is_valid_symbol(part)]
    if bad or len(set(elements)) != len(elements):
        raise _fail(f"--system must be distinct element symbols joined by '-' (e.g. Li-Fe-P-O), got {text!r}")
    return elements


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A .safetensors checkpoint.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.md, samples.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Samples for the success rate.")] = 1000,
    target: Annotated[str, typer.Option(help="'min' (training minimum, the paper's protocol) or a value.")] = "min",
    steps: Annotated[int | None, typer.Option(min=1, help="Reverse steps [default: T].")] = None,
    sampler: Annotated[
        str | None,
        typer.Option(help=f"{SAMPLER_CHOICES} (xtaldiff.samplers) "
                     f"[default: {DEFAULT_SAMPLER}, the paper's at T steps]."),
    ] = None,
    atom_counts: Annotated[
        str, typer.Option(help=f"Where atom counts come from: {ATOM_COUNTS_CHOICES} (xtaldiff.design_params).")
    ] = "training",
    charge_balance: Annotated[
        bool, typer.Option(help="Change predicted species while sampling so that compositions pass SMACT "
                           "(model.charge_balance) [default: the paper's species step].")
    ] = False,
    guidance: Annotated[float, typer.Option(min=0, help="Classifier-free guidance scale.")] = 0.0,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    cond_n: Annotated[int, typer.Option(min=0, help="Samples for the conditioning error (0: skip).")] = 100,
    system: Annotated[
        list[str] | None,
        typer.Option(help="A chemical system to design within, elements joined by '-' (Li-Fe-P-O), conditioned "
                     "on the least property among the training structures made only of its elements; repeatable "
                     "[default: the dataset's, mp_20: Li-Fe-P-O, Na-Mn-O, Li-Co-O].")
    ] = None,
    system_n: Annotated[int, typer.Option(min=0, help="Samples per chemical system (0: skip).")] = 100,
    relax: Annotated[
        int, typer.Option(min=0, help="Relax this many SR5 successes with CHGNet and count how many survive (0: skip).")
    ] = 0,
    workers: Annotated[int, typer.Option(min=1, help="CrystalNN worker processes.")] = 2,
    samples: Annotated[
        Path | None,
        typer.Option(help="Score samples drawn elsewhere (scripts/gpu_train.py): n, steps, guidance and seed "
                     "are then those of its JSON sidecar."),
    ] = None,
) -> None:
    """Sample a checkpoint, score it with the oracle and write the paper's Table 1 report."""
    target_value = parse_target(target)
    systems = None if system is None else tuple(parse_system(text) for text in system)
    from model.report import SamplesError, read_samples_settings

    if samples is not None:
        try:
            drawn = read_samples_settings(samples)
        except SamplesError as error:
            raise _fail(str(error)) from None
        n, steps, guidance, seed = drawn["n"], drawn["steps"], drawn["guidance"], drawn["seed"]
        sampler = drawn.get("sampler", "paper")
        atom_counts = drawn.get("atom_counts", "training")
        charge_balance = drawn.get("charge_balance", False)
    from model.checkpoint import CheckpointError
    from model.data import DatasetError
    from model.oracle import OracleUnavailable
    from model.relax import RelaxationUnavailable
    from model.report import EvaluationSettings, run_evaluation, write_report
    from model.sampling import DesignError

    settings = EvaluationSettings(
        checkpoint=str(checkpoint),
        n=n,
        target=target_value,
        steps=steps,
        sampler=sampler,
        atom_counts=atom_counts,
        charge_balance=charge_balance,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        conditioning_n=cond_n,
        systems=systems,
        system_n=system_n,
        relax_n=relax,
        workers=workers,
        samples=None if samples is None else str(samples),
    )
    try:
        report, rows = run_evaluation(settings, progress=sys.stderr.isatty())
    except (CheckpointError, DatasetError, DesignError, OracleUnavailable, RelaxationUnavailable,
            SamplesError) as error:
        raise _fail(str(error)) from None
    write_report(report, rows, out)
    headline = report["success_rates"]["all_samples_cdvae_thresholds"]
    typer.echo(
        f"wrote {out / 'report.md'}: SR5 {headline['SR5']:.3f}, SR10 {headline['SR10']:.3f}, "
        f"SR15 {headline['SR15']:.3f} ({n} samples)"
    )


def record_evaluation(
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint the reports evaluated; its header is updated.")],
    reports: Annotated[
        list[Path],
        typer.Argument(help="`evaluate` output folders: a guidance sweep at T steps, and reports at fewer steps "
                       "(a steps curve) at the default guidance."),
    ],
    default_guidance: Annotated[
        float | None,
        typer.Option(help="Guidance to run at when a request names none [default: the highest SR5 that keeps "
                     "the dataset's diversity floor: perov_5 200 distinct SR5 formulas per 1000 samples, mp_20 "
                     "half of w = 0's distinct formulas, carbon_24 half of w = 0's unique structures]."),
    ] = None,
) -> None:
    """Store evaluation figures, the default guidance, steps and species step in a checkpoint's header
    (GET /models shows them); prints the steps curve. Charge-balanced sampling becomes the default
    where a charge-balanced report at the default guidance and steps matches or beats its plain twin."""
    import json

    from model.checkpoint import (
        CheckpointError,
        file_sha256,
        names_these_weights,
        read_metadata,
        rewrite_metadata,
        weights_sha256,
    )
    from model.evaluation_record import (
        charge_balanced,
        choose_charge_balance,
        choose_default_guidance,
        choose_default_sampling,
        evaluation_record,
        is_papers_protocol,
        report_sampler,
        steps_curve_table,
    )

    try:
        checked = read_metadata(checkpoint)
    except CheckpointError as error:
        raise _fail(str(error)) from None
    timesteps = checked.timesteps
    loaded, seen = [], {}
    for folder in reports:
        path = folder / "report.json" if folder.is_dir() else folder
        try:
            report = json.loads(path.read_text())
            provenance = report["provenance"]
            key = (provenance["settings"]["guidance"], provenance["sampling_steps"], report_sampler(report, timesteps),
                   charge_balanced(report))
            missing = [k for k in ("n", "success_rates", "sr5_successes") if k not in report]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise _fail(f"{path} is not an `xtaldiff evaluate` report.json ({error})") from None
        if missing:
            raise _fail(f"{path} lacks {missing}: evaluate again with this version of xtaldiff")
        if provenance["settings"].get("atom_counts", "training") != "training":
            raise _fail(f"{path} drew atom counts near the target; the defaults are chosen under the paper's "
                        "protocol: give reports evaluated without --atom-counts")
        if not names_these_weights(provenance, checkpoint):
            raise _fail(f"{path} evaluated other weights than those of {checkpoint}")
        if key in seen:
            raise _fail(f"{path} and {seen[key]} both measure guidance {key[0]:g} at {key[1]} steps "
                        f"({key[2]} sampler{', charge-balanced' if key[3] else ''}); give one of them")
        seen[key] = path
        loaded.append(report)
    if len({(r["n"], r["provenance"]["settings"]["seed"]) for r in loaded}) > 1:
        raise _fail("the reports differ in n or seed; compare them under one protocol")
    full = [r for r in loaded if is_papers_protocol(r, timesteps)]
    if not full:
        raise _fail(f"no report at T = {timesteps} steps with the paper's sampler (its protocol): "
                    "evaluate without --steps and --sampler first")
    scales = sorted(r["provenance"]["settings"]["guidance"] for r in full)
    if default_guidance is None:
        try:
            default_guidance = choose_default_guidance(full)
        except ValueError as error:
            raise _fail(str(error)) from None
    if default_guidance not in scales:
        raise _fail(f"--default-guidance {default_guidance} has no report at {timesteps} steps; measured: {scales}")
    default_sampler, default_steps = choose_default_sampling(loaded, default_guidance, timesteps)
    default_charge_balance = choose_charge_balance(loaded, default_guidance, default_sampler, default_steps, timesteps)
    meta = checked.as_dict()
    meta["metrics"] = evaluation_record(loaded, default_guidance, default_sampler, default_steps,
                                        default_charge_balance, timesteps)
    meta["sampling"].update(default_guidance=default_guidance, default_sampler=default_sampler,
                            default_steps=default_steps, default_charge_balance=default_charge_balance)
    rewrite_metadata(checkpoint, meta)
    # The header changed, so the file's sha256 did: each report says which file it now backs.
    backs = {"checkpoint": checkpoint.name, "sha256": file_sha256(checkpoint),
             "weights_sha256": weights_sha256(checkpoint),
             "evaluated_sha256": meta["metrics"]["evaluated_sha256"],
             "note": "record-evaluation rewrote the header; the weights are the ones evaluated"}
    for folder in reports:
        (folder if folder.is_dir() else folder.parent).joinpath("checkpoint.json").write_text(
            json.dumps(backs, indent=2) + "\n")
    at = meta["metrics"]["at_default_guidance"]
    typer.echo(f"{checkpoint}: default guidance {default_guidance:g} (SR5 {at['SR5']:.3f}, "
               f"{at['sr5_distinct_formulas']} distinct SR5 formulas, {at['sr5_unique']} unique structures in "
               f"{meta['metrics']['n']} samples), "
               f"default steps {default_steps} ({default_sampler} sampler"
               f"{', charge-balanced' if default_charge_balance else ''})")
    typer.echo(steps_curve_table(meta["metrics"]["steps_curve"]))
