"""scripts/gpu_train.py, the one command run on a lent GPU machine, on the CPU with what that machine lacks."""

import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The GPU machine has no plotly (pymatgen's phase diagram imports it) and no pydantic; the script's spawned
# processes inherit PYTHONPATH, where these stand-ins fail to import as the missing packages would.
MISSING_ON_THE_GPU_MACHINE = ("plotly", "pydantic", "pydantic_settings")


def test_sampling_only_packs_each_guidance_and_step_count_with_its_sidecar(tmp_path, tiny_checkpoint):
    missing = tmp_path / "missing"
    missing.mkdir()
    for name in MISSING_ON_THE_GPU_MACHINE:
        (missing / f"{name}.py").write_text(f"raise ImportError('no {name} on the GPU machine')\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "scripts/gpu_train.py", "--out", str(out),
         "--checkpoint", str(tiny_checkpoint), "-n", "3", "--steps", "4,2", "--sampler", "exponential",
         "--guidance", "0,0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(missing), str(ROOT)])},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with tarfile.open(out / "samples.tgz") as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    samples = tmp_path / "unpacked" / "samples"
    for w in ("0", "0.5"):
        for steps in (4, 2):
            name = f"{tiny_checkpoint.stem}_w{w}_steps{steps}_exponential"
            sidecar = json.loads((samples / f"{name}.json").read_text())
            assert (sidecar["n"], sidecar["steps"], sidecar["guidance"], sidecar["sampler"]) == (
                3, steps, float(w), "exponential")
            with gzip.open(samples / f"{name}.csv.gz", "rt") as rows:
                assert len(rows.read().strip().splitlines()) == 1 + 3
    assert len(list(samples.iterdir())) == 2 * 2 * 2
    assert not (out / "samples").exists()
