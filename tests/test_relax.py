"""Relaxation with CHGNet: real structures, real potential (a few seconds on the CPU)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from model import relax as relaxation

DATA = Path(__file__).resolve().parent.parent / "data"


def training_structure(dataset: str, index: int) -> Structure:
    csv.field_size_limit(1 << 24)
    with gzip.open(DATA / dataset / "train.csv.gz", "rt", newline="") as handle:
        for i, row in enumerate(csv.DictReader(handle)):
            if i == index:
                return Structure.from_str(row["cif"], fmt="cif")
    raise IndexError(index)


@pytest.fixture(scope="module")
def small_mp20() -> Structure:
    """The first mp_20 training structure of at most 4 atoms: quick to relax."""
    for i in range(200):
        structure = training_structure("mp_20", i)
        if len(structure) <= 4:
            return structure
    raise AssertionError("no small mp_20 training structure")


def test_a_relaxed_training_structure_barely_moves(small_mp20):
    result = relaxation.relax(small_mp20)
    assert result.error is None and result.converged
    assert abs(result.energy_after - result.energy_before) < 0.02
    assert result.rms_displacement is not None and result.rms_displacement < 0.05
    assert result.relaxed.composition == small_mp20.composition


def test_a_strained_structure_relaxes_and_its_energy_falls(small_mp20):
    strained = small_mp20.copy()
    strained.apply_strain(0.06)
    result = relaxation.relax(strained)
    assert result.error is None and result.converged and result.steps > 0
    assert result.energy_after < result.energy_before - 0.01
    assert result.relaxed.volume < strained.volume
    assert abs(result.relaxed.volume - small_mp20.volume) < abs(strained.volume - small_mp20.volume)


def test_relax_all_stops_each_relaxation_at_max_steps_unconverged(small_mp20):
    strained = small_mp20.copy()
    strained.apply_strain(0.06)
    [capped] = relaxation.relax_all([strained], max_steps=2)
    assert capped.error is None and not capped.converged and capped.steps == 2
    assert capped.energy_after < capped.energy_before


def test_the_service_caps_relaxations_where_the_cli_does_unless_told_otherwise():
    """The settings module stays torch-free, so it repeats the cap instead of importing it."""
    from xtaldiff.settings import Settings

    assert Settings.model_fields["relax_max_fire_steps"].default == relaxation.MAX_STEPS


def left_handed(structure: Structure) -> Structure:
    """The same crystal on a left-handed basis, as half of all generated cells come out."""
    flip = np.array([-1.0, 1.0, 1.0])
    return Structure(Lattice(structure.lattice.matrix * flip[:, None]), structure.species,
                     structure.frac_coords * flip)


def test_a_left_handed_cell_relaxes_as_its_right_handed_twin(small_mp20):
    strained = small_mp20.copy()
    strained.apply_strain(0.06)
    mirrored_basis = left_handed(strained)
    assert np.linalg.det(mirrored_basis.lattice.matrix) < 0
    assert np.allclose(mirrored_basis.cart_coords, strained.cart_coords)
    right, left = relaxation.relax(strained), relaxation.relax(mirrored_basis)
    assert left.error is None and left.converged
    assert left.steps == right.steps and abs(left.energy_after - right.energy_after) < 1e-4
    assert abs(left.relaxed.volume - right.relaxed.volume) < 1e-3


def test_an_isolated_atom_is_reported_not_raised():
    lonely = Structure(Lattice.cubic(30.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    result = relaxation.relax(lonely)
    assert result.relaxed is None and result.error and "CHGNet" in result.error
    assert result.as_dict()["converged"] is False


def test_relax_all_reports_progress_and_stops_when_asked(small_mp20):
    seen = []
    results = relaxation.relax_all([small_mp20, small_mp20], progress=lambda d, t: seen.append((d, t)))
    assert len(results) == 2 and seen == [(1, 2), (2, 2)]

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        relaxation.relax_all([small_mp20, small_mp20, small_mp20], progress=stop)


def test_the_weights_are_read_without_unpickling_objects(monkeypatch):
    import torch

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    relaxation.load_chgnet.cache_clear()
    relaxation._calculator.cache_clear()
    try:
        assert relaxation.load_chgnet() is not None
    finally:
        relaxation.load_chgnet.cache_clear()
        relaxation._calculator.cache_clear()
    assert calls == [True]


def test_the_report_counts_survivors_with_the_oracle_and_chgnet_on_the_relaxed_structures(small_mp20,
                                                                                          monkeypatch):
    from model import formation
    from model.oracle import Oracle
    from model.report import relaxation_report

    oracle = Oracle.for_dataset("mp_20")
    strained = small_mp20.copy()
    strained.apply_strain(0.06)
    predicted = [p.value for p in oracle.predict([small_mp20], workers=1)]
    elements = [el.symbol for el in small_mp20.composition.elements]
    # References far below any real energy make every formation energy huge: no CHGNet survivor.
    monkeypatch.setattr(formation, "elemental_references",
                        lambda dataset: {el: {"energy_per_atom": -100.0} for el in elements})
    lenient = relaxation_report([small_mp20, strained], oracle, threshold=predicted[0] + 1.0, workers=1,
                                dataset="mp_20")
    assert lenient["relaxed"] == 2 and lenient["still_sr5_success_by_oracle"] == 1.0
    assert lenient["still_sr5_success_by_chgnet_formation_energy"] == 0.0
    assert lenient["converged"] == 1.0 and lenient["failed"] == 0
    assert 0 <= lenient["median_rms_displacement"] < 0.1 and lenient["median_energy_drop_ev_per_atom"] > 0
    # References at zero make the formation energy CHGNet's energy per atom, below any threshold here.
    monkeypatch.setattr(formation, "elemental_references",
                        lambda dataset: {el: {"energy_per_atom": 0.0} for el in elements})
    assert relaxation.relax(small_mp20).energy_after < predicted[0] - 1.0
    strict = relaxation_report([small_mp20], oracle, threshold=predicted[0] - 1.0, workers=1, dataset="mp_20")
    assert strict["still_sr5_success_by_oracle"] == 0.0
    assert strict["still_sr5_success_by_chgnet_formation_energy"] == 1.0
    assert relaxation_report([small_mp20], oracle, threshold=0.0, workers=1, dataset="perov_5")[
        "still_sr5_success_by_chgnet_formation_energy"] is None


def test_design_relax_writes_the_relaxed_cif_beside_the_generated_one(tiny_checkpoint, tmp_path, monkeypatch,
                                                                      small_mp20):
    import json

    from typer.testing import CliRunner

    import model.sampling
    from xtaldiff.cli import app

    # The tiny test model's cells are noise; relaxing two known structures checks what --relax writes.
    lonely = Structure(Lattice.cubic(30.0), ["Sr", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    monkeypatch.setattr(model.sampling, "design", lambda *args, **kwargs: [small_mp20, lonely])
    out = tmp_path / "designs"
    result = CliRunner().invoke(app, ["design", "--checkpoint", str(tiny_checkpoint), "--target", "0.1",
                                      "-n", "2", "--relax", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "summary.json").read_text())["structures"]
    first, second = rows[0]["relaxation"], rows[1]["relaxation"]
    relaxed = Structure.from_file(out / first["file"])
    assert first["converged"] and relaxed.composition == small_mp20.composition
    assert first["file"] == rows[0]["file"].replace(".cif", "_relaxed.cif")
    assert second["error"] and "file" not in second


def test_a_cell_denser_than_any_solid_is_refused_before_chgnet_sees_it(monkeypatch):
    dense = Structure(Lattice.cubic(1.3), ["Si"], [[0, 0, 0]])  # 2.2 A^3 per atom
    monkeypatch.setattr(relaxation, "_calculator", lambda: pytest.fail("CHGNet was called"))
    result = relaxation.relax(dense)
    assert result.relaxed is None and "denser than any solid" in result.error and result.steps == 0


def test_relaxation_stops_where_the_cell_collapses_or_swells():
    assert relaxation._volume_problem(40.0, 40.0, 4) is None
    assert "denser than any solid" in relaxation._volume_problem(10.0, 40.0, 4)
    assert "swelled to 9.0 times" in relaxation._volume_problem(360.0, 40.0, 4)
