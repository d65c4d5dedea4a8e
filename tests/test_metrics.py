"""Validity, uniqueness, novelty and success rates on real and hand-made structures."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from model import metrics
from model.data import load_split
from xtaldiff.datasets import DATASETS


def training_structures(dataset: str, n: int) -> list[Structure]:
    arrays = load_split(dataset, "train", limit=n)
    offsets = arrays.offsets
    return [
        Structure(
            Lattice(arrays.lattices[i]),
            arrays.atomic_numbers[offsets[i] : offsets[i + 1]],
            arrays.frac_coords[offsets[i] : offsets[i + 1]],
        )
        for i in range(len(arrays))
    ]


@pytest.fixture(scope="module")
def perovskites() -> list[Structure]:
    return training_structures("perov_5", 40)


def test_real_structures_are_valid(perovskites):
    checks = [metrics.validity(s) for s in perovskites[:10]]
    assert all(c.structural for c in checks), [c.reason for c in checks]


def test_two_atoms_a_tenth_of_an_angstrom_apart_are_invalid():
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.025, 0, 0]])
    check = metrics.validity(close)
    assert not check.structural and not check.valid
    assert "0.100 A apart" in check.reason


def test_periodic_images_count_for_the_shortest_distance():
    # 0.02 and 0.98 along a are 0.16 A apart through the cell boundary.
    across = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0.02, 0, 0], [0.98, 0, 0]])
    assert not metrics.validity(across).structural


def test_collapsed_cell_is_invalid():
    flat = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 0.005]]), ["Fe"], [[0, 0, 0]])
    check = metrics.validity(flat)
    assert not check.structural and "volume" in check.reason


@pytest.mark.parametrize(
    ("species", "valid"),
    [
        (["Na", "Cl"], True),  # Na+ Cl-
        (["Na", "Cl", "Cl"], False),  # no neutral assignment
        (["Fe", "Fe"], True),  # single element
        (["Fe", "Ni"], True),  # all-metal alloy
        (["Cs", "F", "O"], False),  # Cs+ F- O2- cannot balance
        (["Sr", "Ti", "O", "O", "O"], True),  # SrTiO3
    ],
)
def test_compositional_validity(species, valid):
    coords = [[i / len(species), 0.5 * (i % 2), 0.5] for i in range(len(species))]
    structure = Structure(Lattice.cubic(3.0 * len(species)), species, coords)
    check = metrics.validity(structure)
    assert check.compositional is valid
    assert (check.reason is None) is valid


def test_uniqueness_finds_duplicates_under_translation_and_supercell(perovskites):
    first, second = perovskites[0], perovskites[1]
    translated = first.copy()
    translated.translate_sites(range(len(first)), [0.2, 0.1, 0.3])
    supercell = first.make_supercell([2, 1, 1], in_place=False)
    result = metrics.uniqueness([first, second, translated, supercell, second])
    assert result.first_match == [0, 1, 0, 0, 1]
    assert result.unique == 2
    assert result.fraction == pytest.approx(0.4)


def test_novelty_against_training_structures(perovskites):
    training = perovskites[:20]
    copy = training[3].copy()
    copy.perturb(0.01, min_distance=0.0)  # StructureMatcher tolerates small displacements
    stretched = training[3].copy()
    stretched.apply_strain([0.6, 0.0, 0.0])  # same composition, beyond the 20% length tolerance
    result = metrics.novelty([copy, stretched, perovskites[30]], training)
    assert result.novel[0] is False
    assert result.novel[1] is True
    expected_third = not any(metrics.MatchIndex().matcher.fit(perovskites[30], t) for t in training)
    assert result.novel[2] is expected_third


def test_capped_groups_still_find_the_nearest_duplicate():
    carbons = training_structures("carbon_24", 12)
    result = metrics.novelty(carbons[:3], carbons, max_candidates=1)
    assert result.novel == [False, False, False]
    assert result.capped_queries > 0


def test_success_rates_count_unpredicted_as_failures():
    values = [0.1, None, 0.5, 1.0]
    assert metrics.success_rates(values, [0.2, 0.6, 2.0]) == [0.25, 0.5, 0.75]


def test_grouped_success_rates_take_the_best_of_each_group():
    # 20 values -> 2 groups; CDVAE's reshape puts even indices in group 0, odd in group 1.
    values = [5.0] * 20
    values[4] = 0.0  # group 0 succeeds
    values[7] = None
    assert metrics.grouped_success_rates(values, [1.0]) == [0.5]
    with pytest.raises(ValueError, match="at least 10"):
        metrics.grouped_success_rates(values[:9], [1.0])


def test_training_thresholds_reproduce_the_documented_percentiles():
    properties = load_split("perov_5", "train").properties
    thresholds = metrics.training_thresholds(properties)
    # data/README.md: perov_5 train p5/p10/p15 = CDVAE's hard-coded thresholds.
    assert thresholds == pytest.approx(list(DATASETS["perov_5"].cdvae_thresholds), abs=1e-4)


def test_conditioning_error_ignores_but_counts_failures():
    error = metrics.conditioning_error([1.0, 1.0, 2.0], [1.5, None, 1.0])
    assert error.mean_absolute_error == pytest.approx(0.75)
    assert (error.predicted, error.failed) == (2, 1)
    assert metrics.conditioning_error([1.0], [None]).mean_absolute_error is None


def test_metrics_on_empty_sets():
    assert metrics.success_rates([], [0.0]) == [0.0]
    assert metrics.uniqueness([]).fraction == 0.0


def test_worker_scoring_and_predict_judge_a_structure_alike_even_past_ten_elements():
    from pymatgen.core import Lattice, Structure

    from model.metrics import validity
    from worker.scoring import score

    symbols = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Ti", "Zr", "Nb", "O"]  # 11 elements
    many = Structure(Lattice.cubic(12.0), symbols, [[i / 11, (3 * i % 11) / 11, 0.5] for i in range(11)])
    perovskite = Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    for structure in (many, perovskite):
        checks = validity(structure)
        row = {}
        score([structure], [row], dataset="perov_5", oracle=False)
        assert (row["valid_structure"], row["valid_composition"], row["invalid_reason"]) == (
            checks.structural, checks.compositional, checks.reason)
    unchecked = validity(many)
    assert unchecked.compositional is None and not unchecked.valid
    assert "composition not checked: 11 distinct elements" in unchecked.reason
    assert validity(perovskite).valid


def test_an_ill_conditioned_cell_is_matched_in_its_niggli_cell():
    # A near-singular basis like those an untrained model emits: pymatgen's Niggli reduction of
    # it ran for 27 s, and one such cell held a worker's job for minutes.
    basis = [[-12.486054, -15.850917, 9.653592], [-5.569528, 4.91082, -11.073464], [-26.019358, -24.077183, 8.582213]]
    structure = Structure(Lattice(basis), ["Ba", "Ti", "O", "O", "O"],
                          [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.3, 0.9, 0.4], [0.8, 0.5, 0.05], [0.45, 0.35, 0.7]])
    cell = metrics.niggli_cell(structure)
    a, b, c = cell.lattice.abc
    assert a <= b <= c and cell.volume == pytest.approx(structure.volume)
    assert cell.composition == structure.composition
    assert metrics.uniqueness([structure, structure.copy()]).unique == 1
