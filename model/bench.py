"""Throughput of the paper-size model on each dataset's real shapes: the numbers `xtaldiff bench`
prints. Weights are random: speed does not depend on them."""

from __future__ import annotations

import os
import platform
import time

import torch

from model.checkpoint import TrainedModel, default_device, make_header
from model.data import CrystalSet, checkpoint_metadata, load_split
from model.diffusion import DiffusionConfig, Schedule, diffusion_loss
from model.network import Denoiser, DenoiserConfig
from model.sampling import design
from xtaldiff.checkpoint_file import parse_header

PAPER_SIZE = {"d_model": 128, "num_blocks": 6}


def time_training(data: CrystalSet, net: Denoiser, schedule: Schedule, batch_size: int, batches: int,
                  by_atom_count: bool, device: torch.device) -> dict:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    stream = data.batches(batch_size, torch.Generator().manual_seed(0), by_atom_count)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    structures, elapsed = 0, 0.0
    for i, batch in zip(range(batches + 1), stream, strict=False):
        batch = batch.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = diffusion_loss(net, batch, schedule, net.config.num_classes).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step pays for allocations
            elapsed += time.perf_counter() - start
            structures += batch.lattice.shape[0]
    per_structure = elapsed / structures
    return {
        "steps_per_s": round(batches / elapsed, 3),
        "structures_per_s": round(1 / per_structure, 1),
        "epoch_s_estimate": round(per_structure * len(data), 1),
        "epochs_per_hour": round(3600 / (per_structure * len(data)), 1),
    }


def run_benchmarks(datasets: list[str], sample_n: int, sample_steps: int, train_batches: int,
                   batch_size: int = 256) -> dict:
    device = default_device()
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "torch": torch.__version__, "model": PAPER_SIZE, "batch_size": batch_size, "datasets": {},
    }
    schedule = Schedule(DiffusionConfig()).to(device)
    for name in datasets:
        arrays = load_split(name, "train")
        meta = checkpoint_metadata(arrays, name)
        stats = meta["property"]
        vocab = sorted(set(arrays.atomic_numbers.tolist()))
        data = CrystalSet(arrays, vocab, stats["mean"], stats["std"])
        config = DenoiserConfig(num_classes=len(vocab), **PAPER_SIZE)
        torch.manual_seed(0)
        net = Denoiser(config).to(device)
        entry = {"train_structures": len(data)}
        layouts = (True, False) if len(meta["num_atoms"]) > 1 else (True,)
        for by_atom_count in layouts:
            key = "train_bucketed_by_atom_count" if by_atom_count else "train_padded_random"
            entry[key] = time_training(data, net, schedule, batch_size, train_batches, by_atom_count, device)

        model = TrainedModel(net.eval(), schedule, parse_header(make_header(net, schedule, meta)),
                             "random-weights", device)
        start = time.perf_counter()
        design(model, n=sample_n, target=stats["min"], steps=sample_steps, atom_counts="training", seed=0,
               batch_size=sample_n)
        seconds = time.perf_counter() - start
        entry["sampling"] = {"n": sample_n, "steps": sample_steps, "seconds": round(seconds, 1),
                             "structures_per_s": round(sample_n / seconds, 2)}
        result["datasets"][name] = entry
    return result
