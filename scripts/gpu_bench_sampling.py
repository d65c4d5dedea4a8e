"""Sampling throughput against batch size and execution mode, for the fast-sampling issue's GPU floor
(20,000 mp_20-shaped structures per minute at 1000 steps).

    python3 scripts/gpu_bench_sampling.py --out OUT --batch 1000,4000,10000 --steps 100 --full-steps 1000

Atom counts are drawn from the dataset's training distribution, sorted and cut into chunks of the
batch size, as `design()` does on a GPU. Each mode samples the same structures:
- eager: `reverse_diffusion` as the worker runs it;
- tf32: eager with TF32 matmuls (CUDA only);
- bf16: eager under bf16 autocast;
- graph: the denoiser captured once per batch shape in a CUDA graph and replayed every call,
  with TF32 (CUDA only);
- design: `model.sampling.design()` itself, as the worker runs it.
Timings use --steps and are scaled to 1000 steps (the per-step cost does not depend on t); the
best mode then runs --full-steps for real at the largest batch that fitted. Writes OUT/sampling.json
and prints it. Weights are random unless --checkpoint is given: speed does not depend on them.
On the CPU the CUDA-only modes are skipped, which is how this script is tested before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import TrainedModel, default_device, load_model, make_header  # noqa: E402
from model.data import checkpoint_metadata, load_split  # noqa: E402
from model.diffusion import DiffusionConfig, Schedule, reverse_diffusion  # noqa: E402
from model.network import Denoiser, DenoiserConfig  # noqa: E402
from model.sampling import design, guided_denoiser, sample_num_atoms  # noqa: E402
from xtaldiff.checkpoint_file import parse_header  # noqa: E402

MODES = ("eager", "tf32", "bf16", "graph", "design")


def random_model(dataset: str, device: torch.device) -> TrainedModel:
    meta = checkpoint_metadata(load_split(dataset, "train"), dataset)
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(num_classes=len(meta["elements"]))).to(device).eval()
    schedule = Schedule(DiffusionConfig()).to(device)
    return TrainedModel(net, schedule, parse_header(make_header(net, schedule, meta)), "random-weights", device)


def denoiser_inputs(B: int, N: int, K: int, t: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Species probabilities, coordinates, lattice and timesteps of the shapes the sampler passes."""
    return (torch.full((B, N, K), 1.0 / K, device=device), torch.rand(B, N, 3, device=device),
            torch.randn(B, 3, 3, device=device), torch.full((B,), t, device=device))


def cuda_graphed(denoise, example: tuple[torch.Tensor, ...]):
    """`denoise` captured in a CUDA graph for the shapes of `example`. The returned callable copies
    its inputs into the captured ones and replays; its outputs are overwritten by the next call,
    which the sampler allows (it consumes each output before calling again)."""
    static = tuple(x.clone() for x in example)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            denoise(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = denoise(*static)

    def replay(*inputs):
        for target, value in zip(static, inputs, strict=True):
            target.copy_(value)
        graph.replay()
        return static_out

    return replay


def graph_max_abs_difference(model: TrainedModel, N: int, B: int, guidance: float) -> float:
    """How far one replayed call lands from the eager call on the same inputs (TF32 in both)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    device, K = model.device, len(model.meta.elements)
    atom_mask = torch.ones(B, N, dtype=torch.bool, device=device)
    denoise = guided_denoiser(model, torch.zeros(B, device=device), atom_mask, guidance)
    inputs = denoiser_inputs(B, N, K, 500, device)
    graphed = cuda_graphed(denoise, inputs)
    with torch.inference_mode():
        eager, replayed = denoise(*inputs), graphed(*inputs)
    return max(float((e - r).abs().max()) for e, r in zip(eager, replayed, strict=True))


def sample(model: TrainedModel, counts: list[int], batch: int, steps: int, mode: str, guidance: float) -> float:
    """Seconds to sample len(counts) structures in batches of `batch` with `steps` reverse steps."""
    device = model.device
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = mode in ("tf32", "graph")
    if mode == "design":
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        design(model, n=len(counts), target=model.meta.property.min, num_atoms=counts, guidance=guidance,
               steps=steps, batch_size=batch)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started
    allowed = torch.ones(len(model.meta.elements), dtype=torch.bool, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(counts), batch):
        chunk = counts[start : start + batch]
        N = max(chunk)
        atom_mask = torch.arange(N, device=device)[None, :] < torch.tensor(chunk, device=device)[:, None]
        prop = torch.full((len(chunk),), -1.0, device=device)
        denoise = guided_denoiser(model, prop, atom_mask, guidance)
        if mode == "graph":
            denoise = cuda_graphed(denoise, denoiser_inputs(len(chunk), N, allowed.numel(), 1, device))
        with autocast:
            reverse_diffusion(denoise, model.schedule, atom_mask, allowed, steps, model.meta.step_lr,
                              model.meta.lattice_bound, generator)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="mp_20")
    parser.add_argument("--checkpoint", type=Path, help="a trained model instead of random weights")
    parser.add_argument("--batch", default="1000,4000,10000", help="comma-separated batch sizes")
    parser.add_argument("-n", type=int, default=0, help="structures per measurement [default: the largest batch]")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed run, scaled to 1000")
    parser.add_argument("--full-steps", type=int, default=1000, help="steps of the best mode's last run (0: skip)")
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()

    device = default_device()
    model = load_model(args.checkpoint, device) if args.checkpoint else random_model(args.dataset, device)
    batches = [int(b) for b in args.batch.split(",")]
    n = args.n or max(batches)
    targets = [model.meta.property.min] * n
    counts = sorted(sample_num_atoms(model, targets, "training", torch.Generator().manual_seed(0)))
    modes = [m for m in args.modes.split(",") if device.type == "cuda" or m in ("eager", "bf16", "design")]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dataset": model.meta.dataset, "n": n, "steps_timed": args.steps,
              "guidance": args.guidance, "runs": []}
    if "graph" in modes:
        result["graph_max_abs_difference_from_eager"] = graph_max_abs_difference(model, max(counts), 64, args.guidance)
    for mode in modes:
        for batch in batches:
            try:
                sample(model, counts[: min(batch, n)], batch, 2, mode, args.guidance)  # warm-up, allocations
                seconds = sample(model, counts, batch, args.steps, mode, args.guidance)
            except torch.OutOfMemoryError:
                result["runs"].append({"mode": mode, "batch": batch, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            per_minute = 60 * n / (seconds * 1000 / args.steps)
            result["runs"].append({"mode": mode, "batch": batch, "seconds": round(seconds, 2),
                                   "structures_per_minute_at_1000_steps": round(per_minute)})
            print(json.dumps(result["runs"][-1]), flush=True)
    timed = [r for r in result["runs"] if "seconds" in r]
    if args.full_steps and timed:
        best = max(timed, key=lambda r: r["structures_per_minute_at_1000_steps"])
        seconds = sample(model, counts, best["batch"], args.full_steps, best["mode"], args.guidance)
        result["full_run"] = {"mode": best["mode"], "batch": best["batch"], "steps": args.full_steps,
                              "seconds": round(seconds, 2),
                              "structures_per_minute_at_1000_steps": round(60 * n / (seconds * 1000 / args.full_steps))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampling.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
