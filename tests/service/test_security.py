"""Admin token, API keys, checkpoint uploads (size, header, shapes, never unpickled), and the
API process never importing torch."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import ADMIN, make_settings, submit
from worker.jobs import validate_checkpoint
from xtaldiff.settings import REPO_ROOT


def test_api_process_never_imports_torch():
    code = ("import sys; from api.main import create_app; app = create_app(); app.openapi(); "
            "print('torch' in sys.modules, 'model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=True).stdout
    assert out.split() == ["False", "False"]


def test_admin_routes_need_the_token(client):
    assert client.get("/admin/checkpoints").status_code == 401
    wrong = client.get("/admin/checkpoints", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong admin token"
    assert client.get("/admin/checkpoints", headers=ADMIN).status_code == 200


def test_admin_routes_are_off_without_a_configured_token(tmp_path, database_url):
    from api.main import create_app
    from xtaldiff import db

    db.upgrade(database_url)
    settings = make_settings(tmp_path, database_url).model_copy(update={"admin_token": None})
    with TestClient(create_app(settings)) as client:
        response = client.get("/admin/checkpoints", headers=ADMIN)
    assert response.status_code == 403 and "XTALDIFF_ADMIN_TOKEN" in response.json()["detail"]


def test_api_keys_gate_requests_and_hide_other_keys_jobs(tmp_path, database_url, redis_prefix,
                                                         tiny_checkpoint):
    from pydantic import SecretStr

    from api.main import create_app
    from xtaldiff import db
    from xtaldiff.serve import register_checkpoint

    db.upgrade(database_url)
    register_checkpoint(db.session_factory(database_url), tiny_checkpoint)
    settings = make_settings(tmp_path, database_url, prefix=redis_prefix).model_copy(
        update={"api_keys": [SecretStr("key-alice"), SecretStr("key-bob")]})
    body = {"dataset": "perov_5", "target": 1.0, "num_samples": 2, "steps": 2}
    with TestClient(create_app(settings)) as client:
        assert client.post("/design", json=body).status_code == 401
        assert client.post("/design", json=body,
                           headers={"X-API-Key": "key-eve"}).status_code == 403
        job = client.post("/design", json=body, headers={"X-API-Key": "key-alice"}).json()
        alice = client.get(f"/jobs/{job['id']}", headers={"Authorization": "Bearer key-alice"})
        bob = client.get(f"/jobs/{job['id']}", headers={"X-API-Key": "key-bob"})
        assert alice.status_code == 200 and bob.status_code == 404
        assert client.delete(f"/jobs/{job['id']}", headers={"X-API-Key": "key-bob"}
                             ).status_code == 404
        # Finished jobs are served from a cache; it too keeps them to their owner.
        from worker.jobs import run_design

        run_design(job["id"], settings=settings, sessions=db.session_factory(database_url))
        for _ in range(2):
            assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": "key-alice"}
                              ).json()["status"] == "succeeded"
            assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": "key-bob"}
                              ).status_code == 404


def _upload(client, content: bytes, name: str | None = None):
    data = {"name": name} if name else {}
    return client.post("/admin/checkpoints", headers=ADMIN, data=data,
                       files={"file": ("model.safetensors", content)})


def _safetensors(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


class _Exploit:
    """Unpickling this runs a command: proof that an upload is never unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def test_pickles_are_refused_without_being_loaded(client, tmp_path):
    marker = tmp_path / "pwned"
    response = _upload(client, pickle.dumps(_Exploit(marker)))
    assert response.status_code == 422 and "not a safetensors file" in response.json()["detail"]
    assert not marker.exists()


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 12,
     "truncated or padded"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8,
     "needs 12 bytes"),
    ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
     "no xtaldiff metadata"),
    ({"__metadata__": {"xtaldiff": "{"}, "w": {"dtype": "F32", "shape": [1],
                                               "data_offsets": [0, 4]}}, b"\0" * 4,
     "not valid JSON"),
])
def test_malformed_checkpoints_are_refused_with_the_reason(client, header, data, message):
    response = _upload(client, _safetensors(header, data))
    assert response.status_code == 422 and message in response.json()["detail"]


def test_upload_over_the_size_limit_is_a_413(tmp_path, database_url):
    from api.main import create_app
    from xtaldiff import db

    db.upgrade(database_url)
    settings = make_settings(tmp_path, database_url).model_copy(
        update={"max_upload_bytes": 4096})
    with TestClient(create_app(settings)) as client:
        assert _upload(client, b"\0" * 5000).status_code == 413
        # Without a Content-Length the limit is counted while the body streams in.
        chunks = (b"--b\r\nContent-Disposition: form-data; name=file; filename=x\r\n\r\n",
                  *(b"\0" * 1024 for _ in range(8)), b"\r\n--b--\r\n")
        response = client.post("/admin/checkpoints", headers={
            **ADMIN, "content-type": "multipart/form-data; boundary=b"},
            content=iter(chunks))
        assert response.status_code == 413 and "4096 bytes" in response.json()["detail"]


