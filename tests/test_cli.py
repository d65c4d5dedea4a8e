"""The `xtaldiff` command: a design run end to end, and one clear line for every bad argument."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from pymatgen.core import Composition
from typer.testing import CliRunner

from model.checkpoint import read_metadata
from model.training import state_path
from xtaldiff.cli import app
from xtaldiff.training_systems import training_reference

runner = CliRunner()


def test_design_writes_cifs_and_summary(tiny_checkpoint, tmp_path):
    out = tmp_path / "designs"
    result = runner.invoke(app, ["design", "--checkpoint", str(tiny_checkpoint), "--target", "-0.2", "-n", "3",
                                 "--elements", "Sr,Ti,O", "--steps", "10", "--seed", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and summary["steps"] == 10 and summary["target"] == -0.2
    assert len(summary["structures"]) == 3
    # The untrained test model may collapse a cell, which pymatgen cannot read back from CIF;
    # the files are checked as text and the summary through its formulas.
    for row in summary["structures"]:
        assert (out / row["file"]).read_text().startswith("# generated using pymatgen")
        assert {el.symbol for el in Composition(row["formula"])} <= {"Sr", "Ti", "O"}
        assert row["num_atoms"] == 5
        # Scored by default, as the service scores its jobs.
        assert isinstance(row["valid_structure"], bool)
        assert (row["predicted_property"] is None) == (row["prediction_note"] is not None)
        assert isinstance(row["novel"], bool) == row["valid_structure"]
    rows = summary["structures"]
    valid = sum(bool(r["valid_structure"] and r["valid_composition"]) for r in rows)
    predicted = sum(r["predicted_property"] is not None for r in rows)
    assert f"{valid} valid" in result.stdout and f", {predicted} predicted, " in result.stdout
    assert f"{sum(r['novel'] is True for r in rows)} new to perov_5" in result.stdout

    unscored = tmp_path / "unscored"
    result = runner.invoke(app, ["design", "--checkpoint", str(tiny_checkpoint), "--target", "-0.2", "-n", "3",
                                 "--elements", "Sr,Ti,O", "--steps", "10", "--seed", "4", "--no-score",
                                 "--out", str(unscored)])
    assert result.exit_code == 0, result.output
    plain = json.loads((unscored / "summary.json").read_text())["structures"]
    assert [r["formula"] for r in plain] == [r["formula"] for r in rows]
    assert all(r["valid_structure"] is None and r["predicted_property"] is None for r in plain)
    assert "valid" not in result.stdout


def test_design_with_relax_writes_each_relaxed_cell_scored_as_the_service_scores_it(tiny_checkpoint, tmp_path):
    out = tmp_path / "relaxed"
    result = runner.invoke(app, ["design", "--checkpoint", str(tiny_checkpoint), "--target", "-0.2", "-n", "3",
                                 "--elements", "Sr,Ti,O", "--steps", "10", "--seed", "4", "--relax",
                                 "--max-fire-steps", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "summary.json").read_text())["structures"]
    relaxed = [row for row in rows if row["relaxation"]["error"] is None]
    # This seed's untrained model collapses one cell, which is refused, and leaves two to relax.
    assert len(relaxed) == 2 and all("relaxed_cif" not in row for row in rows)
    for row in relaxed:
        record = row["relaxation"]
        assert record["steps"] <= 3 and record["file"] == row["file"].replace(".cif", "_relaxed.cif")
        assert (out / record["file"]).read_text().startswith("# generated using pymatgen")
        assert isinstance(record["valid"], bool)
        assert (record["predicted_property"] is None) == (record["prediction_note"] is not None)
    refused = [row["relaxation"] for row in rows if row["relaxation"]["error"] is not None]
    assert all(r["steps"] == 0 and "file" not in r for r in refused)

    bad = runner.invoke(app, ["design", "--checkpoint", str(tiny_checkpoint), "--relax", "--max-fire-steps", "0",
                              "--out", str(tmp_path / "never")])
    assert bad.exit_code != 0 and not (tmp_path / "never").exists()


def test_design_without_a_target_runs_at_the_least_among_the_elements_training_structures(tiny_checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "xtaldiff", "design", "--checkpoint", str(tiny_checkpoint), "-n", "2", "--steps", "5",
         "--elements", "Sr,Ti,O", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    system = training_reference("perov_5", ["Sr", "Ti", "O"])
    assert json.loads((tmp_path / "summary.json").read_text())["target"] == system.minimum
    assert f"no target given: ran at {system.minimum:.4g} eV" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "nan"], "--target must be a finite number"),
        (["--target", "0.1", "-n", "0"], "-n must be at least 1"),
        (["--target", "0.1", "--elements", "Li,Qq"], "'Qq' is not an element symbol"),
        (["--target", "0.1", "--elements", "Pu,Am"], "none of Pu, Am is among"),
        (["--target", "0.1", "--steps", "100000"], "steps must be between"),
        (["--elements", "Ba"], "give a target: no structure of perov_5's training split is made only of Ba"),
    ],
)
def test_bad_design_arguments_exit_with_one_line(tiny_checkpoint, tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "xtaldiff", "design", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path),
         *args],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_checkpoint_and_unknown_dataset_are_one_line_errors(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "xtaldiff", "design", "--checkpoint", str(tmp_path / "none.safetensors"),
         "--target", "0", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    unknown = subprocess.run([sys.executable, "-m", "xtaldiff", "train", "--dataset", "perov_6"],
                             capture_output=True, text=True)
    assert unknown.returncode != 0 and "perov_6" in unknown.stderr and "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr


def test_train_resume_errors_are_one_line(tmp_path, tiny_checkpoint):
    def train(*args):
        return subprocess.run([sys.executable, "-m", "xtaldiff", "train", "--dataset", "perov_5", "--resume",
                               "--state-dir", str(tmp_path / "states"), *args], capture_output=True, text=True)

    nothing = train("--out", str(tmp_path / "none.safetensors"))
    assert nothing.returncode == 2 and "neither a training state" in nothing.stderr
    # The tiny checkpoint's network is not the paper-size one this command would train.
    other_shape = train("--out", str(tiny_checkpoint), "--epochs", "1")
    assert other_shape.returncode == 2 and "of another shape" in other_shape.stderr
    for result in (nothing, other_shape):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sigterm_ends_training_after_the_epoch_with_checkpoint_and_resume_state(tmp_path):
    out, states = tmp_path / "run.safetensors", tmp_path / "states"
    run = subprocess.Popen(
        [sys.executable, "-m", "xtaldiff", "train", "--dataset", "perov_5", "--epochs", "20", "--eval-every", "5",
         "--blocks", "1", "--d-model", "32", "--freqs", "4", "--batch-size", "1024", "--out", str(out),
         "--state-dir", str(states)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    seen, deadline = b"", time.monotonic() + 120
    while b"%|" not in seen:  # tqdm draws its bar once training began, after the handler is in place
        assert time.monotonic() < deadline and run.poll() is None, seen.decode()
        seen += os.read(run.stderr.fileno(), 4096)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=300)
    stderr = (seen + stderr).decode()
    assert run.returncode == 0, stderr
    assert "SIGTERM: stopping after this epoch" in stderr and "Traceback" not in stderr
    assert json.loads(stdout)["epochs"] == 1
    assert read_metadata(out).training["epochs"] == 1
    assert state_path(out, states).exists()
