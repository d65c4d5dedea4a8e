"""Designing structures with a trained model: checked arguments in, pymatgen Structures out."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from pymatgen.core import Element, Lattice, Structure

from model.charge_balance import ChargeBalance
from model.checkpoint import TrainedModel
from model.diffusion import reverse_diffusion
from model.geometry import right_handed
from model.network import DenoiserOutput
from xtaldiff.checkpoint_file import MAX_ATOMS
from xtaldiff.design_params import ATOM_COUNTS
from xtaldiff.samplers import SAMPLERS


class DesignError(ValueError):
    """Arguments a model cannot honour; the message says what to change."""


def _per_structure(value, n: int, name: str) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise DesignError(f"{name} has {len(value)} values for {n} structures; give one or {n}")
        return list(value)
    return [value] * n


def allowed_class_mask(model: TrainedModel, elements: Sequence[str] | None) -> torch.Tensor:
    """(K,) bool over the model's vocabulary: True where the species may be sampled."""
    vocab = model.meta.elements
    if elements is None:
        return torch.ones(len(vocab), dtype=torch.bool)
    symbols = []
    for symbol in elements:
        if not isinstance(symbol, str) or not Element.is_valid_symbol(symbol.strip()):
            raise DesignError(f"{symbol!r} is not an element symbol (e.g. Li, Fe, O)")
        symbols.append(symbol.strip())
    mask = torch.tensor([v in symbols for v in vocab])
    if not mask.any():
        raise DesignError(
            f"none of {', '.join(symbols)} is among the {len(vocab)} elements this model was trained on "
            f"({', '.join(vocab)})"
        )
    return mask


def sample_num_atoms(model: TrainedModel, targets: Sequence[float], atom_counts: str,
                     generator: torch.Generator) -> list[int]:
    """One atom count per target: from the training split's distribution ("training", the
    paper's), or from that of the training structures in each target's property bin
    ("near_target", model.data.atom_counts_by_property)."""
    n = len(targets)
    if atom_counts == "training":
        groups = {0: (model.meta.num_atoms, list(range(n)))}
    else:
        table = model.meta.num_atoms_by_property
        groups = {}
        for i, value in enumerate(targets):
            k = table.bin_of(value)
            groups.setdefault(k, (table.near(value), []))[1].append(i)
    counts = [0] * n
    for k in sorted(groups):
        dist, index = groups[k]
        values = list(dist)
        probs = torch.tensor([dist[v] for v in values], dtype=torch.float64)
        draws = torch.multinomial(probs, len(index), replacement=True, generator=generator)
        for i, d in zip(index, draws.tolist(), strict=True):
            counts[i] = values[d]
    return counts


def plan_batches(counts: Sequence[int], batch_size: int, one_count_per_batch: bool) -> list[list[int]]:
    """Indices of `counts`, sorted by count, in batches of at most `batch_size`.

    A batch is padded to its largest structure and the denoiser's pair terms grow as N^2: on a
    CPU, where a call costs its arithmetic, batches of one count are faster (mp_20, 100
    structures x 10 steps, one thread of a busy machine: 3.3-3.8 s against 4.9-5.0 s padded).
    On a GPU a batch-step costs about 5 ms of launches whatever its size, so fewer, padded
    batches win there (H200, 10,000 mp_20 structures: 9,197 per minute padded in batches of
    5,000, at most 4,635 by count even with each batch replayed from a CUDA graph;
    scripts/gpu_bench_sampling.py)."""
    order = sorted(range(len(counts)), key=lambda i: counts[i])
    if not one_count_per_batch:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        if not batches or counts[batches[-1][0]] != counts[i] or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(i)
    return batches


def guided_denoiser(model: TrainedModel, prop: torch.Tensor, atom_mask: torch.Tensor, guidance: float):
    """The denoiser as the sampler's callable; with guidance w it returns
    (1 + w) * conditional - w * unconditional (classifier-free guidance)."""
    net = model.denoiser
    B = prop.shape[0]
    keep = torch.ones(B, dtype=torch.bool, device=prop.device)
    if guidance == 0:
        return lambda a, f, L, t: net(a, f, L, t, prop, keep, atom_mask)

    prop2, keep2, mask2 = torch.cat([prop, prop]), torch.cat([keep, ~keep]), torch.cat([atom_mask, atom_mask])

    def denoise(a, f, L, t):
        both = net(torch.cat([a, a]), torch.cat([f, f]), torch.cat([L, L]), torch.cat([t, t]), prop2, keep2, mask2)
        return DenoiserOutput(*((1 + guidance) * x[:B] - guidance * x[B:] for x in both))

    return denoise


