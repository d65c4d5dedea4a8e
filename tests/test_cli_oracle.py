"""`xtaldiff predict` and `xtaldiff evaluate` through the CLI: happy paths and bad input."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
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
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "-n", "10", "--steps", "5", "--cond-n", "5"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "perov_5" and report["n"] == 10
    assert report["target_is_training_minimum"] and report["target"] == pytest.approx(-0.3461, abs=1e-4)
    rates = report["success_rates"]["all_samples_cdvae_thresholds"]
    assert all(0.0 <= rates[k] <= 1.0 for k in ("SR5", "SR10", "SR15"))
    assert report["provenance"]["checkpoint_sha256"] and report["provenance"]["sampling_steps"] == 5
    assert report["conditioning_error"]["samples_per_target"] == 1
    markdown = (out / "report.md").read_text()
    assert "paper, CDI" in markdown and "this checkpoint" in markdown
    with gzip.open(out / "samples.csv.gz", "rt") as handle:
        assert len(list(csv.DictReader(handle))) == 10


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

    other = tiny_checkpoint_file(tmp_path / "other.safetensors", seed=1)
    refused = run("evaluate", "--checkpoint", str(other), "--out", str(tmp_path / "x"), "--samples", str(samples))
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
                     "per_samples": 4}
