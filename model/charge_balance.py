"""A species step that keeps compositions charge-balanced: design's `charge_balance=True`.

At each reverse step below `from_level`, the composition the denoiser predicts for a_0 (the
argmax class of every atom) is screened as the metrics screen a sample (SMACT, CDVAE's test).
Where it fails, the change that passes at the least loss of the denoiser's log-probability is
found: m = 1..MAX_MOVED atoms of one element of the cell given to another element already in
it (every element kept, so that no lone cation can vanish into an elemental cell). Those atoms'
predicted a_0 is set to the new element before the D3PM step (eq. 8), which then pulls a_{t-1}
towards it while the coordinates and lattice still have steps to follow. The species sampled
on the last step are screened the same way, so that a sample whose composition such a change
can balance leaves balanced.

Why: mp_20's samples fail validity mostly by composition (an F too many or too few for the
cations' charges), and a one-atom change after sampling makes half of them valid but leaves the
atom where another element's geometry put it (scripts/repair_compositions.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import torch

from model.metrics import MAX_ELEMENTS_CHECKED, composition_problem

MAX_MOVED = 3  # atoms one change may give from one element to another


@lru_cache(maxsize=1 << 16)
def _balanced(composition: tuple[tuple[str, int], ...]) -> bool:
    return composition_problem(dict(composition)) is None


def balanced(counts: Counter, vocab: Sequence[str]) -> bool:
    """SMACT passes the composition of `counts` (class -> atoms)."""
    return _balanced(tuple(sorted((vocab[c], n) for c, n in counts.items() if n > 0)))


def nearest_balanced_change(classes: torch.Tensor, log_probs: torch.Tensor,
                            vocab: Sequence[str]) -> tuple[list[int], int] | None:
    """(atoms, new class) of the change of species `classes` (n atoms) that makes their composition
    pass SMACT at the least loss of log-probability under `log_probs` (n atoms, K classes), every
    element kept; None when it passes already, when no change of at most MAX_MOVED atoms does, or
    when it has too many elements to screen."""
    counts = Counter(classes.tolist())
    if len(counts) > MAX_ELEMENTS_CHECKED or balanced(counts, vocab):
        return None
    best: tuple[float, list[int], int] | None = None
    for source in counts:
        atoms = (classes == source).nonzero().flatten()
        for target in counts:
            if target == source:
                continue
            cost = log_probs[atoms, source] - log_probs[atoms, target]
            order = cost.argsort()
            for moved in range(1, min(MAX_MOVED, counts[source] - 1) + 1):
                changed = counts.copy()
                changed[source] -= moved
                changed[target] += moved
                total = cost[order[:moved]].sum().item()
                if balanced(changed, vocab) and (best is None or total < best[0]):
                    best = (total, atoms[order[:moved]].tolist(), target)
    return None if best is None else (best[1], best[2])


class ChargeBalance:
    """reverse_diffusion's species constraint (model.diffusion.SpeciesConstraint)."""

    def __init__(self, vocab: Sequence[str], from_level: int):
        self.vocab = list(vocab)
        self.from_level = from_level

    def _changed(self, classes: torch.Tensor, a0_probs: torch.Tensor, atom_mask: torch.Tensor,
                 one_hot: torch.Tensor) -> torch.Tensor:
        log_probs = a0_probs.clamp_min(1e-30).log().cpu()
        classes = classes.cpu()
        changed = one_hot.clone()
        for b, n in enumerate(atom_mask.sum(-1).tolist()):
            change = nearest_balanced_change(classes[b, :n], log_probs[b, :n], self.vocab)
            if change is not None:
                atoms, target = change
                changed[b, atoms] = 0.0
                changed[b, atoms, target] = 1.0
        return changed

    def predicted(self, a0_probs: torch.Tensor, atom_mask: torch.Tensor, t: int) -> torch.Tensor:
        """a0_probs with the change of its argmax composition set as certain, at levels t <= from_level."""
        if t > self.from_level:
            return a0_probs
        return self._changed(a0_probs.argmax(-1), a0_probs, atom_mask, a0_probs)

    def sampled(self, a: torch.Tensor, a0_probs: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        """The final one-hot species a with the change of its own composition made."""
        return self._changed(a.argmax(-1), a0_probs, atom_mask, a)
