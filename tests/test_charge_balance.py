"""The charge-balanced species step: which change it picks, and what it leaves alone."""

from collections import Counter

import pytest
import torch

from model.charge_balance import ChargeBalance, balanced, nearest_balanced_change
from model.diffusion import DiffusionConfig, Schedule, reverse_diffusion
from model.network import DenoiserOutput

VOCAB = ["Li", "O", "F", "Na", "Cl"]
LI, O, F, NA, CL = range(len(VOCAB))


def log_probs_for(classes: list[int], second: dict[int, tuple[int, float]] | None = None) -> torch.Tensor:
    """Log-probabilities whose argmax is `classes`; second[atom] = (class, probability) gives an
    atom a runner-up."""
    probs = torch.full((len(classes), len(VOCAB)), 0.01)
    for atom, c in enumerate(classes):
        probs[atom, c] = 0.9
    for atom, (c, p) in (second or {}).items():
        probs[atom, c] = p
    return (probs / probs.sum(-1, keepdim=True)).log()


def predicted(classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(classes), log_probs_for(classes)


def test_the_cost_of_a_change_is_the_predictions_not_the_compositions():
    # The atoms are LiO2 while the denoiser predicts Li2O: atom 1, which it sees as Li, changes.
    change = nearest_balanced_change(torch.tensor([LI, O, O]), log_probs_for([LI, LI, O]), VOCAB)
    assert change == ([1], LI)


def test_a_balanced_composition_is_left_alone():
    assert balanced(Counter({LI: 2, O: 1}), VOCAB)
    assert nearest_balanced_change(*predicted([LI, LI, O]), VOCAB) is None


def test_the_atom_most_likely_to_be_the_other_element_is_the_one_changed():
    # LiF3 fails; one F becoming Li makes Li2F2 (LiF). Atom 3 leans most to Li.
    log_probs = log_probs_for([LI, F, F, F], second={1: (LI, 0.05), 2: (LI, 0.02), 3: (LI, 0.3)})
    assert not balanced(Counter({LI: 1, F: 3}), VOCAB)
    assert nearest_balanced_change(torch.tensor([LI, F, F, F]), log_probs, VOCAB) == ([3], LI)


def test_several_atoms_move_when_one_is_not_enough():
    # LiCl5: one Cl becoming Li leaves LiCl2 (fails), two make Li3Cl3 (LiCl).
    log_probs = log_probs_for([LI, CL, CL, CL, CL, CL], second={4: (LI, 0.2), 5: (LI, 0.3)})
    assert not balanced(Counter({LI: 1, CL: 5}), VOCAB) and not balanced(Counter({LI: 2, CL: 4}), VOCAB)
    atoms, target = nearest_balanced_change(torch.tensor([LI, CL, CL, CL, CL, CL]), log_probs, VOCAB)
    assert target == LI and sorted(atoms) == [4, 5]


def test_no_element_is_dropped_to_pass():
    # NaCl2: Cl -> Na gives Na2Cl (fails); the only passing change, Na -> Cl, would leave
    # elemental chlorine, which SMACT counts as valid. It is not taken.
    assert balanced(Counter({CL: 3}), VOCAB)
    assert nearest_balanced_change(*predicted([NA, CL, CL]), VOCAB) is None


def test_the_step_waits_for_its_level_and_leaves_padding_and_balanced_cells_alone():
    constraint = ChargeBalance(VOCAB, from_level=10)
    probs = torch.stack([log_probs_for([LI, F, F, F], second={3: (LI, 0.3)}).exp(),
                         log_probs_for([NA, CL, LI, F]).exp()])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    assert torch.equal(constraint.predicted(probs, mask, 11), probs)
    changed = constraint.predicted(probs, mask, 10)
    assert torch.equal(changed[0, 3], torch.nn.functional.one_hot(torch.tensor(LI), len(VOCAB)).float())
    assert torch.equal(changed[0, :3], probs[0, :3])
    assert torch.equal(changed[1], probs[1])


def test_the_last_species_are_balanced_whatever_the_prediction_was():
    # Sampled LiF3 where the prediction was LiF: the atom it saw likeliest Li becomes Li.
    constraint = ChargeBalance(VOCAB, from_level=0)
    probs = log_probs_for([LI, F, LI, F], second={1: (LI, 0.2)}).exp().unsqueeze(0)
    sampled = torch.nn.functional.one_hot(torch.tensor([[LI, F, F, F]]), len(VOCAB)).float()
    settled = constraint.sampled(sampled, probs, torch.ones(1, 4, dtype=torch.bool))
    assert settled.argmax(-1).tolist() == [[LI, F, LI, F]]


@pytest.mark.parametrize("with_constraint", [False, True])
def test_the_sampler_ends_on_the_balanced_composition(with_constraint):
    # A stand-in denoiser sure of LiF3 (atom 3 its least sure F): the paper's step samples LiF3,
    # the charge-balanced one LiF.
    logits = 8 * log_probs_for([LI, F, F, F], second={3: (LI, 0.3)})

    def denoise(a, frac, lattice, t):
        B = a.shape[0]
        return DenoiserOutput(torch.zeros_like(frac), logits.expand(B, -1, -1), torch.zeros(B, 3, 3))

    schedule = Schedule(DiffusionConfig(timesteps=50, lambda_draws=100))
    mask = torch.ones(8, 4, dtype=torch.bool)
    constraint = ChargeBalance(VOCAB, from_level=50) if with_constraint else None
    _, _, species = reverse_diffusion(denoise, schedule, mask, torch.ones(len(VOCAB), dtype=torch.bool), 50,
                                      1e-5, 10.0, torch.Generator().manual_seed(0), species_constraint=constraint)
    expected = [LI, F, F, LI] if with_constraint else [LI, F, F, F]
    assert species.tolist() == [expected] * 8
