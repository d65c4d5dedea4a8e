"""The job state machine as plain functions: claims, takeovers, finishing once, sweeps."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from worker.jobs import requeue_lost_jobs
from xtaldiff import queries
from xtaldiff.broker import create_celery
from xtaldiff.design_params import DesignParams
from xtaldiff.states import CheckpointStatus, JobStatus
from xtaldiff.summary import summarize
from xtaldiff.tables import Checkpoint, Job, StructureRow, utcnow

ROW = dict(formula="Ba1 Ti1 O3", reduced_formula="BaTiO3", num_atoms=5, a=4.0, b=4.0, c=4.0,
           alpha=90.0, beta=90.0, gamma=90.0, volume=64.0, space_group_symbol="Pm-3m",
           space_group_number=221, cif="data_x", cif_p1="data_x", predicted_property=None,
           prediction_note=None, valid_structure=None, valid_composition=None,
           invalid_reason=None)


@pytest.fixture
def job_id(sessions, checkpoint) -> str:
    with sessions() as session:
        job = queries.create_job(session, checkpoint=session.get(Checkpoint, checkpoint.sha256),
                                 request={"target": 0.0}, warnings=[], owner=None)
        session.commit()
        return job.id


def claim(sessions, job_id, stale_after_s=30.0):
    with sessions() as session:
        found = queries.claim_job(session, job_id=job_id, worker="w", stale_after_s=stale_after_s,
                                  max_worker_losses=3)
        session.commit()
        return found


def finish(sessions, job_id, attempt, n=3) -> bool:
    with sessions() as session:
        written = queries.finish_job(session, job_id=job_id, attempt=attempt,
                                     structures=[ROW] * n, summary={}, timings={})
        session.commit()
        return written


def structure_count(sessions, job_id) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(StructureRow)
                              .where(StructureRow.job_id == job_id))


def age_heartbeat(sessions, job_id, seconds: float) -> None:
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def test_only_one_worker_claims_a_job(sessions, job_id):
    first, second = claim(sessions, job_id), claim(sessions, job_id)
    assert first.attempt == 1
    assert second.attempt is None and second.status == JobStatus.running


def test_a_stale_running_job_is_taken_over_and_the_old_owner_cannot_write(sessions, job_id):
    old = claim(sessions, job_id).attempt
    age_heartbeat(sessions, job_id, 60)
    new = claim(sessions, job_id).attempt
    assert new == old + 1
    assert finish(sessions, job_id, old) is False
    assert structure_count(sessions, job_id) == 0
    assert finish(sessions, job_id, new) is True
    assert finish(sessions, job_id, new) is False  # a retry of the same attempt writes nothing
    assert structure_count(sessions, job_id) == 3


def test_a_job_that_keeps_killing_its_worker_fails_instead_of_running_forever(sessions, settings, job_id):
    first = claim(sessions, job_id).attempt
    for losses in (1, 2):  # each worker dies; the next delivery (or the sweep) takes the job over
        age_heartbeat(sessions, job_id, 60)
        if losses == 1:
            assert claim(sessions, job_id).attempt == first + 1
        else:
            assert requeue_lost_jobs(settings=settings.model_copy(update={"max_worker_losses": 3}),
                                     sessions=sessions, celery=create_celery(settings)) == [job_id]
            assert claim(sessions, job_id).attempt is not None
        with sessions() as session:
            assert session.get(Job, job_id).worker_losses == losses
    age_heartbeat(sessions, job_id, 60)
    found = claim(sessions, job_id)  # the third loss
    assert (found.attempt, found.status) == (None, JobStatus.failed)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.worker_losses) == ("failed", 3)
        assert "stopped 3 times" in job.error and "ask for fewer structures" in job.error


def test_the_sweep_gives_up_on_a_job_whose_worker_died_too_often(sessions, settings, job_id):
    twice = settings.model_copy(update={"max_worker_losses": 2})
    for expected in ("queued", "failed"):
        claim(sessions, job_id)
        age_heartbeat(sessions, job_id, 60)
        requeue_lost_jobs(settings=twice, sessions=sessions, celery=create_celery(settings))
        with sessions() as session:
            assert session.get(Job, job_id).status == expected
    with sessions() as session:
        assert "stopped 2 times" in session.get(Job, job_id).error


def test_query_functions_leave_the_commit_to_their_caller(sessions, job_id):
    """The module's transaction rule: a caller that rolls back undoes every state change."""
    with sessions() as session:
        assert queries.claim_job(session, job_id=job_id, worker="w", stale_after_s=30,
                                 max_worker_losses=3).attempt == 1
        assert queries.finish_job(session, job_id=job_id, attempt=1, structures=[ROW], summary={},
                                  timings={}) is True
        queries.worker_seen(session, name="w@host", pid=1, queues="design")
        session.rollback()
    with sessions() as session:
        assert queries.request_cancel(session, job=session.get(Job, job_id)) == "cancelled"
        session.rollback()
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.cancel_requested) == ("queued", 0, False)
        assert queries.recent_workers(session, within_s=60) == []
    assert structure_count(sessions, job_id) == 0


