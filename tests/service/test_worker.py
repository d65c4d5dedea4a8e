"""Real Celery workers (subprocesses) on the real PostgreSQL and Redis: end to end, cancel,
checkpoint upload and validation, a worker killed mid-job."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.service.conftest import (
    ADMIN,
    WorkerProcess,
    long_running_model,
    make_settings,
    parse_bundle_cifs,
    postgres_schema,
    submit,
    wait_for,
    wait_job,
)
from xtaldiff import db
from xtaldiff.serve import register_checkpoint
from xtaldiff.tables import Job, StructureRow


def test_end_to_end_submit_run_poll_download_parse(stack):
    client, _, _ = stack
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["workers"]
    job_id = submit(client, num_samples=6, seed=2)
    job = wait_job(client, job_id, status="succeeded")
    assert len(job["structures"]) == 6 and job["progress"]["fraction"] == 1.0
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    assert parse_bundle_cifs(client.get(f"/jobs/{job_id}/bundle.zip").content) > 0


def test_cancel_stops_a_running_job_between_steps(stack, tiny_checkpoint, tmp_path):
    client, _, sessions = stack
    with long_running_model(sessions, tiny_checkpoint, tmp_path) as name:
        job_id = submit(client, model=name, num_samples=1000, steps=1000)

        def running_with_progress():
            job = client.get(f"/jobs/{job_id}").json()
            return job["status"] == "running" and job["progress"]["done"] > 0

        wait_for(running_with_progress, timeout=120, what="the job to make progress")
        response = client.delete(f"/jobs/{job_id}")
        assert response.status_code == 202
        job = wait_job(client, job_id, status="cancelled", timeout=60)
        assert job["progress"]["done"] < job["progress"]["total"]
        assert job["structures"] == []


def test_uploaded_checkpoint_is_validated_by_a_worker_then_serves(stack, tmp_path):
    from tests.conftest import tiny_checkpoint_file

    client, _, _ = stack
    path = tiny_checkpoint_file(tmp_path / "other.safetensors", seed=7)
    with open(path, "rb") as handle:
        response = client.post("/admin/checkpoints", headers=ADMIN, data={"name": "uploaded"},
                               files={"file": ("other.safetensors", handle)})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "validating"
    # Not ready yet: it cannot be activated.

    def validated():
        rows = client.get("/admin/checkpoints", headers=ADMIN).json()
        return next(r for r in rows if r["name"] == "uploaded")["status"] != "validating"

    wait_for(validated, timeout=120, what="validation")
    response = client.post("/admin/checkpoints/uploaded/activate", headers=ADMIN)
    assert response.status_code == 200 and response.json()["active"]
    job = wait_job(client, submit(client, model="uploaded", num_samples=2), status="succeeded")
    assert job["model"]["name"] == "uploaded"


def test_worker_killed_mid_job_is_redelivered_and_finishes_once(tmp_path, tiny_checkpoint,
                                                                redis_prefix):
    """SIGKILL leaves the job running with nobody beating for it; the periodic check puts it
    back on the queue (and Redis redelivers the unacknowledged message): another worker
    takes it over, runs it once, writes every structure once."""
    from api.main import create_app

    with postgres_schema() as url:
        db.upgrade(url)
        # A short visibility timeout makes Redis hand the dead worker's message out again
        # during the test, so both recovery paths race for the job.
        settings = make_settings(tmp_path, url, prefix=redis_prefix,
                                 transport={"visibility_timeout": 6})
        sessions = db.session_factory(url)
        register_checkpoint(sessions, tiny_checkpoint)
        first = WorkerProcess(settings, tmp_path / "first.log")
        second = None
        try:
            first.wait_ready(sessions)
            with TestClient(create_app(settings)) as client, \
                    long_running_model(sessions, tiny_checkpoint, tmp_path) as name:
                # Long enough (about 20 s here) to be seen running however fast the machine:
                # 32 x 40 steps ended in 1.4 s, before a poll saw it running.
                job_id = submit(client, model=name, num_samples=32, steps=600, seed=3)

                def progressing():
                    job = client.get(f"/jobs/{job_id}").json()
                    return job["status"] == "running" and job["progress"]["done"] > 0

                wait_for(progressing, timeout=120, what="the first worker to start sampling")
                with sessions() as session:
                    killed = session.get(Job, job_id).worker
                first.kill()
                second = WorkerProcess(settings, tmp_path / "second.log")
                job = wait_job(client, job_id, status="succeeded", timeout=300)
            assert len(job["structures"]) == 32
            with sessions() as session:
                rows = session.scalar(select(func.count()).select_from(StructureRow)
                                      .where(StructureRow.job_id == job_id))
                finished = session.get(Job, job_id)
            assert rows == 32
            assert finished.attempt >= 2 and finished.worker != killed
        finally:
            first.stop()
            if second is not None:
                second.stop()


def test_a_killed_worker_takes_its_beat_with_it(tmp_path, redis_prefix):
    """SIGKILL to the worker alone (not its process group, as `kill -9 <pid>` or an OOM kill
    would do): its embedded beat must not live on beside the next worker's beat."""
    import os
    import signal

    import psutil

    with postgres_schema() as url:
        db.upgrade(url)
        settings = make_settings(tmp_path, url, prefix=redis_prefix)
        worker = WorkerProcess(settings, tmp_path / "worker.log", beat=True)
        try:
            worker.wait_ready(db.session_factory(url))
            parent = psutil.Process(worker.process.pid)

            def beat_children():
                return [c for c in parent.children() if "forkserver" not in " ".join(c.cmdline())]

            beats = wait_for(beat_children, timeout=60, what="the embedded beat to start")
            os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.wait()

            def all_gone():
                return all(not b.is_running() or b.status() == psutil.STATUS_ZOMBIE for b in beats)

            wait_for(all_gone, timeout=30, what="the orphaned beat to exit")
        finally:
            worker.stop()