def design(
    model: TrainedModel,
    *,
    n: int,
    target: float | Sequence[float],
    num_atoms: int | Sequence[int] | None = None,
    elements: Sequence[str] | None = None,
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    atom_counts: str | None = None,
    charge_balance: bool | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> list[Structure]:
    """Sample `n` structures conditioned on `target` (the model's property, in its unit).

    num_atoms: per structure, or None to draw them as `atom_counts` says.
    elements: allowed element symbols (None: the whole vocabulary).
    guidance: classifier-free guidance scale (0: the paper's conditional model; None: the
        model's default, `default_guidance`, chosen from its evaluation).
    steps: reverse steps, evenly strided over T (None: the model's `default_steps`, T unless
        `xtaldiff record-evaluation` measured fewer to be as good).
    sampler: a key of xtaldiff.samplers.SAMPLERS (None: the model's `default_sampler`, the one
        its `default_steps` were measured with).
    atom_counts: a key of xtaldiff.design_params.ATOM_COUNTS (None: "near_target" where the
        checkpoint records atom counts by property, else "training").
    charge_balance: change predicted species during sampling so that compositions pass SMACT
        (model.charge_balance; None: the model's `default_charge_balance`).
    progress(done, total) is called after every reverse step; raise from it to stop.
    The same seed on the same device gives the same structures.
    """
    if not isinstance(n, int) or n < 1:
        raise DesignError(f"n must be a positive integer, got {n!r}")
    T = model.schedule.config.timesteps
    steps = model.meta.default_steps if steps is None else steps
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise DesignError(f"steps must be between 1 and {T}, got {steps!r}")
    sampler = model.meta.default_sampler if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise DesignError(f"sampler must be one of {', '.join(sorted(SAMPLERS))}, got {sampler!r}")
    if guidance is None:
        guidance = model.meta.default_guidance
    if not math.isfinite(guidance) or guidance < 0:
        raise DesignError(f"guidance must be a finite number >= 0, got {guidance!r}")
    targets = _per_structure(target, n, "target")
    for value in targets:
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise DesignError(f"target must be a finite number, got {value!r}")
    allowed = allowed_class_mask(model, elements).to(model.device)
    charge_balance = model.meta.default_charge_balance if charge_balance is None else charge_balance
    if not isinstance(charge_balance, bool):
        raise DesignError(f"charge_balance must be true or false, got {charge_balance!r}")
    species_constraint = ChargeBalance(model.meta.elements, from_level=T) if charge_balance else None

    atom_counts = model.meta.default_atom_counts if atom_counts is None else atom_counts
    if atom_counts not in ATOM_COUNTS:
        raise DesignError(f"atom_counts must be one of {', '.join(ATOM_COUNTS)}, got {atom_counts!r}")

    generator = torch.Generator().manual_seed(seed)
    if num_atoms is None:
        if atom_counts == "near_target" and model.meta.num_atoms_by_property is None:
            raise DesignError("this checkpoint records no atom counts by property (its header predates them): "
                              "use atom_counts 'training', or name num_atoms")
        counts = sample_num_atoms(model, targets, atom_counts, generator)
    else:
        counts = _per_structure(num_atoms, n, "num_atoms")
        for k in counts:
            if not isinstance(k, int) or not 1 <= k <= MAX_ATOMS:
                raise DesignError(f"num_atoms must be an integer from 1 to {MAX_ATOMS}, got {k!r}")

    prop_stats = model.meta.property
    vocab = model.meta.elements
    batches = plan_batches(counts, batch_size, one_count_per_batch=model.device.type == "cpu")
    total = steps * len(batches)
    sampler_rng = torch.Generator(device=model.device).manual_seed(seed)
    results: dict[int, Structure] = {}
    for b, index in enumerate(batches):
        N = max(counts[i] for i in index)
        atom_mask = torch.tensor([[j < counts[i] for j in range(N)] for i in index], device=model.device)
        prop = torch.tensor(
            [(targets[i] - prop_stats.mean) / prop_stats.std for i in index],
            dtype=torch.float32,
            device=model.device,
        )
        report = None if progress is None else (lambda done, _, b=b: progress(b * steps + done, total))
        lattice, frac, species = reverse_diffusion(
            guided_denoiser(model, prop, atom_mask, guidance),
            model.schedule,
            atom_mask,
            allowed,
            steps,
            model.meta.step_lr,
            model.meta.lattice_bound,
            sampler_rng,
            report,
            sampler,
            species_constraint,
        )
        lattice, frac, species = lattice.double().cpu(), frac.double().cpu(), species.cpu()
        for row, i in enumerate(index):
            k = counts[i]
            results[i] = right_handed(Structure(
                Lattice(lattice[row].numpy()),
                [vocab[c] for c in species[row, :k].tolist()],
                frac[row, :k].numpy(),
            ))
    return [results[i] for i in range(n)]
