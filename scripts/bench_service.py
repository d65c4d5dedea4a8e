"""Benchmark of the inverse-design service; prints numbers, asserts nothing.

1. Worker: structures/s end to end (POST /design until the job succeeded, as a client sees
   it) for perov_5- and mp_20-shaped checkpoints, and how much of that wall time is not the
   worker's own work (queueing, polling, the API).
2. API: requests/s and p50/p99 latency of GET /jobs/{id} (a job of 100 structures) and of
   POST /design, under concurrent keep-alive clients on loopback (wrk: apt-get install wrk).

Embedded (SQLite, no servers):    .venv/bin/python scripts/bench_service.py
Distributed (an empty database):  .venv/bin/python scripts/bench_service.py \
    --database-url postgresql+psycopg://postgres@127.0.0.1/bench --broker-url redis://127.0.0.1/5

Checkpoints: checkpoints/<dataset>_cdi.safetensors when present, else an untrained network of
the default (paper) size with that dataset's metadata (or always, with --untrained): sampling
cost depends on the shapes, not on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
XTALDIFF = [sys.executable, "-c", "from xtaldiff.cli import app; app()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checkpoint_for(dataset: str, directory: Path, *, untrained: bool) -> Path:
    trained = REPO / "checkpoints" / f"{dataset}_cdi.safetensors"
    if trained.is_file() and not untrained:
        return trained
    from model.checkpoint import save_checkpoint
    from model.data import checkpoint_metadata, load_split
    from model.diffusion import DiffusionConfig, Schedule
    from model.network import Denoiser, DenoiserConfig

    meta = checkpoint_metadata(load_split(dataset, "train"), dataset)
    meta["training"] = {"epochs": 0, "note": "untrained, for benchmarking shapes"}
    network = Denoiser(DenoiserConfig(num_classes=len(meta["elements"])))
    path = directory / f"{dataset}_bench.safetensors"
    save_checkpoint(path, network, Schedule(DiffusionConfig()), meta)
    return path


def start_service(args, checkpoints: list[Path], data_dir: Path, port: int, extra_env: dict | None = None) -> list:
    env = {**os.environ, "XTALDIFF_DATA_DIR": str(data_dir),
           "XTALDIFF_BUNDLED_CHECKPOINTS": json.dumps([str(p) for p in checkpoints]),
           "XTALDIFF_ORACLE": str(args.oracle).lower(), "XTALDIFF_MAX_NUM_SAMPLES": "100000",
           **(extra_env or {})}
    log = open(data_dir.parent / "service.log", "ab")
    spawn = dict(env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                 start_new_session=True)
    serve = [*XTALDIFF, "serve", "--port", str(port), "--log-level", "warning",
             "--workers", str(args.api_workers)]
    if args.database_url is None:
        return [subprocess.Popen(serve, **spawn)]
    urls = ["--database-url", args.database_url]
    subprocess.run([*XTALDIFF, "migrate", *urls], check=True, env=env, cwd=REPO)
    urls += ["--broker-url", args.broker_url]
    return [subprocess.Popen([*XTALDIFF, "worker", *urls, "--log-level", "warning"], **spawn),
            subprocess.Popen([*serve, *urls, "--no-embedded-worker"], **spawn)]


def wait_healthy(base: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok":
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise SystemExit("the service did not become healthy (see service.log)")


def run_job(base: str, body: dict) -> dict:
    response = httpx.post(f"{base}/design", json=body, timeout=30)
    response.raise_for_status()
    location = base + response.headers["location"]
    while True:
        job = httpx.get(location, timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['id']} {job['status']}: {job['error']}")
            return job
        time.sleep(0.2)


def bench_worker(base: str, model: str, dataset: str, args) -> dict:
    run_job(base, {"model": model, "target": 0.0 if dataset != "carbon_24" else -154.0,
                   "num_samples": 2, "steps": 20})  # loads the model (and the oracle)
    job = run_job(base, {"model": model, "target": args.targets[dataset],
                         "num_samples": args.samples, "steps": args.steps, "seed": 0})
    wall, worker = job["timings"]["wall_s"], job["timings"]["worker"]
    return {
        "dataset": dataset, "model": model, "structures": args.samples, "steps": args.steps,
        "oracle": args.oracle, "wall_s": wall,
        "structures_per_s": round(args.samples / wall, 3),
        "worker_s": worker,
        "outside_worker_s": round(wall - worker["total"], 3),
        "outside_worker_fraction": round((wall - worker["total"]) / wall, 4),
    }


WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "%s", "target": 0.5, "num_samples": 1, "steps": 20}'
"""


@contextmanager
def paused_workers(database_url: str):
    from xtaldiff import db, queries

    with db.session_factory(database_url)() as session:
        pids = [w.pid for w in queries.recent_workers(session, within_s=60)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def wrk(url: str, *, connections: int, seconds: int, script: Path | None = None) -> dict:
    command = ["wrk", "--latency", "-t", "2", "-c", str(connections), "-d", f"{seconds}s",
               "--timeout", "10s", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    percentiles = {m[0]: _ms(m[1]) for m in re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M)}
    if set(percentiles) != {"50", "99"}:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "connections": connections,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": percentiles["50"], "p99_ms": percentiles["99"],
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="Distributed mode: an empty database.")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--datasets", nargs="+", default=["perov_5", "mp_20"])
    parser.add_argument("--samples", type=int, default=100, help="Structures per timed job.")
    parser.add_argument("--steps", type=int, default=1000, help="Reverse steps per job.")
    parser.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--connections", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--seconds", type=int, default=10, help="Per wrk run.")
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn processes.")
    parser.add_argument("--skip-worker", action="store_true", help="API numbers only.")
    parser.add_argument("--untrained", action="store_true",
                        help="Use untrained paper-size networks even where checkpoints/ has one.")
    args = parser.parse_args()
    args.targets = {"perov_5": 0.5, "mp_20": -1.0, "carbon_24": -154.4}
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the API numbers: apt-get install wrk")

    workdir = Path(tempfile.mkdtemp(prefix="xtaldiff-bench-"))
    checkpoints = [checkpoint_for(d, workdir, untrained=args.untrained) for d in args.datasets]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    processes = start_service(args, checkpoints, workdir / "data", port)
    results: dict = {"mode": "distributed" if args.database_url else "embedded",
                     "api_workers": args.api_workers, "cpus": os.cpu_count()}
    try:
        wait_healthy(base)
        models = {m["dataset"]: m["name"] for m in httpx.get(f"{base}/models").json()}
        if not args.skip_worker:
            results["worker"] = [bench_worker(base, models[d], d, args) for d in args.datasets]
        # The GET target: a finished job of 100 structures (few steps: only its size matters).
        model = models[args.datasets[0]]
        job = run_job(base, {"model": model, "target": 0.5, "num_samples": 100, "steps": 20})
        results["get_job"] = [wrk(f"{base}/jobs/{job['id']}", connections=c,
                                  seconds=args.seconds) for c in args.connections]
        script = workdir / "post.lua"
        script.write_text(WRK_POST % model)
        # The jobs posted here would keep the worker busy on the same CPUs: it is paused, so
        # that the numbers are the API's own.
        with paused_workers(args.database_url or f"sqlite:///{workdir / 'data' / 'xtaldiff.db'}"):
            results["post_design"] = [wrk(f"{base}/design", connections=c,
                                          seconds=args.seconds, script=script)
                                      for c in args.connections]
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                # A warm shutdown waits for the running job: not worth waiting for here.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))  # noqa: T201 (a script's output)


if __name__ == "__main__":
    main()
