"""The report's pure parts: the success-rate section, its variants, the plausibility flag, and
the training reference of a chemical system."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from model import metrics
from model.report import plausible_range, stability_report, success_rate_section, system_reference
from xtaldiff.datasets import DATASETS


def test_success_rate_section_labels_every_variant():
    training = np.linspace(-0.35, 5.0, 101)  # perov_5-like range
    low, high = plausible_range(training)
    assert (low, high) == pytest.approx((-5.7, 10.35))
    # 10 samples: one far below the training range, one success, one invalid, the rest too high.
    values = [-1e4, 0.3, None] + [2.0] * 7
    section = success_rate_section(values, "perov_5", training)
    assert section["cdvae_thresholds"]["SR5"] == DATASETS["perov_5"].cdvae_thresholds[0]
    assert section["all_samples_cdvae_thresholds"]["SR5"] == pytest.approx(0.2)
    assert section["all_samples_cdvae_thresholds_implausible_fail"]["SR5"] == pytest.approx(0.1)
    assert section["training_thresholds"]["SR5"] == pytest.approx(np.percentile(training, 5))
    # One group of 10: its best value (-1e4) succeeds.
    assert section["cdvae_grouped_best_of_10"]["SR15"] == 1.0


def test_grouped_variant_needs_ten_samples():
    section = success_rate_section([0.1, 0.2], "perov_5", np.linspace(0.0, 1.0, 11))
    assert "cdvae_grouped_best_of_10" not in section


def test_the_one_distribution_matches_numpy_for_the_job_summary_and_the_report():
    import numpy as np

    from xtaldiff.summary import QUANTILES, distribution

    values = [0.3, -1.2, 4.5, 2.2, 2.2, 9.0, -0.4]
    for quantiles in (QUANTILES, (0.05, 0.25, 0.5, 0.75, 0.95)):
        spread = distribution(values, quantiles)
        assert spread["quantiles"] == pytest.approx({f"{q:g}": np.percentile(values, 100 * q) for q in quantiles})
        assert (spread["count"], spread["min"], spread["max"]) == (7, -1.2, 9.0)
        assert spread["std"] == pytest.approx(np.std(values)) and spread["mean"] == pytest.approx(np.mean(values))
    assert distribution([1.5])["quantiles"]["0.9"] == 1.5


def test_a_system_is_measured_against_the_training_structures_made_only_of_its_elements():
    cubic = Lattice.cubic(4.0)
    training = [
        Structure(cubic, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(cubic, ["Na"], [[0, 0, 0]]),
        Structure(cubic, ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),  # Li is outside Na-Cl
        Structure(cubic, ["Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]
    values = np.array([-2.0, 0.0, -3.0, 0.5])
    reference = system_reference(training, values, ("Na", "Cl"))
    assert reference["count"] == 3 and reference["minimum"] == -2.0
    assert reference["p5"] == pytest.approx(np.percentile([-2.0, 0.0, 0.5], 5))
    assert reference["median"] == 0.0
    assert system_reference(training, values, ("K", "Br")) is None


def test_stability_counts_samples_near_the_hull_and_those_also_unique_and_novel():
    perovskite = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"],
                                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = [perovskite, perovskite.copy(), rocksalt]
    validities = [metrics.validity(s) for s in structures]
    assert all(v.valid for v in validities)
    # Far under SrTiO3's hull (both copies near it, one of them unique), far over NaCl's.
    values = [-9.0, -9.0, 5.0]
    unique = metrics.Uniqueness(first_match=[0, 0, 2], capped_queries=0)
    novel = metrics.Novelty(novel=[True, True, True], capped_queries=0)
    stability = stability_report(structures, values, validities, unique, novel, "mp_20")
    assert stability["near_hull"] == pytest.approx(2 / 3) and stability["stable_unique_novel"] == pytest.approx(1 / 3)
    assert stability_report(structures, values, validities, unique, novel, "perov_5") is None
