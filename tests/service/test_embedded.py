"""`xtaldiff serve` with no servers: SQLite, the SQLAlchemy broker file, a worker child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import httpx

from tests.service.conftest import FAST_TIMINGS, free_port, parse_bundle_cifs, wait_for
from xtaldiff.client import Client
from xtaldiff.settings import REPO_ROOT


def test_embedded_serve_designs_perovskites_end_to_end(tmp_path, tiny_checkpoint):
    port = free_port()
    env = {**os.environ, "XTALDIFF_BUNDLED_CHECKPOINTS": json.dumps([str(tiny_checkpoint)]),
           "XTALDIFF_ORACLE": "false",
           **{f"XTALDIFF_{k.upper()}": str(v) for k, v in FAST_TIMINGS.items()}}
    for name in ("XTALDIFF_DATABASE_URL", "XTALDIFF_BROKER_URL"):
        env.pop(name, None)
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-c", "from xtaldiff.cli import app; app()", "serve",
         "--data-dir", str(tmp_path / "data"),
         "--port", str(port), "--log-level", "warning"],
        env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy_with_worker():
            try:
                body = httpx.get(f"{base}/health", timeout=5).json()
            except httpx.HTTPError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                return None
            return body["status"] == "ok"

        wait_for(healthy_with_worker, timeout=120, what="the embedded service")
        assert (tmp_path / "data" / "xtaldiff.db").is_file()
        assert (tmp_path / "data" / "broker.db").is_file()
        models = httpx.get(f"{base}/models").json()
        assert [(m["dataset"], m["active"]) for m in models] == [("perov_5", True)]
        response = httpx.post(f"{base}/design", json={"dataset": "perov_5", "target": 1.0,
                                                      "num_samples": 4, "steps": 5,
                                                      "seed": 2})
        assert response.status_code == 202
        location = base + response.headers["location"]
        job = wait_for(lambda: (j := httpx.get(location).json())["status"] == "succeeded" and j,
                       timeout=120, what="the job")
        assert len(job["structures"]) == 4
        assert parse_bundle_cifs(httpx.get(f"{location}/bundle.zip").content) > 0

        with Client(base) as client, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collapsed cells of the untrained model are left out
            assert [m["name"] for m in client.models()] == [m["name"] for m in models]
            designed = client.design(dataset="perov_5", target=1.0, n=3, steps=5, seed=2, progress=False)
            assert all(s.properties["formula"] == s.composition.reduced_formula for s in designed)
            assert client.job(job["id"])["status"] == "succeeded"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
        log.close()
    # The worker child (and its beat process) went down with the server.
    def session_empty():
        found = subprocess.run(["pgrep", "-s", str(server.pid)], capture_output=True, text=True)
        return found.stdout.strip() == ""

    wait_for(session_empty, timeout=30, what="the worker processes to exit")


def test_sigterm_stops_the_server_and_its_worker_while_a_job_runs(tmp_path):
    """What `docker stop`, systemd and `kill` send: the worker child stops with serve, and the
    running job goes back to the queue instead of running on or being lost."""
    import time

    from model.diffusion import DiffusionConfig
    from tests.conftest import tiny_checkpoint_file

    long_model = tiny_checkpoint_file(tmp_path / "long.safetensors", seed=3,
                                      diffusion=DiffusionConfig(timesteps=1000, lambda_draws=1000))
    port = free_port()
    env = {**os.environ, "XTALDIFF_BUNDLED_CHECKPOINTS": json.dumps([str(long_model)]),
           "XTALDIFF_ORACLE": "false",
           **{f"XTALDIFF_{k.upper()}": str(v) for k, v in FAST_TIMINGS.items()}}
    for name in ("XTALDIFF_DATABASE_URL", "XTALDIFF_BROKER_URL"):
        env.pop(name, None)
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", "from xtaldiff.cli import app; app()", "serve",
             "--data-dir", str(tmp_path / "data"), "--port", str(port), "--log-level", "warning"],
            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            def healthy_with_worker():
                try:
                    return httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok"
                except httpx.HTTPError:
                    assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    return None

            wait_for(healthy_with_worker, timeout=120, what="the embedded service")
            job = httpx.post(f"{base}/design", json={"dataset": "perov_5", "target": 1.0,
                                                     "num_samples": 1000, "steps": 1000}).json()
            wait_for(lambda: httpx.get(f"{base}/jobs/{job['id']}").json()["progress"]["done"] > 0,
                     timeout=120, what="the job to run")
            stopped_at = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            took = time.monotonic() - stopped_at
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)

    def session_empty():
        found = subprocess.run(["pgrep", "-s", str(server.pid)], capture_output=True, text=True)
        return found.stdout.strip() == ""

    wait_for(session_empty, timeout=30, what="the worker processes to exit")
    assert took < 15, f"serve took {took:.0f} s to stop"
    from xtaldiff import db, queries

    with db.session_factory(f"sqlite:///{tmp_path / 'data' / 'xtaldiff.db'}")() as session:
        interrupted = queries.get_job(session, job_id=job["id"])
        assert interrupted.status == "queued" and interrupted.enqueued_at is None  # the sweep resends it
