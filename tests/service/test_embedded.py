"""`xtaldiff serve` with no servers: SQLite, the SQLAlchemy broker file, a worker child."""

from __future__ import annotations

import signal
import warnings

import httpx

from tests.service.conftest import EmbeddedServer, parse_bundle_cifs, wait_for
from xtaldiff.client import Client


def test_embedded_serve_designs_perovskites_end_to_end(tmp_path, tiny_checkpoint):
    server = EmbeddedServer(tmp_path, [tiny_checkpoint])
    base = server.base
    try:
        server.wait_healthy()
        assert (server.data_dir / "xtaldiff.db").is_file()
        assert (server.data_dir / "broker.db").is_file()
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
        server.stop(signal.SIGINT)  # the worker child (and its beat process) go down with it


def test_sigterm_stops_the_server_and_its_worker_while_a_job_runs(tmp_path):
    """What `docker stop`, systemd and `kill` send: the worker child stops with serve, and the
    running job goes back to the queue instead of running on or being lost."""
    from model.diffusion import DiffusionConfig
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff import db, queries

    long_model = tiny_checkpoint_file(tmp_path / "long.safetensors", seed=3,
                                      diffusion=DiffusionConfig(timesteps=1000, lambda_draws=1000))
    server = EmbeddedServer(tmp_path, [long_model])
    try:
        server.wait_healthy()
        job = httpx.post(f"{server.base}/design", json={"dataset": "perov_5", "target": 1.0,
                                                        "num_samples": 1000, "steps": 1000}).json()
        wait_for(lambda: httpx.get(f"{server.base}/jobs/{job['id']}").json()["progress"]["done"] > 0,
                 timeout=120, what="the job to run")
    finally:
        took = server.stop(signal.SIGTERM)
    assert took < 15, f"serve took {took:.0f} s to stop"
    with db.session_factory(f"sqlite:///{server.data_dir / 'xtaldiff.db'}")() as session:
        interrupted = queries.get_job(session, job_id=job["id"])
        assert interrupted.status == "queued" and interrupted.enqueued_at is None  # the sweep resends it
