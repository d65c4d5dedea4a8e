"""Joint diffusion of lattice (DDPM), fractional coordinates (wrapped normal score matching) and
species (D3PM, uniform transitions): schedules, the training loss and the reverse sampler.

Equation numbers refer to Takahara et al. 2024 (arXiv:2406.09263). The network is never seen
here except as a callable `denoise(species_probs, frac, lattice, t) -> DenoiserOutput`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from model.data import CrystalBatch
from model.network import DenoiserOutput
from xtaldiff.samplers import DEFAULT_SAMPLER, SAMPLERS

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], DenoiserOutput]


class SpeciesConstraint(Protocol):
    """A rule on compositions that the species steps keep (model.charge_balance)."""

    def predicted(self, a0_probs: torch.Tensor, atom_mask: torch.Tensor, t: int) -> torch.Tensor:
        """The predicted a_0 the D3PM step at level t moves towards."""

    def sampled(self, a: torch.Tensor, a0_probs: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        """The species of the last step (one-hot), given the last prediction."""


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000  # T
    cosine_s: float = 0.008  # offset of the cosine schedule (Nichol & Dhariwal)
    sigma_begin: float = 0.005  # sigma_1 of the coordinate noise
    sigma_end: float = 0.5  # sigma_T
    wrap_terms: int = 10  # images k = -10..10 in the wrapped-normal sums
    lambda_draws: int = 10_000  # Monte Carlo draws per t for lambda_t
    type_weight: float = 20.0  # w_type, DiffCSP's weight of the species term
    aux_ce_weight: float = 0.01  # D3PM hybrid loss: weight of the cross-entropy on a_0
    cond_drop_prob: float = 0.1  # classifier-free guidance: p(property replaced by "none")


def cosine_betas(timesteps: int, s: float) -> torch.Tensor:
    """(T,) betas of the cosine schedule, clipped to [1e-4, 0.9999]."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(1e-4, 0.9999)


def wrapped_normal_score(x: torch.Tensor, sigma: torch.Tensor, wrap_terms: int) -> torch.Tensor:
    """d/dx log N_w(x; 0, sigma^2), elementwise: the score of q(F_t | F_0) at x = F_t - F_0 (eq. 4).

    x and sigma broadcast together; sums over the images x + k, k = -wrap_terms..wrap_terms.
    """
    k = torch.arange(-wrap_terms, wrap_terms + 1, dtype=x.dtype, device=x.device)
    xk = x.unsqueeze(-1) + k
    s2 = sigma.unsqueeze(-1) ** 2
    log_w = -(xk**2) / (2 * s2)
    return (torch.softmax(log_w, dim=-1) * (-xk / s2)).sum(-1)


class Schedule(nn.Module):
    """All per-timestep constants, indexed by t = 0..T (index 0 is the clean data)."""

    def __init__(self, config: DiffusionConfig, lambda_t: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        T = config.timesteps
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), cosine_betas(T, config.cosine_s)])
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        sigma = torch.zeros(T + 1, dtype=torch.float64)
        ratio = torch.arange(T, dtype=torch.float64) / max(T - 1, 1)
        sigma[1:] = config.sigma_begin * (config.sigma_end / config.sigma_begin) ** ratio
        if lambda_t is None:
            lambda_t = self.monte_carlo_lambda(sigma, config)
        self.register_buffer("beta", betas.float())
        self.register_buffer("alpha_bar", alpha_bar.float())
        self.register_buffer("sigma", sigma.float())
        self.register_buffer("lambda_t", lambda_t.float())

    @staticmethod
    def monte_carlo_lambda(sigma: torch.Tensor, config: DiffusionConfig) -> torch.Tensor:
        """lambda_t = E[score(x, sigma_t)^2], x = (sigma_t * randn) mod 1 (eq. 5), fixed seed."""
        generator = torch.Generator().manual_seed(0)
        lam = torch.ones(len(sigma), dtype=torch.float64)
        for chunk in torch.arange(1, len(sigma)).split(50):
            s = sigma[chunk, None]
            draws = torch.randn(len(chunk), config.lambda_draws, generator=generator, dtype=torch.float64)
            x = torch.remainder(s * draws, 1.0)
            lam[chunk] = (wrapped_normal_score(x, s, config.wrap_terms) ** 2).mean(-1)
        return lam


