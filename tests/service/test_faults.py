"""Faults: the broker restarted (or down) while jobs are queued, the database unreachable."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from tests.service.conftest import (
    RedisServer,
    TcpProxy,
    WorkerProcess,
    make_settings,
    postgres_schema,
    submit,
    wait_for,
    wait_job,
)
from xtaldiff import db
from xtaldiff.serve import register_checkpoint
from xtaldiff.tables import Job


def test_jobs_survive_a_redis_restart_and_a_failed_enqueue(tmp_path, tiny_checkpoint):
    from api.main import create_app
    from tests.conftest import tiny_checkpoint_file
    from tests.service.conftest import ADMIN

    server = RedisServer(tmp_path)
    with postgres_schema() as url:
        db.upgrade(url)
        settings = make_settings(tmp_path, url, broker_url=server.url)
        sessions = db.session_factory(url)
        register_checkpoint(sessions, tiny_checkpoint)
        worker = None
        try:
            with TestClient(create_app(settings)) as client:
                # Broker down: the job is accepted and stays queued, never sent.
                unsent = submit(client, num_samples=2)
                with sessions() as session:
                    assert session.get(Job, unsent).enqueued_at is None
                # An upload then is stored, its validation unsent; the periodic check sends it.
                upload = tiny_checkpoint_file(tmp_path / "upload.safetensors", seed=11)
                with open(upload, "rb") as handle:
                    response = client.post("/admin/checkpoints", headers=ADMIN, data={"name": "upload"},
                                           files={"file": ("upload.safetensors", handle)})
                assert response.status_code == 202 and response.json()["status"] == "validating"
                server.start()
                sent = submit(client, num_samples=2)
                broker = redis.Redis(port=server.port)
                assert broker.llen("gpu") == 1
                # Restarted without persistence: the queued message is gone.
                server.stop()
                server.start()
                assert broker.llen("gpu") == 0
                worker = WorkerProcess(settings, tmp_path / "worker.log")
                for job_id in (unsent, sent):
                    job = wait_job(client, job_id, status="succeeded", timeout=120)
                    assert len(job["structures"]) == 2

                def upload_status():
                    rows = client.get("/admin/checkpoints", headers=ADMIN).json()
                    status = next(r["status"] for r in rows if r["name"] == "upload")
                    return status if status != "validating" else None

                assert wait_for(upload_status, timeout=120, what="the upload's validation") == "ready"
        finally:
            if worker is not None:
                worker.stop()
            server.stop()


def test_database_unreachable_gives_503_and_health_says_so(tmp_path, tiny_checkpoint,
                                                           redis_prefix):
    from api.main import create_app

    with postgres_schema() as url:
        db.upgrade(url)
        register_checkpoint(db.session_factory(url), tiny_checkpoint)
        proxy = TcpProxy(("127.0.0.1", 5432))
        proxy.start()
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        settings = make_settings(tmp_path, proxied, prefix=redis_prefix,
                                 db_connect_timeout_s=1)
        try:
            with TestClient(create_app(settings), raise_server_exceptions=False) as client:
                job_id = submit(client)
                assert client.get("/health").status_code == 200
                proxy.stop()
                health = client.get("/health")
                assert health.status_code == 503
                body = health.json()
                assert body["status"] == "unavailable" and not body["database"]["ok"]
                assert body["database"]["error"] and body["broker"]["ok"]
                for response in (client.get(f"/jobs/{job_id}"), client.get("/models"),
                                 client.post("/design", json={"dataset": "perov_5",
                                                              "target": 1.0})):
                    assert response.status_code == 503
                    assert "database is unavailable" in response.json()["detail"]
                    assert response.headers["retry-after"]
                scrape = client.get("/metrics")  # the HTTP metrics outlive the database
                assert scrape.status_code == 200 and "xtaldiff_database_up 0.0" in scrape.text
                assert 'xtaldiff_http_requests_total{method="GET",route="/health",status="503"}' in scrape.text
                proxy.start()
                assert client.get(f"/jobs/{job_id}").status_code == 200
                assert client.get("/health").status_code == 200
        finally:
            proxy.stop()
            db.get_engine(proxied, 1).dispose()


def test_a_finished_jobs_results_wait_out_a_database_outage(tmp_path, tiny_checkpoint, caplog):
    import logging
    import threading

    from pymatgen.core import Lattice
    from pymatgen.core import Structure as Crystal

    from worker.jobs import write_results
    from worker.records import structure_record
    from xtaldiff import queries

    caplog.set_level(logging.WARNING, logger="worker.jobs")
    perovskite = Crystal(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
                         [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    with postgres_schema() as url:
        db.upgrade(url)
        direct = db.session_factory(url)
        checkpoint = register_checkpoint(direct, tiny_checkpoint)
        with direct() as session:
            job = queries.create_job(session, checkpoint=checkpoint, request={"target": 1.0},
                                     warnings=[], owner=None)
            session.commit()
            job_id = job.id
        proxy = TcpProxy(("127.0.0.1", 5432))
        proxy.start()
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        sessions = db.session_factory(proxied, 1)
        try:
            with sessions() as session:
                attempt = queries.claim_job(session, job_id=job_id, worker="w", stale_after_s=30,
                                            max_worker_losses=3).attempt
                session.commit()
            proxy.stop()
            outcome = {}
            writer = threading.Thread(target=lambda: outcome.update(written=write_results(
                sessions, job_id=job_id, attempt=attempt, rows=[structure_record(perovskite)],
                summary={}, timings={}, give_up_after_s=60)))
            writer.start()
            wait_for(lambda: "retrying" in caplog.text, timeout=30, what="a failed write")
            proxy.start()
            writer.join(60)
            assert outcome == {"written": True}
            with direct() as session:
                assert queries.get_job(session, job_id=job_id).status == "succeeded"
                assert queries.count_structures(session, job_id=job_id) == 1
        finally:
            proxy.stop()
            db.get_engine(proxied, 1).dispose()
