"""The denoiser: a Transformer over the atoms of a unit cell (paper section 4.2-4.3).

It maps (A_t, F_t, L_t, t, property) to (eps_F, a_0 logits, eps_L) and knows nothing of the
noise schedules. Read top-down: embeddings -> pair features -> attention -> block -> denoiser.

Choices the paper leaves open, recorded here:
- 4 heads of width 32 (the paper's 3 heads do not divide d = 128); logits scaled by
  1/sqrt(head width), the usual Transformer scaling.
- The relative-position MLP of eqs. 12-13 is split into a hidden part e_ij and a linear output
  layer per block. e_ij is shared by all blocks (computed once per forward) unless
  pair_per_block gives each block its own, as DiffCSP's edge network per layer does. Because the
  output layer is linear, sum_j a_ij beta_ij = W_beta (sum_j a_ij e_ij) + b: the (B, N, N, d)
  tensor beta is never built.
- psi_FT uses frequencies m = 1..num_freqs (m = 0 only adds constants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

CONDITIONINGS = ("cdi", "cds")


@dataclass(frozen=True)
class DenoiserConfig:
    num_classes: int  # K, species the model knows (its training vocabulary)
    conditioning: str = "cdi"  # "cdi": condition-dependent initial embedding; "cds": in every block
    d_model: int = 128  # d
    num_blocks: int = 6  # D
    num_heads: int = 4
    num_freqs: int = 32  # frequencies of psi_FT (DiffCSP: 128)
    d_pair: int = 64  # width of the relative-position features e_ij
    pair_per_block: bool = False  # an e_ij MLP in every block instead of one shared by all
    mlp_ratio: int = 2  # hidden width of the per-atom MLP in units of d

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")


class DenoiserOutput(NamedTuple):
    score_frac: torch.Tensor  # (B, N, 3) eps_F: the wrapped-normal score divided by sqrt(lambda_t)
    species_logits: torch.Tensor  # (B, N, K) logits of a_0
    eps_lattice: torch.Tensor  # (B, 3, 3) eps_L


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) integer timesteps -> (B, dim), as in DDPM / Transformer positional encodings."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def fourier_features(frac: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """psi_FT(f_j - f_i) for all pairs (eq. 14): (B, N, 3) -> (B, N, N, 6 * num_freqs).

    Integer frequencies make it periodic, hence invariant to translations of all atoms.
    """
    diff = frac[:, None, :, :] - frac[:, :, None, :]  # [b, i, j] = f_j - f_i
    m = torch.arange(1, num_freqs + 1, device=frac.device, dtype=frac.dtype)
    angles = 2 * math.pi * diff[..., None] * m  # (B, N, N, 3, M)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-3)


class ConditionEmbedding(nn.Module):
    """z_c = MLP(z_t + z_prop) (eq. 15), with a learned "no property" vector for guidance."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.prop = nn.Linear(1, d)
        self.no_prop = nn.Parameter(torch.zeros(d))
        self.mlp = mlp(2 * d, d, d)

    def forward(self, t: torch.Tensor, prop: torch.Tensor, keep_prop: torch.Tensor) -> torch.Tensor:
        """t, prop (standardised), keep_prop (bool): (B,) -> z_c (B, d)."""
        z_prop = torch.where(keep_prop[:, None], self.prop(prop[:, None]), self.no_prop)
        return self.mlp(torch.cat([sinusoidal_embedding(t, self.d), z_prop], dim=-1))