def uniform_marginal(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """probs Qbar for uniform transitions: keep * probs + (1 - keep) / K (eq. 7). keep: (B,)."""
    keep = keep.view(-1, *([1] * (probs.dim() - 1)))
    return keep * probs + (1 - keep) / probs.shape[-1]


def species_posterior(
    a_t: torch.Tensor, a0_probs: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """q(a_s | a_t, a_0) for s < t, proportional to (a_t Q_{s->t}^T) * (a_0 Qbar_s) (eq. 8).

    a_t: (B, N, K) one-hot; a0_probs: (B, N, K) one-hot or the predicted distribution of a_0;
    alpha_bar_*: (B,). With a predicted a_0 this is the paper's p_theta(a_{t-1} | M_t).
    """
    from_t = uniform_marginal(a_t, alpha_bar_t / alpha_bar_s)  # Q_{s->t} is symmetric
    from_0 = uniform_marginal(a0_probs, alpha_bar_s)
    unnormalised = from_t * from_0
    return unnormalised / unnormalised.sum(-1, keepdim=True)


@dataclass
class LossTerms:
    total: torch.Tensor
    lattice: torch.Tensor
    coords: torch.Tensor
    species: torch.Tensor


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, N, ...) values over atoms where mask (B, N) is True."""
    per_atom = values.reshape(*mask.shape, -1).mean(-1)
    return (per_atom * mask).sum() / mask.sum()


def diffusion_loss(
    denoiser: Callable[..., DenoiserOutput],
    batch: CrystalBatch,
    schedule: Schedule,
    num_classes: int,
) -> LossTerms:
    """Noise a batch at t ~ U{1..T} and score the denoiser on all three variables."""
    cfg = schedule.config
    B, device = batch.lattice.shape[0], batch.lattice.device
    t = torch.randint(1, cfg.timesteps + 1, (B,), device=device)
    mask = batch.atom_mask

    alpha_bar = schedule.alpha_bar[t]
    eps_L = torch.randn_like(batch.lattice)
    L_t = alpha_bar.sqrt().view(B, 1, 1) * batch.lattice + (1 - alpha_bar).sqrt().view(B, 1, 1) * eps_L  # eq. 2

    sigma_t = schedule.sigma[t].view(B, 1, 1)
    eps_F = torch.randn_like(batch.frac)
    F_t = torch.remainder(batch.frac + sigma_t * eps_F, 1.0)  # eq. 4
    target_F = wrapped_normal_score(sigma_t * eps_F, sigma_t.expand_as(eps_F), cfg.wrap_terms)
    target_F = target_F / schedule.lambda_t[t].sqrt().view(B, 1, 1)  # lambda_t weighting of eq. 5

    a_0 = F.one_hot(batch.species, num_classes).float()
    a_t_probs = uniform_marginal(a_0, alpha_bar)  # eq. 7
    a_t = F.one_hot(torch.multinomial(a_t_probs.view(-1, num_classes), 1).view(mask.shape), num_classes).float()

    keep_prop = torch.rand(B, device=device) >= cfg.cond_drop_prob
    out = denoiser(a_t, F_t, L_t, t, batch.prop, keep_prop, mask)

    loss_L = F.mse_loss(out.eps_lattice.float(), eps_L)  # eq. 3
    loss_F = masked_mean((out.score_frac.float() - target_F) ** 2, mask)

    alpha_bar_prev = schedule.alpha_bar[t - 1]
    log_probs_0 = out.species_logits.float().log_softmax(-1)
    true_post = species_posterior(a_t, a_0, alpha_bar, alpha_bar_prev)
    pred_post = species_posterior(a_t, log_probs_0.exp(), alpha_bar, alpha_bar_prev)
    kl = (torch.xlogy(true_post, true_post) - true_post * pred_post.clamp_min(1e-30).log()).sum(-1)
    ce = -(a_0 * log_probs_0).sum(-1)
    loss_A = masked_mean(kl + cfg.aux_ce_weight * ce, mask)

    total = loss_L + loss_F + cfg.type_weight * loss_A
    return LossTerms(total, loss_L.detach(), loss_F.detach(), loss_A.detach())


def sampling_timesteps(timesteps: int, steps: int) -> list[int]:
    """Evenly strided t from T down to 1, `steps` of them (all of 1..T when steps == T)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    grid = torch.linspace(timesteps, 1, steps).round().long().unique().flip(0)
    return grid.tolist()


def corrector_step(schedule: Schedule, t: int, s: int, step_lr: float, sampler: str) -> torch.Tensor:
    """Langevin time of the corrector at level t before the move to s < t: DiffCSP's
    step_lr * sigma_t^2 / sigma_1^2, times t - s for "rescaled" and "exponential".

    A strided step leaves level t after t - s levels' worth of noise; multiplying the step by
    t - s keeps the Langevin time spent per noise level that of T steps (the sum over any grid
    approximates the sum over all t). Without it, 100 steps give the corrector a tenth of its
    time, and SR5 and validity drop (perov_5 CDS, n = 1000: SR5 0.852 against 0.891).
    """
    stride = t - s if sampler in ("rescaled", "exponential") else 1
    return stride * step_lr * (schedule.sigma[t] / schedule.sigma[1]) ** 2


def langevin_update(frac: torch.Tensor, score: torch.Tensor, noise: torch.Tensor, step: torch.Tensor,
                    sigma_t: torch.Tensor, sampler: str) -> torch.Tensor:
    """Langevin dynamics d frac = score dt + sqrt(2) dW over a time `step`, from one score.

    "paper" and "rescaled" take one Euler-Maruyama step. On a Gaussian of width sigma_t (what
    the score is near a denoised structure) it shrinks frac - mu by 1 - h, h = step / sigma_t^2,
    and diverges once h passes 2: carbon_24's step_lr is h = 0.4 a level, so "rescaled" at 100
    of 1000 steps (h = 4) draws nothing usable. "exponential" moves as the Ornstein-Uhlenbeck
    process of that Gaussian does over the same time, exactly: frac - mu shrinks by
    exp(-h), the noise restores the variance sigma_t^2 (1 - exp(-2h)), and no step diverges.
    """
    if sampler == "exponential":
        decay = torch.exp(-step / sigma_t**2)
        return frac + (1 - decay) * sigma_t**2 * score + sigma_t * (1 - decay**2).sqrt() * noise
    return frac + step * score + (2 * step).sqrt() * noise


@torch.inference_mode()
def reverse_diffusion(
    denoise: Denoise,
    schedule: Schedule,
    atom_mask: torch.Tensor,
    allowed_classes: torch.Tensor,
    steps: int,
    step_lr: float,
    lattice_bound: float,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
    sampler: str = DEFAULT_SAMPLER,
    species_constraint: SpeciesConstraint | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample M_0 = (L, F, A) from the prior by predictor-corrector steps.

    atom_mask: (B, N) bool; allowed_classes: (K,) bool, the species the sampler may emit;
    lattice_bound: Angstrom, the largest |entry| of L_0 the sampler accepts;
    sampler: a key of SAMPLERS ("paper" and "rescaled" are one sampler at steps == T);
    species_constraint: a rule the species keep (SpeciesConstraint; model.charge_balance).
    Returns lattice (B, 3, 3), frac (B, N, 3), species classes (B, N).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    B, N = atom_mask.shape
    K = allowed_classes.numel()
    device = atom_mask.device

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    allowed = allowed_classes.float()
    L = randn(B, 3, 3)
    frac = torch.rand(B, N, 3, generator=generator, device=device)
    a = F.one_hot(torch.multinomial(allowed.expand(B * N, K), 1, generator=generator).view(B, N), K).float()

    grid = sampling_timesteps(schedule.config.timesteps, steps)
    for i, t in enumerate(grid):
        s = grid[i + 1] if i + 1 < len(grid) else 0
        t_batch = torch.full((B,), t, device=device, dtype=torch.long)
        sigma_t, sigma_s = schedule.sigma[t], schedule.sigma[s]
        sqrt_lambda = schedule.lambda_t[t].sqrt()

        if step_lr > 0:  # Langevin corrector on the coordinates
            out = denoise(a, frac, L, t_batch)
            step = corrector_step(schedule, t, s, step_lr, sampler)
            frac = langevin_update(frac, out.score_frac * sqrt_lambda, randn(B, N, 3), step, sigma_t, sampler)
            frac = torch.remainder(frac, 1.0)

        out = denoise(a, frac, L, t_batch)
        # Predictor (reverse SDE step) for coordinates, with sigma_0 = 0 on the last step.
        var_drop = sigma_t**2 - sigma_s**2
        noise_std = (sigma_s**2 * var_drop / sigma_t**2).sqrt()
        frac = torch.remainder(frac + var_drop * out.score_frac * sqrt_lambda + noise_std * randn(B, N, 3), 1.0)

        # Ancestral DDPM step for the lattice, respaced from t to s, through the estimate of L_0
        # (eq. 2 inverted). Near T, 1/sqrt(alpha_t) reaches 100 and would amplify any error in
        # eps_L; clipping L_0 to a physical range (DDPM's clip_denoised) bounds it.
        ab_t, ab_s = schedule.alpha_bar[t], schedule.alpha_bar[s]
        beta_ts = 1 - ab_t / ab_s
        L0 = ((L - (1 - ab_t).sqrt() * out.eps_lattice) / ab_t.sqrt()).clamp(-lattice_bound, lattice_bound)
        mean = (ab_s.sqrt() * beta_ts * L0 + (1 - beta_ts).sqrt() * (1 - ab_s) * L) / (1 - ab_t)
        L = mean + (beta_ts * (1 - ab_s) / (1 - ab_t)).sqrt() * randn(B, 3, 3) if s > 0 else mean

        # D3PM step for species, restricted to the allowed classes.
        logits = out.species_logits.float().masked_fill(~allowed_classes, -torch.inf)
        a0_probs = logits.softmax(-1)
        if species_constraint is not None:
            a0_probs = species_constraint.predicted(a0_probs, atom_mask, t)
        probs = species_posterior(a, a0_probs, ab_t.expand(B), ab_s.expand(B)) * allowed
        probs = probs / probs.sum(-1, keepdim=True)
        a = F.one_hot(torch.multinomial(probs.view(-1, K), 1, generator=generator).view(B, N), K).float()
        if species_constraint is not None and s == 0:
            a = species_constraint.sampled(a, a0_probs, atom_mask)

        if progress is not None:
            progress(i + 1, len(grid))
    return L, frac, a.argmax(-1)
