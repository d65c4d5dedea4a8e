"""Train several models side by side on one GPU, then draw their evaluation samples there.

One command for a lent GPU machine with no network (see scripts/gpu_run.sh for the set-up):

    python3 scripts/gpu_train.py --out OUT --minutes 6 \
        --run perov_5:cdi:400:1024 --run perov_5:cds:400:1024 --guidance 0,0.5,1,2

Each --run is dataset:conditioning:epochs:batch_size[:per-block], trained in its own process with
`--max-minutes`; checkpoints go to OUT/<dataset>_<cond>.safetensors (written every few epochs,
so a command cut off at its limit still leaves one) with the training curve beside it
(<name>.history.json: validation loss, LR and seconds per epoch against steps). The resume
state (15-21 MB a model) goes to --state-dir, outside OUT by default: the device tool brings
back only a few files of at most 16 MB. A run whose state or checkpoint is there resumes.
`--checkpoint PATH` (repeatable) adds a trained model to sample without training it. Then,
for each model, guidance scale and number of steps (`--steps 1000,250,100`; T alone by
default), n structures at the training minimum are sampled with `--sampler` (and
`--charge-balance`) and written as
samples/<model>_w<w>[_steps<k>][_<sampler>][_charge_balanced].csv.gz (the names of reports/' folders) with a JSON
sidecar (checkpoint sha256, seed, steps, sampler, device, seconds), packed into OUT/samples.tgz,
to be scored on the CPU with `xtaldiff evaluate --samples`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xtaldiff.samplers import DEFAULT_SAMPLER, SAMPLERS  # noqa: E402  (torch-free)


def parse_run(text: str) -> tuple[str, str, int, int, bool]:
    """dataset:cond:epochs:batch_size, with a fifth field `per-block` for --pair-per-block."""
    parts = text.split(":")
    try:
        if len(parts) not in (4, 5) or (len(parts) == 5 and parts[4] != "per-block"):
            raise ValueError
        return parts[0], parts[1], int(parts[2]), int(parts[3]), len(parts) == 5
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--run {text!r}: expected dataset:cond:epochs:batch_size[:per-block]") from None


def train_one(run: tuple, out_dir: Path, state_dir: Path, minutes: float, lr: float, warmup: int,
              eval_every: int) -> None:
    from model.training import TrainConfig, train

    dataset, cond, epochs, batch, per_block = run
    out = out_dir / f"{dataset}_{cond}.safetensors"
    config = TrainConfig(dataset=dataset, conditioning=cond, epochs=epochs, batch_size=batch, lr=lr,
                         warmup_steps=warmup, eval_every=eval_every, max_minutes=minutes,
                         architecture={"pair_per_block": True} if per_block else {})
    record = train(config, out, resume=out.exists(), state_dir=state_dir, show_progress=False)
    (out_dir / f"{out.stem}.history.json").write_text(json.dumps(record["history"], indent=1))
    print(json.dumps({"run": out.stem, **{k: v for k, v in record.items() if k != "history"}}), flush=True)


def sample_one(checkpoint: Path, model, guidance: float, n: int, steps: int | None, sampler: str,
               charge_balance: bool, seed: int, out_dir: Path) -> None:
    import torch

    from model.checkpoint import weights_sha256
    from model.report import write_samples
    from model.sampling import design

    target = model.meta.property.min
    timesteps = model.schedule.config.timesteps
    steps = steps or timesteps  # the paper's protocol, not the model's default
    started = time.time()
    structures = design(model, n=n, target=target, guidance=guidance, steps=steps, sampler=sampler,
                        atom_counts="training", charge_balance=charge_balance, seed=seed, batch_size=n)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - started
    name = (f"{checkpoint.stem}_w{guidance:g}" + (f"_steps{steps}" if steps != timesteps else "")
            + (f"_{sampler}" if sampler != DEFAULT_SAMPLER else "") + ("_charge_balanced" if charge_balance else ""))
    write_samples(out_dir / f"{name}.csv.gz", structures, {
        "checkpoint": checkpoint.name, "checkpoint_sha256": model.sha256,
        "weights_sha256": weights_sha256(checkpoint), "seed": seed,
        "steps": steps, "sampler": sampler, "atom_counts": "training", "charge_balance": charge_balance,
        "guidance": guidance, "target": target,
        "device": torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu",
        "sampling_s": round(seconds, 1),
    })
    print(f"{name}: {n} structures in {seconds:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", type=parse_run, action="append", default=[])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], help="sample only, no training")
    parser.add_argument("--minutes", type=float, default=0, help="training wall time per run")
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/xtaldiff-state"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--guidance", default="0", help="comma-separated guidance scales to sample at")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--steps", default="", help="comma-separated numbers of reverse steps (default: T)")
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=sorted(SAMPLERS))
    parser.add_argument("--charge-balance", action="store_true",
                        help="sample with model/charge_balance.py's species step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.run and not args.checkpoint:
        parser.error("give at least one --run or --checkpoint")
    guidance = [float(w) for w in args.guidance.split(",") if w.strip()]
    try:
        args.steps = [int(k) for k in args.steps.split(",") if k.strip()] or [None]
    except ValueError:
        parser.error(f"--steps {args.steps!r}: expected comma-separated whole numbers")
    args.out.mkdir(parents=True, exist_ok=True)

    context = multiprocessing.get_context("spawn")
    trainers = [context.Process(target=train_one, args=(run, args.out, args.state_dir, args.minutes, args.lr,
                                                        args.warmup_steps, args.eval_every))
                for run in args.run]
    for process in trainers:
        process.start()
    for process in trainers:
        process.join()
    checkpoints = [args.out / f"{run[0]}_{run[1]}.safetensors" for run in args.run] + args.checkpoint
    samplers = [
        context.Process(target=sample_checkpoint, args=(checkpoint, guidance, args))
        for checkpoint in checkpoints if checkpoint.exists()
    ]
    for process in samplers:
        process.start()
    for process in samplers:
        process.join()
    samples = args.out / "samples"
    if samples.is_dir():
        with tarfile.open(args.out / "samples.tgz", "w:gz") as archive:
            archive.add(samples, arcname="samples")
        shutil.rmtree(samples)
    failed = [p.exitcode for p in trainers + samplers if p.exitcode]
    sys.exit(1 if failed else 0)


def sample_checkpoint(checkpoint: Path, guidance: list[float], args: argparse.Namespace) -> None:
    from model.checkpoint import load_model

    model = load_model(checkpoint)
    for w in guidance:
        for steps in args.steps:
            sample_one(checkpoint, model, w, args.n, steps, args.sampler, args.charge_balance, args.seed,
                       args.out / "samples")


if __name__ == "__main__":
    main()