def test_heartbeat_reports_cancellation_and_loss(sessions, job_id):
    attempt = claim(sessions, job_id).attempt
    with sessions() as session:
        assert queries.record_heartbeat(session, job_id=job_id, attempt=attempt, done=1, total=9) is False
        assert queries.request_cancel(session, job=session.get(Job, job_id)) == "running"
        assert queries.record_heartbeat(session, job_id=job_id, attempt=attempt) is True
        assert queries.record_heartbeat(session, job_id=job_id, attempt=attempt + 1) is None
        assert session.get(Job, job_id, populate_existing=True).progress_done == 1


def test_sweep_requeues_dead_jobs_and_cancels_dead_cancelled_ones(sessions, settings, job_id,
                                                                  checkpoint):
    with sessions() as session:
        cancelled = queries.create_job(
            session, checkpoint=session.get(Checkpoint, checkpoint.sha256),
            request={}, warnings=[], owner=None).id
        session.commit()
    for jid in (job_id, cancelled):
        claim(sessions, jid)
        age_heartbeat(sessions, jid, 60)
    with sessions() as session:
        queries.request_cancel(session, job=session.get(Job, cancelled))
        session.commit()
    sent = requeue_lost_jobs(settings=settings, sessions=sessions,
                             celery=create_celery(settings))
    assert sent == [job_id]
    with sessions() as session:
        requeued, dead = session.get(Job, job_id), session.get(Job, cancelled)
        assert (requeued.status, requeued.attempt, requeued.enqueue_count) == ("queued", 2, 2)
        assert dead.status == "cancelled"
    # Just enqueued: not sent again until requeue_after_s has passed.
    assert requeue_lost_jobs(settings=settings, sessions=sessions,
                             celery=create_celery(settings)) == []


def test_the_sweep_resends_lost_messages_but_not_a_queue_waiting_its_turn(sessions, settings, checkpoint,
                                                                         redis_prefix):
    import redis

    from tests.service.conftest import REDIS_URL
    from xtaldiff.broker import send
    from xtaldiff.states import DESIGN_TASK

    celery = create_celery(settings)
    waiting = []
    for _ in range(4):
        with sessions() as session:
            job = queries.create_job(session, checkpoint=session.get(Checkpoint, checkpoint.sha256),
                                     request={}, warnings=[], owner=None)
            session.commit()
        assert send(celery, DESIGN_TASK, job.id)
        waiting.append(job.id)
    with sessions() as session:  # sent long ago, still queued: the worker is busy elsewhere
        session.execute(update(Job).values(enqueued_at=utcnow() - timedelta(seconds=600)))
        session.commit()
    assert requeue_lost_jobs(settings=settings, sessions=sessions, celery=celery) == []
    client = redis.Redis.from_url(REDIS_URL)  # the broker loses its messages (a Redis restart)
    client.delete(*client.scan_iter(f"{redis_prefix}gpu*"))
    client.close()
    assert requeue_lost_jobs(settings=settings, sessions=sessions, celery=celery) == waiting


