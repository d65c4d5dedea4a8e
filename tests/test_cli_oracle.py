"""`xtaldiff predict` and `xtaldiff evaluate` through the CLI: happy paths and bad input."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_checkpoint_file
from xtaldiff.cli import app

DATA = Path(__file__).resolve().parent.parent / "data"


def perov_test_rows(n: int) -> list[dict]:
    csv.field_size_limit(1 << 24)
    with gzip.open(DATA / "perov_5" / "test.csv.gz", "rt", newline="") as handle:
        return list(itertools.islice(csv.DictReader(handle), n))


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output


def test_predict_writes_one_row_per_structure(tmp_path):
    rows = perov_test_rows(3)
    folder = tmp_path / "cifs"
    folder.mkdir()
    for row in rows:
        (folder / f"{row['material_id']}.cif").write_text(row["cif"])
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 1\n")
    out = tmp_path / "preds.csv"
    result = run("predict", "--dataset", "perov_5", "--input", str(folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    predictions = {row["id"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    assert len(predictions) == 4
    assert predictions["broken.cif"]["predicted_heat_ref_eV"] == ""
    assert "not a readable CIF" in predictions["broken.cif"]["reason"]
    for row in rows:
        predicted = float(predictions[f"{row['material_id']}.cif"]["predicted_heat_ref_eV"])
        assert abs(predicted - float(row["heat_ref"])) < 0.3
        assert predictions[f"{row['material_id']}.cif"]["structural_valid"] == "True"


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("notes.cif", "this is not a CIF\n", "is not a readable CIF"),
        ("table.csv", "id,formula\n1,NaCl\n", "no 'cif' column"),
        ("structure.xyz", "1\n\nH 0 0 0\n", "expected a .cif file"),
    ],
)
def test_predict_bad_input_is_one_line(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    assert_one_line_error(run("predict", "--dataset", "perov_5", "--input", str(path)), fragment)


def test_predict_missing_file_and_empty_folder(tmp_path):
    missing = run("predict", "--dataset", "mp_20", "--input", str(tmp_path / "absent.csv"))
    assert_one_line_error(missing, "does not exist")
    empty = run("predict", "--dataset", "mp_20", "--input", str(tmp_path))
    assert_one_line_error(empty, "no .cif files")


def test_predict_unknown_dataset(tmp_path):
    result = run("predict", "--dataset", "perov_6", "--input", str(tmp_path))
    assert result.exit_code == 2
    assert "perov_6" in result.output and "Traceback" not in result.output


def test_evaluate_bad_target_and_missing_checkpoint(tmp_path):
    bad_target = run("evaluate", "--checkpoint", "x.safetensors", "--out", str(tmp_path), "--target", "lowest")
    assert_one_line_error(bad_target, "--target must be 'min' or a number")
    missing = run("evaluate", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path))
    assert_one_line_error(missing, "does not exist")


def test_evaluate_writes_the_report(tiny_checkpoint, tmp_path):
    out = tmp_path / "report"
    result = run(
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "-n", "10", "--steps", "5",
        "--cond-n", "5", "--system", "Ba-Ti-O", "--system", "Sr-He-O", "--system-n", "6",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "perov_5" and report["n"] == 10
    assert report["target_is_training_minimum"] and report["target"] == pytest.approx(-0.3461, abs=1e-4)
    rates = report["success_rates"]["all_samples_cdvae_thresholds"]
    assert all(0.0 <= rates[k] <= 1.0 for k in ("SR5", "SR10", "SR15"))
    assert report["provenance"]["checkpoint_sha256"] and report["provenance"]["sampling_steps"] == 5
    assert report["conditioning_error"]["samples_per_target"] == 1
    systems = report["constrained_design"]
    assert [row["system"] for row in systems] == ["Ba-Ti-O", "Sr-He-O"] and all(row["n"] == 6 for row in systems)
    # An untrained model still obeys the element mask: every sample keeps to its system.
    assert all(row["only_system_elements"] == 1.0 for row in systems)
    assert systems[0]["unknown_to_model"] == [] and systems[1]["unknown_to_model"] == ["He"]
    assert systems[1]["every_system_element"] == 0.0  # He cannot be sampled
    # Each system is conditioned on the least value among the training structures made only of its
    # elements, or on the report's target when there are none.
    from model.data import load_split

    train = load_split("perov_5", "train")
    for row, allowed in zip(systems, ({8, 22, 56}, {2, 8, 38}), strict=True):
        inside = [value for i, value in enumerate(train.properties)
                  if set(train.atomic_numbers[train.offsets[i]:train.offsets[i + 1]].tolist()) <= allowed]
        assert row["target"] == pytest.approx(min(inside) if inside else report["target"])
        assert (row["training_in_system"] is None) == (not inside)
    markdown = (out / "report.md").read_text()
    assert "paper, CDI" in markdown and "this checkpoint" in markdown
    assert "Design within chemical systems" in markdown and "| Ba-Ti-O |" in markdown
    with gzip.open(out / "samples.csv.gz", "rt") as handle:
        assert len(list(csv.DictReader(handle))) == 10


def test_evaluate_refuses_a_chemical_system_before_sampling(tiny_checkpoint, tmp_path):
    not_elements = run("evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--system", "Li-Xx-O")
    assert_one_line_error(not_elements, "--system must be distinct element symbols")
    unknown = run("evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--system", "He-Ne")
    assert_one_line_error(unknown, "none of He, Ne is among")
    assert not (tmp_path / "report.json").exists()


def test_evaluate_scores_samples_drawn_elsewhere(tiny_checkpoint, tmp_path):
    from model.checkpoint import load_model
    from model.data import load_split
    from model.report import write_samples
    from model.sampling import design

    model = load_model(tiny_checkpoint, "cpu")
    target = float(load_split("perov_5", "train").properties.min())  # what evaluate conditions on
    structures = design(model, n=6, target=target, steps=4, seed=3, guidance=1.0)
    samples = tmp_path / "drawn" / "tiny_w1.csv.gz"
    write_samples(samples, structures, {
        "checkpoint_sha256": model.sha256, "seed": 3, "steps": 4, "guidance": 1.0, "target": target,
        "device": "elsewhere", "sampling_s": 1.5,
    })
    out = tmp_path / "report"
    result = run("evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--samples", str(samples),
                 "--cond-n", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and report["provenance"]["device"] == "elsewhere"
    assert report["provenance"]["settings"]["guidance"] == 1.0 and report["provenance"]["sampling_steps"] == 4
    with gzip.open(out / "samples.csv.gz", "rt") as handle:
        formulas = [row["formula"] for row in csv.DictReader(handle)]
    assert formulas == [s.composition.reduced_formula for s in structures]
    found = report["sr5_successes"]
    assert found["per_samples"] == 6 and 0 <= found["unique_and_novel"] <= found["unique"] <= found["count"] <= 6
    assert report["constrained_design"] is None  # perov_5 names no default chemical systems

    other = tiny_checkpoint_file(tmp_path / "other.safetensors", seed=1)
    refused = run("evaluate", "--checkpoint", str(other), "--out", str(tmp_path / "x"), "--samples", str(samples))
    assert_one_line_error(refused, "was drawn from checkpoint")

    # A header rewrite (record-evaluation) changes the file's hash, not its weights.
    from model.checkpoint import read_metadata, rewrite_metadata, weights_sha256

    recorded = tmp_path / "recorded.safetensors"
    shutil.copy(tiny_checkpoint, recorded)
    meta = read_metadata(recorded).as_dict()
    meta["training"]["note"] = "header rewritten"
    rewrite_metadata(recorded, meta)
    assert load_model(recorded, "cpu").sha256 != model.sha256
    stale = run("evaluate", "--checkpoint", str(recorded), "--out", str(tmp_path / "y"), "--samples", str(samples))
    assert_one_line_error(stale, "was drawn from checkpoint")  # a file hash alone cannot tell
    by_weights = tmp_path / "drawn" / "tiny_w1_weights.csv.gz"
    write_samples(by_weights, structures, {
        "checkpoint_sha256": model.sha256, "weights_sha256": weights_sha256(tiny_checkpoint), "seed": 3, "steps": 4,
        "guidance": 1.0, "target": target, "device": "elsewhere", "sampling_s": 1.5,
    })
    accepted = run("evaluate", "--checkpoint", str(recorded), "--out", str(tmp_path / "z"), "--samples",
                   str(by_weights), "--cond-n", "0")
    assert accepted.exit_code == 0, accepted.output
    refused = run("evaluate", "--checkpoint", str(other), "--out", str(tmp_path / "x"), "--samples", str(by_weights))
    assert_one_line_error(refused, "was drawn from checkpoint")
    missing = run("evaluate", "--checkpoint", str(other), "--out", str(tmp_path / "x"),
                  "--samples", str(tmp_path / "none.csv.gz"))
    assert_one_line_error(missing, "needs")


def test_sr5_successes_count_distinct_unique_and_novel():
    from pymatgen.core import Lattice, Structure

    from model.metrics import Validity
    from model.report import sr5_successes

    def cubic(a, species):
        return Structure(Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0.5]])

    structures = [cubic(4.0, ["Ba", "O"]), cubic(4.0, ["Ba", "O"]), cubic(4.2, ["Sr", "O"]), cubic(4.3, ["Ca", "O"])]
    valid = Validity(True, True, None)
    invalid = Validity(False, True, "too close")
    found = sr5_successes(
        structures, [0.1, 0.2, 0.3, None], [valid, valid, valid, invalid], [True, True, False], threshold=0.25
    )
    assert found == {"count": 2, "distinct_formulas": 1, "unique": 1, "novel": 2, "unique_and_novel": 1,
                     "per_samples": 4, "space_groups": {"Pm-3m (221)": 2}, "space_group_symprec": 0.1}


def test_a_record_names_weights_by_tensor_hash_or_by_a_file_hash_the_checkpoint_had(tiny_checkpoint):
    from model.checkpoint import file_sha256, names_these_weights, weights_sha256

    assert names_these_weights({"weights_sha256": weights_sha256(tiny_checkpoint)}, tiny_checkpoint)
    assert not names_these_weights({"weights_sha256": "0" * 64, "checkpoint_sha256": file_sha256(tiny_checkpoint)},
                                   tiny_checkpoint)
    assert names_these_weights({"checkpoint_sha256": file_sha256(tiny_checkpoint)}, tiny_checkpoint)
    assert not names_these_weights({}, tiny_checkpoint)  # never evaluated: no hash matches a missing one


def test_space_group_is_found_at_the_service_tolerance_and_p1_for_a_degenerate_cell():
    from pymatgen.core import Lattice, Structure

    from model.metrics import space_group

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert space_group(rocksalt) == ("Fm-3m", 225)
    shaken = rocksalt.copy()
    shaken.translate_sites([0], [0.004, 0, 0])  # 0.017 A: within symprec 0.1, beyond 0.001
    assert space_group(shaken) == ("Fm-3m", 225)
    assert space_group(shaken, symprec=0.001)[1] < 225
    overlapping = Structure(Lattice.cubic(4.0), ["C", "C"], [[0, 0, 0], [0, 0, 0]])
    assert space_group(overlapping) == ("P1", 1)


def fake_report(w: float, sr5: float, distinct: int, n: int = 1000, steps: int = 1000, valid: float = 1.0,
                sampler: str = "rescaled", dataset: str = "perov_5", unique: int | None = None,
                charge_balance: bool = False) -> dict:
    return {
        "dataset": dataset, "n": n,
        "success_rates": {"all_samples_cdvae_thresholds": {"SR5": sr5, "SR10": sr5, "SR15": sr5}},
        "sr5_successes": {"distinct_formulas": distinct, "unique": distinct if unique is None else unique,
                          "per_samples": n},
        "validity": {"both": valid},
        "provenance": {"settings": {"guidance": w, "charge_balance": charge_balance}, "sampling_steps": steps,
                       "sampler": sampler},
    }


def test_default_guidance_is_the_best_sr5_that_keeps_200_distinct_formulas_per_1000():
    from model.evaluation_record import choose_default_guidance

    sweep = [fake_report(0.0, 0.81, 351), fake_report(0.5, 0.93, 260), fake_report(1.0, 0.96, 190),
             fake_report(2.0, 0.99, 57)]
    assert choose_default_guidance(sweep) == 0.5
    assert choose_default_guidance([fake_report(0.0, 0.5, 19, n=100), fake_report(1.0, 0.6, 21, n=100)]) == 1.0
    assert choose_default_guidance([fake_report(1.0, 0.9, 10)]) == 0.0


def test_default_guidance_keeps_half_of_w0s_distinct_formulas_on_mp_20_and_unique_structures_on_carbon_24():
    from model.evaluation_record import choose_default_guidance

    mp_20 = [fake_report(0.0, 0.54, 528, dataset="mp_20"), fake_report(0.5, 0.56, 300, dataset="mp_20"),
             fake_report(1.0, 0.60, 250, dataset="mp_20")]
    assert choose_default_guidance(mp_20) == 0.5  # 250 < 528 / 2, though above perov_5's 200
    # One formula, C: carbon's diversity is its distinct structures.
    carbon = [fake_report(0.0, 0.34, 1, dataset="carbon_24", unique=4),
              fake_report(0.5, 0.40, 1, dataset="carbon_24", unique=2),
              fake_report(1.0, 0.45, 1, dataset="carbon_24", unique=1)]
    assert choose_default_guidance(carbon) == 0.5
    with pytest.raises(ValueError, match="w = 0 report"):
        choose_default_guidance(carbon[1:])


def test_default_steps_are_the_fewest_that_keep_sr5_and_validity_within_002_of_t():
    from model.evaluation_record import choose_default_sampling

    curve = [fake_report(0.0, 0.89, 290), fake_report(0.0, 0.90, 300, steps=250),
             fake_report(0.0, 0.875, 300, steps=100, valid=0.985), fake_report(0.0, 0.80, 300, steps=50),
             fake_report(0.5, 0.99, 200, steps=10)]
    assert choose_default_sampling(curve, 0.0, 1000) == ("rescaled", 100)
    # Validity counts as much as SR5; a dip stops the search even if fewer steps pass again.
    dip = [*curve[:2], fake_report(0.0, 0.89, 300, steps=100, valid=0.97), fake_report(0.0, 0.89, 300, steps=50)]
    assert choose_default_sampling(dip, 0.0, 1000) == ("rescaled", 250)
    assert choose_default_sampling([curve[0], fake_report(0.0, 0.5, 1, steps=250), curve[2]], 0.0, 1000) == (
        "rescaled", 1000)
    assert choose_default_sampling(curve[1:], 0.0, 1000) == ("rescaled", 1000)  # nothing at T to compare with


def test_another_sampler_is_the_default_where_it_keeps_the_papers_quality_in_fewer_steps():
    from model.evaluation_record import choose_default_sampling

    # carbon_24-like: the rescaled corrector fails at 100 steps; the exponential one holds at 250.
    curve = [fake_report(0.0, 0.34, 1), fake_report(0.0, 0.0, 1, steps=100),
             fake_report(0.0, 0.33, 1, steps=250, sampler="exponential"),
             fake_report(0.0, 0.30, 1, steps=100, sampler="exponential"),
             fake_report(0.0, 0.34, 1, steps=100, sampler="paper")]
    assert choose_default_sampling(curve, 0.0, 1000) == ("paper", 100)
    assert choose_default_sampling(curve[:4], 0.0, 1000) == ("exponential", 250)
    # The T-step reference is the paper's sampler: the exponential one at T steps is another curve,
    # and a tie in steps goes to the default sampler.
    tie = [fake_report(0.0, 0.34, 1), fake_report(0.0, 0.34, 1, steps=100),
           fake_report(0.0, 0.40, 1, sampler="exponential"),
           fake_report(0.0, 0.40, 1, steps=100, sampler="exponential")]
    assert choose_default_sampling(tie, 0.0, 1000) == ("rescaled", 100)
    assert choose_default_sampling(tie[2:], 0.0, 1000) == ("rescaled", 1000)


def test_charge_balance_is_the_default_only_where_it_kept_sr5_and_validity_at_the_defaults():
    from model.evaluation_record import choose_charge_balance, choose_default_sampling

    plain = [fake_report(0.0, 0.60, 300, valid=0.68), fake_report(0.5, 0.62, 300, valid=0.66),
             fake_report(0.5, 0.63, 300, steps=100, valid=0.67)]
    better = fake_report(0.5, 0.72, 300, steps=100, valid=0.87, charge_balance=True)
    # A charge-balanced report is not a steps-curve point: the paper's species step is the reference.
    assert choose_default_sampling([*plain, fake_report(0.5, 0.9, 300, steps=10, charge_balance=True)],
                                   0.5, 1000) == ("rescaled", 100)
    assert choose_charge_balance([*plain, better], 0.5, "rescaled", 100, 1000)
    assert not choose_charge_balance(plain, 0.5, "rescaled", 100, 1000)
    # Measured elsewhere than at the defaults, or losing SR5 or validity there: not the default.
    assert not choose_charge_balance([*plain, better], 0.5, "rescaled", 1000, 1000)
    worse_sr5 = fake_report(0.5, 0.62, 300, steps=100, valid=0.87, charge_balance=True)
    worse_validity = fake_report(0.5, 0.72, 300, steps=100, valid=0.60, charge_balance=True)
    assert not choose_charge_balance([*plain, worse_sr5], 0.5, "rescaled", 100, 1000)
    assert not choose_charge_balance([*plain, worse_validity], 0.5, "rescaled", 100, 1000)


def test_record_evaluation_sets_the_default_guidance_that_design_then_uses(tiny_checkpoint, tmp_path):
    from model.checkpoint import file_sha256, load_model, read_metadata
    from model.data import load_split
    from model.report import write_samples
    from model.sampling import design

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    model = load_model(checkpoint, "cpu")
    target = float(load_split("perov_5", "train").properties.min())
    reports = []
    for w, steps, sampler in ((0.0, 50, "rescaled"), (1.0, 50, "rescaled"), (1.0, 10, "rescaled"), (1.0, 5, "paper")):
        samples = tmp_path / f"w{w:g}_{steps}.csv.gz"
        # The reports at 10 and 5 steps score the 50-step structures: as good as T by construction,
        # which is what this test needs of them (the sampler itself is tested in test_sampling.py).
        write_samples(samples, design(model, n=4, target=target, seed=0, guidance=w), {
            "checkpoint_sha256": model.sha256, "seed": 0, "steps": steps, "sampler": sampler, "guidance": w,
            "target": target,
        })
        reports.append(tmp_path / f"report_w{w:g}_{steps}")
        result = run("evaluate", "--checkpoint", str(checkpoint), "--out", str(reports[-1]),
                     "--samples", str(samples), "--cond-n", "0")
        assert result.exit_code == 0, result.output
    duplicate = run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports), str(reports[1]))
    assert_one_line_error(duplicate, "both measure guidance 1 at 50 steps")
    no_full = run("record-evaluation", "--checkpoint", str(checkpoint), str(reports[2]))
    assert_one_line_error(no_full, "no report at T = 50 steps")

    unmeasured = run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports),
                     "--default-guidance", "3")
    assert_one_line_error(unmeasured, "has no report")
    result = run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports), "--default-guidance", "1")
    assert result.exit_code == 0, result.output
    meta = read_metadata(checkpoint)
    assert meta.default_guidance == 1.0
    # The 5-step report ran the paper's sampler, as good as T by construction: it wins.
    assert (meta.default_sampler, meta.default_steps) == ("paper", 5)
    assert "| 10 | rescaled |" in result.output and "| 5 | paper |" in result.output
    metrics = meta.metrics
    assert [(row["steps"], row["sampler"]) for row in metrics["steps_curve"]] == [
        (50, "rescaled"), (10, "rescaled"), (5, "paper")]
    assert metrics["n"] == 4 and metrics["evaluated_sha256"] == model.sha256
    assert [row["guidance"] for row in metrics["sweep"]] == [0.0, 1.0]
    assert metrics["at_default_guidance"]["guidance"] == 1.0
    backs = json.loads((reports[0] / "checkpoint.json").read_text())
    assert backs["sha256"] == file_sha256(checkpoint) and backs["evaluated_sha256"] == model.sha256

    # The header changed, so the file's sha256 did; the same reports are still accepted.
    again = run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports), "--default-guidance", "0")
    assert again.exit_code == 0, again.output
    other = tiny_checkpoint_file(tmp_path / "other.safetensors", seed=4)
    refused = run("record-evaluation", "--checkpoint", str(other), str(reports[0]))
    assert_one_line_error(refused, "evaluated other weights")
    near = tmp_path / "near_target.csv.gz"
    write_samples(near, design(model, n=4, target=target, seed=0, steps=10, atom_counts="near_target"), {
        "checkpoint_sha256": model.sha256, "seed": 0, "steps": 10, "sampler": "rescaled", "guidance": 0.0,
        "target": target, "atom_counts": "near_target",
    })
    result = run("evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "near"),
                 "--samples", str(near), "--cond-n", "0")
    assert result.exit_code == 0, result.output
    near_report = json.loads((tmp_path / "near" / "report.json").read_text())
    assert near_report["provenance"]["settings"]["atom_counts"] == "near_target"
    assert "atom counts from the training structures near the target" in (tmp_path / "near" / "report.md").read_text()
    mixed = run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports), str(tmp_path / "near"))
    assert_one_line_error(mixed, "drew atom counts near the target")

    # As above, the "charge-balanced" report scores the structures of its plain twin: no worse by
    # construction, so it becomes the default (the species step itself is tested in test_charge_balance.py).
    balanced = tmp_path / "balanced.csv.gz"
    write_samples(balanced, design(model, n=4, target=target, seed=0, guidance=1.0), {
        "checkpoint_sha256": model.sha256, "seed": 0, "steps": 5, "sampler": "paper", "guidance": 1.0,
        "target": target, "charge_balance": True,
    })
    result = run("evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "balanced"),
                 "--samples", str(balanced), "--cond-n", "0")
    assert result.exit_code == 0, result.output
    assert "species step charge-balanced" in (tmp_path / "balanced" / "report.md").read_text()
    result = run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports), str(tmp_path / "balanced"),
                 "--default-guidance", "1")
    assert result.exit_code == 0, result.output
    meta = read_metadata(checkpoint)
    assert meta.default_charge_balance is True
    assert "| 5 | paper, charge-balanced |" in result.output
    assert [(row["steps"], row["charge_balance"]) for row in meta.metrics["steps_curve"]] == [
        (50, False), (10, False), (5, False), (5, True)]

    run("record-evaluation", "--checkpoint", str(checkpoint), *map(str, reports), "--default-guidance", "1")
    assert read_metadata(checkpoint).default_charge_balance is False
    designed = run("design", "--checkpoint", str(checkpoint), "--target", "0.5", "-n", "2",
                   "--out", str(tmp_path / "designs"))
    assert designed.exit_code == 0, designed.output
    summary = json.loads((tmp_path / "designs" / "summary.json").read_text())
    assert (summary["guidance"], summary["steps"], summary["sampler"]) == (1.0, 5, "paper")
    assert summary["atom_counts"] == "near_target"
    assert summary["charge_balance"] is False


def test_the_worker_evaluate_and_predict_score_a_structure_alike(tmp_path):
    """One judgement of validity and one prediction per structure, whoever asks: the worker's
    rows, `evaluate`'s report and `xtaldiff predict`, including past SMACT's 10-element guard."""
    from pymatgen.core import Lattice, Structure

    from model.oracle import Oracle
    from model.report import score as report_score
    from worker.scoring import score as worker_score

    symbols = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Ti", "Zr", "Nb", "O"]
    many = Structure(Lattice.cubic(12.0), symbols, [[i / 11, (3 * i % 11) / 11, 0.5] for i in range(11)])
    perovskite = Structure.from_str(perov_test_rows(1)[0]["cif"], fmt="cif")
    structures = [perovskite, many]
    for i, structure in enumerate(structures):
        structure.to(filename=str(tmp_path / f"{i}.cif"))
    out = tmp_path / "preds.csv"
    assert run("predict", "--dataset", "perov_5", "--input", str(tmp_path), "--out", str(out)).exit_code == 0
    predicted = {row["id"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    rows = [{}, {}]
    worker_score(structures, rows, dataset="perov_5", oracle=True)
    validities, predictions = report_score(structures, Oracle.for_dataset("perov_5"), workers=1, progress=False)
    for i, (row, checks, prediction) in enumerate(zip(rows, validities, predictions, strict=True)):
        cli = predicted[f"{i}.cif"]
        assert (row["valid_structure"], row["valid_composition"]) == (checks.structural, checks.compositional)
        as_csv = ["" if v is None else str(v) for v in (checks.structural, checks.compositional)]
        assert [cli["structural_valid"], cli["compositional_valid"]] == as_csv
        assert row["predicted_property"] == prediction.value
        cli_value = cli["predicted_heat_ref_eV"]
        assert (None if cli_value == "" else round(float(cli_value), 6)) == (
            None if prediction.value is None else round(prediction.value, 6))
    assert validities[1].compositional is None and not validities[1].valid
    assert validities[0].valid and predictions[0].value is not None