def test_duplicate_and_badly_named_uploads(client, tiny_checkpoint):
    content = tiny_checkpoint.read_bytes()
    assert _upload(client, content, name="bad name!").status_code == 422
    first = _upload(client, content, name="tiny_a")
    assert first.status_code == 202 and first.json()["status"] == "validating"
    again = _upload(client, content, name="tiny_b")
    assert again.status_code == 409 and "'tiny_a'" in again.json()["detail"]


def test_a_checkpoint_whose_weights_do_not_load_is_rejected_with_the_reason(
        client, settings, sessions, tiny_checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    dropped = sorted(k for k in tensors if not k.startswith("schedule."))[0]
    del tensors[dropped]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    response = _upload(client, broken.read_bytes(), name="broken")
    assert response.status_code == 202  # header and shapes are consistent
    reason = validate_checkpoint(response.json()["sha256"], settings=settings, sessions=sessions)
    assert "do not match the architecture" in reason
    assert str(settings.resolved_checkpoint_cache_dir) not in reason  # no server paths shown
    rows = client.get("/admin/checkpoints", headers=ADMIN).json()
    assert rows[0]["status"] == "rejected" and rows[0]["rejection_reason"] == reason
    refused = client.post("/admin/checkpoints/broken/activate", headers=ADMIN)
    assert refused.status_code == 409 and "rejected" in refused.json()["detail"]
    assert client.get("/models").json() == []


def test_a_validation_started_too_often_is_rejected_without_loading_it_again(
        client, settings, sessions, tmp_path, monkeypatch):
    from tests.conftest import tiny_checkpoint_file
    from worker import jobs
    from xtaldiff.tables import Checkpoint

    sha = _upload(client, tiny_checkpoint_file(tmp_path / "x.safetensors", seed=5).read_bytes(),
                  name="crashy").json()["sha256"]
    loaded = []
    monkeypatch.setattr(jobs, "local_checkpoint", lambda *_args, **_kwargs: loaded.append(sha))
    with sessions() as session:  # as if the validation had killed its worker every time so far
        session.get(Checkpoint, sha).validation_attempts = settings.max_worker_losses
        session.commit()
    reason = validate_checkpoint(sha, settings=settings, sessions=sessions)
    assert loaded == [] and f"started {settings.max_worker_losses} times without finishing" in reason
    row = next(r for r in client.get("/admin/checkpoints", headers=ADMIN).json() if r["name"] == "crashy")
    assert (row["status"], row["rejection_reason"]) == ("rejected", reason)
    assert validate_checkpoint(sha, settings=settings, sessions=sessions) is None  # a redelivery: nothing to do


def test_activate_switches_the_dataset_model_and_retire_stops_it(
        client, settings, sessions, checkpoint, tmp_path):
    from tests.conftest import tiny_checkpoint_file

    other = tiny_checkpoint_file(tmp_path / "other.safetensors", seed=3)
    sha = _upload(client, other.read_bytes(), name="other").json()["sha256"]
    assert validate_checkpoint(sha, settings=settings, sessions=sessions) is None
    assert client.post("/admin/checkpoints/other/activate", headers=ADMIN).status_code == 200
    active = {m["name"]: m["active"] for m in client.get("/models").json()}
    assert active == {checkpoint.name: False, "other": True}
    job_id = submit(client)
    assert client.get(f"/jobs/{job_id}").json()["model"]["name"] == "other"
    assert client.post("/admin/checkpoints/other/retire", headers=ADMIN).status_code == 200
    response = client.post("/design", json={"dataset": "perov_5", "target": 1.0})
    assert response.status_code == 422 and "no model serves dataset perov_5" in response.text
    assert client.post("/admin/checkpoints/nope/retire", headers=ADMIN).status_code == 404
    # Retiring is undone by restore; the model can then serve again.
    restored = client.post("/admin/checkpoints/other/restore", headers=ADMIN)
    assert restored.status_code == 200 and restored.json()["status"] == "ready"
    assert client.post("/admin/checkpoints/other/activate", headers=ADMIN).status_code == 200
    assert client.get(f"/jobs/{submit(client)}").json()["model"]["name"] == "other"


def test_a_rejected_checkpoint_cannot_be_retired_or_restored(client, settings, sessions, tiny_checkpoint,
                                                             tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    del tensors[sorted(k for k in tensors if not k.startswith("schedule."))[0]]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    sha = _upload(client, broken.read_bytes(), name="broken").json()["sha256"]
    reason = validate_checkpoint(sha, settings=settings, sessions=sessions)
    for action in ("retire", "restore"):
        refused = client.post(f"/admin/checkpoints/broken/{action}", headers=ADMIN)
        assert refused.status_code == 409 and "is rejected" in refused.json()["detail"]
    row = next(r for r in client.get("/admin/checkpoints", headers=ADMIN).json() if r["name"] == "broken")
    assert row["status"] == "rejected" and row["rejection_reason"] == reason


def test_production_refuses_unsafe_settings():
    from pydantic import ValidationError

    from xtaldiff.settings import Settings

    postgres = "postgresql+psycopg://xtaldiff@db/xtaldiff"
    with pytest.raises(ValidationError, match="at least 24 characters"):
        Settings(environment="production", database_url=postgres, admin_token="secret")
    with pytest.raises(ValidationError, match="not SQLite"):
        Settings(environment="production")
    assert Settings(environment="production", database_url=postgres, admin_token="").admin_token \
        is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda meta: meta.pop("diffusion"), "diffusion.timesteps must be a positive integer"),
    (lambda meta: meta["diffusion"].update(timesteps=0), "diffusion.timesteps must be a positive integer"),
    (lambda meta: meta["sampling"].update(default_guidance=-1), "default_guidance a number >= 0"),
    (lambda meta: meta["sampling"].update(default_guidance="2"), "default_guidance a number >= 0"),
    (lambda meta: meta["sampling"].update(default_steps=51), "default_steps must be an integer from 1 to 50"),
    (lambda meta: meta["sampling"].update(default_steps=0), "default_steps must be an integer from 1 to 50"),
    (lambda meta: meta["sampling"].update(default_steps=2.5), "default_steps must be an integer from 1 to 50"),
    (lambda meta: meta["sampling"].update(default_sampler="euler"), "default_sampler must be one of rescaled, paper"),
    (lambda meta: meta["sampling"].update(default_sampler=["paper"]), "default_sampler must be one of rescaled, paper"),
    (lambda meta: meta["property"].update(min=10**400), "must be finite numbers"),
    (lambda meta: meta["property"].pop("std"), "property needs name, unit, min, max, mean, std"),
    (lambda meta: meta.update(num_atoms={"\u00b2": 1.0}), "atom counts from 1 to 64"),
    (lambda meta: meta.update(num_atoms={"5000": 1.0}), "atom counts from 1 to 64"),
    (lambda meta: meta.update(num_atoms={"5": -1.0}), "atom counts from 1 to 64"),
    (lambda meta: meta.update(num_atoms_by_property=[1, 2]), "num_atoms_by_property must hold ascending"),
    (lambda meta: meta["num_atoms_by_property"].update(edges=[1.0, 0.5]), "num_atoms_by_property must hold"),
    (lambda meta: meta["num_atoms_by_property"]["counts"].update({"65": [1] * 20}), "num_atoms_by_property"),
    (lambda meta: meta["num_atoms_by_property"]["counts"].update({"5": [1] * 19}), "num_atoms_by_property"),
    (lambda meta: meta["num_atoms_by_property"]["counts"].update({"5": [0] * 20}), "every bin holding some"),
    (lambda meta: meta["sampling"].pop("step_lr"), "sampling.step_lr must be a number > 0"),
    (lambda meta: meta["sampling"].update(lattice_bound=float("nan")), "sampling.lattice_bound must be a number > 0"),
    (lambda meta: meta.update(network=[128]), "network must be an object"),
    (lambda meta: meta.update(metrics="SR5 1.0"), "metrics must be an object when present"),
    (lambda meta: meta["property"].update(percentiles={"5": "low"}), "percentiles must map quantiles to numbers"),
])
def test_headers_without_a_usable_schedule_or_guidance_are_refused(tiny_checkpoint, change, message):
    import io

    from xtaldiff.checkpoint_file import CheckpointFileError, inspect_checkpoint

    raw = tiny_checkpoint.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["xtaldiff"])
    assert inspect_checkpoint(io.BytesIO(raw)).meta.header == meta
    change(meta)
    header["__metadata__"]["xtaldiff"] = json.dumps(meta)
    with pytest.raises(CheckpointFileError, match=message):
        inspect_checkpoint(io.BytesIO(_safetensors(header, raw[8 + size :])))


@pytest.mark.parametrize(("header", "message"), [
    (b"[" * 200_000 + b"]" * 200_000, "safetensors header is not valid JSON"),
    (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
     "safetensors header is not valid JSON"),
])
def test_crafted_headers_are_refused_not_crashed_on(header, message):
    import io

    from xtaldiff.checkpoint_file import CheckpointFileError, inspect_checkpoint

    raw = struct.pack("<Q", len(header)) + header + b"\0" * 4
    with pytest.raises(CheckpointFileError, match=message):
        inspect_checkpoint(io.BytesIO(raw))