class PairFeatures(nn.Sequential):
    """e_ij = MLP(psi_FT(f_j - f_i) + flatten(L L^T)) (eqs. 12-13)."""

    def __init__(self, config: DenoiserConfig):
        P = config.d_pair
        super().__init__(nn.Linear(6 * config.num_freqs + 9, P), nn.SiLU(), nn.Linear(P, P), nn.SiLU())

    def forward(self, psi: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        """psi (B, N, N, 6M), gram (B, 9) -> e_ij (B, N, N, P)."""
        # The first layer is split so that the lattice term is computed once per structure, not per pair.
        first, F_in = self[0], psi.shape[-1]
        lattice_term = F.linear(gram, first.weight[:, F_in:], first.bias)[:, None, None, :]
        hidden = F.linear(psi, first.weight[:, :F_in]) + lattice_term
        return self[3](self[2](self[1](hidden)))


class RelativeAttention(nn.Module):
    """Multi-head self-attention with relative position terms alpha_ij, beta_ij (eq. 11).

    CDS adds z_c W^Qc, z_c W^Kc, z_c W^Vc to queries, keys and values (eqs. 17-19).
    """

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        d, self.heads = config.d_model, config.num_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.qkv_cond = nn.Linear(d, 3 * d, bias=False) if config.conditioning == "cds" else None
        self.alpha = nn.Linear(config.d_pair, self.heads)
        self.beta = nn.Linear(config.d_pair, d)
        self.out = nn.Linear(d, d)

    def forward(self, z, pair, z_c, atom_mask):
        """z: (B, N, d), pair e_ij: (B, N, N, P), z_c: (B, d), atom_mask: (B, N) -> (B, N, d)."""
        B, N, d = z.shape
        H, dh = self.heads, d // self.heads
        qkv = self.qkv(z)
        if self.qkv_cond is not None:
            qkv = qkv + self.qkv_cond(z_c)[:, None, :]
        q, k, v = qkv.view(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)  # each (B, H, N, dh)

        alpha = self.alpha(pair).permute(0, 3, 1, 2)  # (B, H, N, N)
        logits = q @ k.transpose(-1, -2) / math.sqrt(dh) + alpha
        logits = logits.masked_fill(~atom_mask[:, None, None, :], -torch.inf)
        attn = logits.softmax(-1)

        pooled_pair = torch.einsum("bhij,bijp->bhip", attn, pair)  # sum_j a_ij e_ij
        w_beta = self.beta.weight.view(H, dh, -1)
        beta_term = torch.einsum("bhip,hcp->bhic", pooled_pair, w_beta) + self.beta.bias.view(1, H, 1, dh)
        heads = attn @ v + beta_term  # (B, H, N, dh)
        return self.out(heads.transpose(1, 2).reshape(B, N, d))


class Block(nn.Module):
    """Post-LN Transformer block (eqs. 9-10)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        d = config.d_model
        self.attn = RelativeAttention(config)
        self.pair = PairFeatures(config) if config.pair_per_block else None
        self.norm1 = nn.LayerNorm(d)
        self.mlp = mlp(d, config.mlp_ratio * d, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, z, pair, z_c, atom_mask):
        z = self.norm1(self.attn(z, pair, z_c, atom_mask) + z)  # eq. 9
        return self.norm2(self.mlp(z) + z)  # eq. 10


class Denoiser(nn.Module):
    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        d, K = config.d_model, config.num_classes
        self.species_embedding = mlp(K, d, d)  # z_a = MLP(onehot(a_t))
        self.condition = ConditionEmbedding(d)
        self.initial = mlp(2 * d, d, d) if config.conditioning == "cdi" else None  # eq. 16
        self.pair = None if config.pair_per_block else PairFeatures(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.score_head = mlp(d, d, 3)
        self.species_head = mlp(d, d, K)
        self.lattice_head = mlp(d, d, 9)  # phi of eps_L = phi(mean_i z_i) L_t

    def forward(
        self,
        species: torch.Tensor,
        frac: torch.Tensor,
        lattice: torch.Tensor,
        t: torch.Tensor,
        prop: torch.Tensor,
        keep_prop: torch.Tensor,
        atom_mask: torch.Tensor,
    ) -> DenoiserOutput:
        """species (B, N, K) one-hot or probabilities of a_t; frac (B, N, 3) F_t;
        lattice (B, 3, 3) L_t; t (B,) int; prop (B,) standardised property;
        keep_prop (B,) bool (False: the "no property" embedding); atom_mask (B, N) bool."""
        B, N, _ = frac.shape
        d = self.config.d_model
        z_c = self.condition(t, prop, keep_prop)
        z = self.species_embedding(species)
        if self.initial is not None:  # MLP(z_a + z_c), eq. 16; the first layer split so z_c is not copied N times
            first = self.initial[0]
            hidden = F.linear(z, first.weight[:, :d]) + F.linear(z_c, first.weight[:, d:], first.bias)[:, None, :]
            z = self.initial[2](self.initial[1](hidden))

        gram = (lattice @ lattice.transpose(-1, -2)).reshape(B, 9)  # L L^T: rotation-invariant
        psi = fourier_features(frac, self.config.num_freqs)
        shared_pair = self.pair(psi, gram) if self.pair is not None else None
        for block in self.blocks:
            pair = shared_pair if block.pair is None else block.pair(psi, gram)
            z = block(z, pair, z_c, atom_mask)

        mask = atom_mask[..., None].to(z.dtype)
        z_mean = (z * mask).sum(1) / mask.sum(1)
        eps_lattice = self.lattice_head(z_mean).view(B, 3, 3) @ lattice
        return DenoiserOutput(self.score_head(z), self.species_head(z), eps_lattice)
