"""The `xtaldiff` command. Heavy imports live inside the commands so that `--help` is instant."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from xtaldiff.datasets import DatasetName
from xtaldiff.design_params import ATOM_COUNTS_CHOICES
from xtaldiff.samplers import SAMPLER_CHOICES

app = typer.Typer(
    help="Generative inverse design of crystals with diffusion transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]", which Rich would read as a markup tag and drop
)


class Conditioning(StrEnum):
    cdi = "cdi"
    cds = "cds"


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def user_errors():
    """Errors a user can fix become one line on stderr and exit code 2, never a traceback."""
    from model.checkpoint import CheckpointError
    from model.data import DatasetError
    from model.relax import RelaxationUnavailable
    from model.sampling import DesignError

    try:
        yield
    except (CheckpointError, DatasetError, DesignError, RelaxationUnavailable, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted") from None


def main() -> None:
    """Console entry point: a usage error prints one line, not a box."""
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's click: bad option values, unknown commands
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"error: {' '.join(message.split())}", err=True)
        code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
def train(
    dataset: Annotated[DatasetName, typer.Option(help="Benchmark set to train on.")],
    cond: Annotated[
        Conditioning, typer.Option(help="CDI: condition at the initial embedding; CDS: in every block.")
    ] = Conditioning.cdi,
    epochs: Annotated[int, typer.Option(min=1)] = 100,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint path [default: checkpoints/<dataset>_<cond>.safetensors].")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the state in --state-dir, or warm-start from --out if there is none.")
    ] = False,
    state_dir: Annotated[
        Path | None, typer.Option(help="Resume state folder [default: ~/.cache/xtaldiff/runs].")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after the epoch that crosses this wall time.")] = None,
    lr: Annotated[float, typer.Option(min=0, help="Peak learning rate, after the warm-up.")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(min=1)] = 1000,
    eval_every: Annotated[int, typer.Option(min=1, help="Validate and write the checkpoint every N epochs.")] = 1,
    seed: int = 0,
    blocks: Annotated[int, typer.Option(min=1, help="Transformer blocks (paper: 6).")] = 6,
    d_model: Annotated[int, typer.Option(min=8, help="Width d (paper: 128).")] = 128,
    freqs: Annotated[int, typer.Option(min=1, help="Fourier frequencies of psi_FT.")] = 32,
    pair_per_block: Annotated[
        bool, typer.Option(help="Give every block its own relative-position MLP instead of one shared.")
    ] = False,
) -> None:
    """Train a conditional diffusion model; the checkpoint is rewritten every --eval-every epochs.

    SIGTERM (a batch scheduler's notice) or Ctrl-C ends the run after the current epoch, with the
    checkpoint and its resume state written; a second Ctrl-C stops at once."""
    from model.training import ResumeError, TrainConfig, default_state_dir
    from model.training import train as run_training

    out = out or Path("checkpoints") / f"{dataset.value}_{cond.value}.safetensors"
    config = TrainConfig(
        dataset=dataset.value, conditioning=cond.value, epochs=epochs, batch_size=batch_size, lr=lr,
        warmup_steps=warmup_steps, eval_every=eval_every, seed=seed, max_minutes=max_minutes,
        architecture={"num_blocks": blocks, "d_model": d_model, "num_freqs": freqs, "pair_per_block": pair_per_block},
    )
    stop = threading.Event()

    def stop_after_epoch(signum: int, _frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        typer.echo(f"\n{signal.Signals(signum).name}: stopping after this epoch, once the checkpoint and its "
                   "resume state are written (Ctrl-C again to stop now)", err=True)

    handlers = {sig: signal.signal(sig, stop_after_epoch) for sig in (signal.SIGINT, signal.SIGTERM)}
    with user_errors():
        try:
            record = run_training(config, out, resume=resume, state_dir=state_dir or default_state_dir(),
                                  log=lambda line: typer.echo(line, err=True), stop_requested=stop.is_set)
        except ResumeError as exc:
            raise fail(str(exc)) from None
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    typer.echo(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))


def parse_elements(text: str | None) -> list[str] | None:
    if text is None:
        return None
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    if not symbols:
        raise fail("--elements is empty; give symbols separated by commas, e.g. Li,Fe,O")
    return symbols


@app.command()
def design(
    checkpoint: Annotated[Path, typer.Option(help="A .safetensors checkpoint.")],
    out: Annotated[Path, typer.Option(help="Folder for the CIFs and summary.json.")],
    target: Annotated[
        float | None,
        typer.Option(help="Target property value, in the model's unit [default: the least in training, among the "
                     "training structures made only of --elements when they are given]."),
    ] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Number of structures.")] = 16,
    num_atoms: Annotated[
        int | None, typer.Option(help="Atoms per cell [default: drawn as --atom-counts says].")
    ] = None,
    atom_counts: Annotated[
        str | None, typer.Option(help=f"Where drawn atom counts come from: {ATOM_COUNTS_CHOICES} "
                                 "(xtaldiff.design_params) [default: near_target where the checkpoint records them].")
    ] = None,
    elements: Annotated[str | None, typer.Option(help="Allowed elements, e.g. Li,Fe,O.")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale (0: none) [default: the model's own].")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Reverse steps [default: the model's own, measured as good as T].")
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help=f"{SAMPLER_CHOICES} (xtaldiff.samplers) [default: the model's own].")
    ] = None,
    charge_balance: Annotated[
        bool | None, typer.Option(help="Change predicted species while sampling so that compositions pass SMACT's "
                                  "charge-neutrality test (model.charge_balance) [default: the model's own].")
    ] = None,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    relax: Annotated[
        bool, typer.Option(help="Also relax each structure with CHGNet; writes NNNN_<formula>_relaxed.cif beside it "
                           "and scores the relaxed structure as the generated one.")
    ] = False,
    max_fire_steps: Annotated[
        int | None, typer.Option(min=1, help="FIRE steps before a relaxation is kept as not converged "
                                 "[default: model.relax.MAX_STEPS, the service's default too].")
    ] = None,
    score: Annotated[
        bool, typer.Option(help="Check each structure's validity, predict its property with the oracle (for mp_20 "
                           "its distance to the dataset's hull) and match it against the dataset.")
    ] = True,
) -> None:
    """Design crystal structures for a target property; writes one CIF per structure and summary.json."""
    if target is not None and not math.isfinite(target):
        raise fail(f"--target must be a finite number, got {target}")
    if n < 1:
        raise fail(f"-n must be at least 1, got {n}")
    import time

    from pymatgen.io.cif import CifWriter
    from tqdm import tqdm

    from model.checkpoint import load_model
    from model.sampling import allowed_class_mask
    from model.sampling import design as run_design
    from worker.scoring import SCORE_COLUMNS, mark_known
    from worker.scoring import relax as relax_structures
    from worker.scoring import score as score_structures
    from xtaldiff.training_systems import NoDefaultTarget, default_target, target_note

    with user_errors():
        trained = load_model(checkpoint)
        allowed = parse_elements(elements)
        allowed_class_mask(trained, allowed)  # bad symbols are refused before a default target is sought
        if target is None:
            try:
                target, note = default_target(trained.dataset, allowed, trained.meta.property.min)
            except NoDefaultTarget as error:
                raise fail(str(error)) from None
        else:
            note = target_note(trained.dataset, allowed, target)
        if note:
            typer.echo(note, err=True)
        guidance = trained.meta.default_guidance if guidance is None else guidance
        steps = trained.meta.default_steps if steps is None else steps
        sampler = trained.meta.default_sampler if sampler is None else sampler
        charge_balance = trained.meta.default_charge_balance if charge_balance is None else charge_balance
        if num_atoms is None:
            atom_counts = trained.meta.default_atom_counts if atom_counts is None else atom_counts
        bar = tqdm(total=1, unit="step", disable=not sys.stderr.isatty())

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        started = time.time()
        structures = run_design(
            trained, n=n, target=target, num_atoms=num_atoms, elements=allowed,
            guidance=guidance, steps=steps, sampler=sampler, atom_counts=atom_counts, charge_balance=charge_balance,
            seed=seed, batch_size=batch_size, progress=progress,
        )
        bar.close()
        scores = [dict.fromkeys(SCORE_COLUMNS) for _ in structures]
        if score:
            typer.echo("scoring: validity, the oracle's predictions, matches in the dataset", err=True)
            score_structures(structures, scores, dataset=trained.dataset, oracle=True)
            mark_known(structures, scores, dataset=trained.dataset)
        if relax:
            from model.relax import MAX_STEPS

            # The service's relaxation step: the relaxed structure is checked and predicted too.
            bar = tqdm(total=len(structures), unit="structure", desc="relaxing", disable=not sys.stderr.isatty())
            relax_structures(structures, scores, dataset=trained.dataset, oracle=True, oracle_workers=1,
                             max_fire_steps=max_fire_steps or MAX_STEPS,
                             progress=lambda done, _: bar.update(done - bar.n))
            bar.close()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, structure in enumerate(structures):
        name = f"{i:04d}_{structure.composition.reduced_formula}.cif"
        CifWriter(structure).write_file(out / name)
        rows.append({
            "file": name, "formula": structure.composition.reduced_formula, "num_atoms": len(structure),
            "lattice_abc": list(structure.lattice.abc), "lattice_angles": list(structure.lattice.angles),
            "volume": structure.volume, **scores[i],
        })
        relaxed_cif = rows[-1].pop("relaxed_cif", None)
        if relaxed_cif is not None:
            rows[-1]["relaxation"]["file"] = name.replace(".cif", "_relaxed.cif")
            (out / rows[-1]["relaxation"]["file"]).write_text(relaxed_cif)
    summary = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": trained.sha256, "dataset": trained.dataset,
        "property": trained.meta.property.name, "unit": trained.meta.property.unit,
        "target": target, "n": n, "num_atoms": num_atoms, "atom_counts": None if num_atoms else atom_counts,
        "elements": allowed,
        "guidance": guidance, "steps": steps, "sampler": sampler, "charge_balance": charge_balance, "seed": seed,
        "device": str(trained.device), "wall_time_s": round(time.time() - started, 2), "structures": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"wrote {len(structures)} structures to {out}"
               + (": " + scored_summary(scores, target, trained.meta.property.unit, trained.dataset) if score else ""))


def scored_summary(scores: list[dict], target: float, unit: str, dataset: str) -> str:
    """What the scoring found, in one line: e.g. '6 valid (closest to the target: -2.41 eV/atom),
    8 predicted, 8 new to mp_20'."""
    valid = [row for row in scores if row["valid_structure"] and row["valid_composition"]]
    values = [row["predicted_property"] for row in valid if row["predicted_property"] is not None]
    closest = f" (closest to the target: {min(values, key=lambda v: abs(v - target)):.3g} {unit})" if values else ""
    predicted = sum(row["predicted_property"] is not None for row in scores)
    new = sum(row["novel"] is True for row in scores)
    return f"{len(valid)} valid{closest}, {predicted} predicted, {new} new to {dataset}"


@app.command()
def bench(
    datasets: Annotated[
        list[DatasetName] | None, typer.Option("--dataset", help="Sets to time [default: all].")
    ] = None,
    sample_n: Annotated[int, typer.Option(help="Structures sampled for the sampling benchmark.")] = 100,
    sample_steps: Annotated[int, typer.Option(help="Reverse steps for the sampling benchmark.")] = 1000,
    train_batches: Annotated[int, typer.Option(help="Training steps timed per set.")] = 10,
) -> None:
    """Print training steps/s and sampling structures/s per dataset shape as JSON."""
    from model.bench import run_benchmarks

    with user_errors():
        result = run_benchmarks([d.value for d in datasets or list(DatasetName)], sample_n, sample_steps, train_batches)
    typer.echo(json.dumps(result, indent=2))


def _service_settings(database_url: str | None, broker_url: str | None, data_dir: Path | None,
                      **more: object):
    """Settings from XTALDIFF_* variables, with the command's options taking precedence."""
    import os

    from pydantic import ValidationError

    from xtaldiff.settings import get_settings

    given = {"DATABASE_URL": database_url, "BROKER_URL": broker_url, "DATA_DIR": data_dir, **more}
    for name, value in given.items():
        if value is not None:
            os.environ[f"XTALDIFF_{name.upper()}"] = str(value)
    get_settings.cache_clear()
    try:
        return get_settings()
    except ValidationError as exc:
        raise fail(str(exc)) from None


DatabaseUrlOption = Annotated[str | None, typer.Option(
    help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [default: SQLite in data dir].")]
BrokerUrlOption = Annotated[str | None, typer.Option(
    help="Celery broker, e.g. redis://host:6379/0 [default: SQLite file in data dir, no server].")]
DataDirOption = Annotated[Path | None, typer.Option(help="Embedded database, broker, cache.")]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    database_url: DatabaseUrlOption = None,
    broker_url: BrokerUrlOption = None,
    data_dir: DataDirOption = None,
    embedded_worker: Annotated[bool | None, typer.Option(
        help="Run a Celery worker child and register checkpoints/ [default: on unless a "
        "broker URL is given].")] = None,
    migrate: Annotated[bool, typer.Option(help="Upgrade the schema before serving.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="API processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Start the HTTP API (embedded by default: SQLite, no broker server, worker inside)."""
    from xtaldiff.serve import serve as run_server

    settings = _service_settings(database_url, broker_url, data_dir, host=host, port=port)
    if embedded_worker is None:
        embedded_worker = settings.broker_url is None
    run_server(settings, embedded_worker=embedded_worker, migrate=migrate, workers=workers,
               log_level=log_level)


@app.command()
def worker(
    database_url: DatabaseUrlOption = None,
    broker_url: BrokerUrlOption = None,
    data_dir: DataDirOption = None,
    queues: Annotated[str, typer.Option(help="Queues to consume.")] = "gpu,default",
    concurrency: Annotated[int, typer.Option(min=1, help="Task processes (one per GPU).")] = 1,
    pool: Annotated[str, typer.Option(
        help="solo: tasks run in this process, which may start the oracle's helper processes "
        "(prefork's daemonic children may not).")] = "solo",
    beat: Annotated[bool, typer.Option(
        help="Also run the periodic re-enqueue of lost jobs (one per deployment).")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Run a Celery worker that executes design jobs and checkpoint validations."""
    import os

    from xtaldiff.serve import worker_command

    settings = _service_settings(database_url, broker_url, data_dir)
    command = worker_command(queues=queues, concurrency=concurrency, pool=pool, beat=beat,
                             loglevel=log_level)
    os.environ.update(settings.environ())
    os.execv(command[0], command)


from xtaldiff.cli_oracle import evaluate, predict, record_evaluation  # noqa: E402  (registered after the app exists)

app.command("predict")(predict)
app.command("evaluate")(evaluate)
app.command("record-evaluation")(record_evaluation)


@app.command()
def migrate(
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Upgrade the database schema and register the bundled checkpoints (checkpoints/)."""
    from xtaldiff.serve import prepare_database

    prepare_database(_service_settings(database_url, None, data_dir))