def test_database_allows_one_active_checkpoint_per_dataset(sessions, checkpoint, tmp_path):
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff.serve import register_checkpoint

    other = register_checkpoint(sessions, tiny_checkpoint_file(tmp_path / "b.safetensors",
                                                               seed=9))
    with sessions() as session:
        assert session.get(Checkpoint, checkpoint.sha256).active is False
        with pytest.raises(IntegrityError):
            session.execute(update(Checkpoint).values(active=True))
    assert other.active


def test_summary_counts_and_quantiles():
    rows = [dict(predicted_property=v, valid_structure=True, valid_composition=v < 3)
            for v in (1.0, 2.0, 3.0, 4.0)]
    rows.append(dict(predicted_property=None, valid_structure=None, valid_composition=None))
    summary = summarize(rows, target=2.0)
    assert (summary["num_structures"], summary["num_checked"], summary["num_valid"]) == (5, 4, 2)
    assert summary["num_predicted"] == 4 and summary["num_at_or_below_target"] == 2
    assert summary["predicted"]["quantiles"]["0.5"] == 2.5
    assert summary["predicted"]["quantiles"]["0.25"] == 1.75
    assert summarize([], target=0)["predicted"] is None


def test_prepare_database_makes_each_datasets_best_model_active(settings, sessions, tmp_path):
    from model.checkpoint import read_metadata, rewrite_metadata
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff.serve import prepare_database

    paths = {}
    for name, sr5 in (("better", 0.9), ("worse", 0.5), ("unevaluated", None)):
        path = paths[name] = tiny_checkpoint_file(tmp_path / f"{name}.safetensors", seed=len(paths))
        if sr5 is not None:
            meta = read_metadata(path).as_dict()
            meta["metrics"] = {"at_default_guidance": {"SR5": sr5}, "at_w0": {"SR5": sr5}}
            rewrite_metadata(path, meta)
    # Listed best first: the order of the list must not decide.
    prepare_database(settings.model_copy(update={"bundled_checkpoints": list(paths.values())}))
    with sessions() as session:
        assert queries.active_checkpoint(session, dataset="perov_5").name == "better"
        assert {c.name for c in queries.list_checkpoints(session, ready_only=True)} == set(paths)


def test_an_admins_choice_of_model_survives_a_restart(settings, sessions, tmp_path):
    from model.checkpoint import read_metadata, rewrite_metadata
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff.serve import prepare_database

    paths = []
    for name, sr5 in (("better", 0.9), ("worse", 0.5)):
        path = tiny_checkpoint_file(tmp_path / f"{name}.safetensors", seed=len(paths))
        meta = read_metadata(path).as_dict()
        meta["metrics"] = {"at_default_guidance": {"SR5": sr5}}
        rewrite_metadata(path, meta)
        paths.append(path)
    bundled = settings.model_copy(update={"bundled_checkpoints": paths})
    prepare_database(bundled)
    with sessions() as session:
        queries.activate_checkpoint(session, checkpoint=queries.get_checkpoint(session, name="worse"),
                                    by_admin=True)
        session.commit()
    prepare_database(bundled)  # a restart, or `xtaldiff migrate` on a deploy
    with sessions() as session:
        assert queries.active_checkpoint(session, dataset="perov_5").name == "worse"
        queries.retire_checkpoint(session, checkpoint=queries.get_checkpoint(session, name="worse"))
        session.commit()
    prepare_database(bundled)  # the admin's model retired: the best bundled one serves again
    with sessions() as session:
        assert queries.active_checkpoint(session, dataset="perov_5").name == "better"


def test_new_bundled_weights_take_the_models_name(settings, sessions, tmp_path):
    """An upgrade that commits new weights under checkpoints/: a request naming the model runs
    them, and the weights they replaced stay ready under a name of their own."""
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff.serve import prepare_database

    path = tmp_path / "perov_5_model.safetensors"
    bundled = settings.model_copy(update={"bundled_checkpoints": [path]})
    tiny_checkpoint_file(path, seed=1)
    prepare_database(bundled)
    with sessions() as session:
        old_sha = queries.get_checkpoint(session, name="perov_5_model").sha256
    tiny_checkpoint_file(path, seed=2)  # the upgrade rewrites the file
    prepare_database(bundled)
    with sessions() as session:
        new = queries.get_checkpoint(session, name="perov_5_model")
        assert new.sha256 != old_sha and new.active
        old = queries.get_checkpoint(session, name=f"perov_5_model_{old_sha[:8]}")
        assert old.sha256 == old_sha and old.status == CheckpointStatus.ready and not old.active
    tiny_checkpoint_file(path, seed=1)  # going back to the earlier commit gives the name back
    prepare_database(bundled)
    with sessions() as session:
        assert queries.get_checkpoint(session, name="perov_5_model").sha256 == old_sha
        assert queries.active_checkpoint(session, dataset="perov_5").sha256 == old_sha
        assert queries.get_checkpoint(session, name=f"perov_5_model_{new.sha256[:8]}") is not None
        assert len(queries.list_checkpoints(session, ready_only=True)) == 2


def test_a_flood_from_one_client_does_not_starve_another(settings, sessions, checkpoint):
    from worker.jobs import run_design

    def job_of(client: str) -> str:
        with sessions() as session:
            job = queries.create_job(session, checkpoint=session.get(Checkpoint, checkpoint.sha256),
                                     request=DesignParams(
                                         model=checkpoint.name, dataset="perov_5", target=1.0, num_samples=1,
                                         num_atoms=None, elements=None, guidance=0.0, steps=2,
                                         sampler="rescaled", seed=0).as_json(),
                                     warnings=[], owner=None, client=client)
            session.commit()
            return job.id

    flood = [job_of("flooder") for _ in range(4)]
    small = job_of("other")  # submitted last, its message at the back of the queue
    # The broker delivers the flood's messages first; each runs the fairest queued job.
    assert run_design(flood[0], settings=settings, sessions=sessions) == "succeeded"
    assert run_design(flood[1], settings=settings, sessions=sessions) == "succeeded"
    with sessions() as session:
        status = {job_id: session.get(Job, job_id).status for job_id in [*flood, small]}
    assert status[small] == "succeeded" and status[flood[0]] == "succeeded"
    assert [status[j] for j in flood[1:]] == ["queued"] * 3
    # A message whose job already ran still runs the next one, so every job gets its turn.
    for message in [small, *flood[1:]]:
        run_design(message, settings=settings, sessions=sessions)
    with sessions() as session:
        assert all(session.get(Job, j).status == "succeeded" for j in [*flood, small])


def test_a_stored_request_reads_back_as_the_same_params_and_old_jobs_take_the_defaults():
    params = DesignParams(model="m", dataset="mp_20", target=-1.5, num_samples=3, num_atoms=None,
                          elements=("Li", "O"), guidance=0.5, steps=100, sampler="paper", seed=9, relax=True,
                          charge_balance=True)
    assert DesignParams.from_json(json.loads(json.dumps(params.as_json()))) == params
    before_samplers = {"model": "m", "dataset": "perov_5", "target": 0.1, "num_samples": 2, "num_atoms": 5,
                       "elements": None, "guidance": 0.0, "steps": None, "seed": 1}
    old = DesignParams.from_json(before_samplers)
    assert (old.sampler, old.relax, old.steps, old.elements) == ("rescaled", False, None, None)
    assert old.charge_balance is False
