"""HTTP API on PostgreSQL and SQLite: the design flow, reading results, bad input."""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile

import pytest

from tests.service.conftest import parse_bundle_cifs, submit
from worker.jobs import run_design
from xtaldiff import queries
from xtaldiff.training_systems import training_reference


def run_inline(settings, sessions, job_id: str) -> None:
    """The worker's own job code, called directly (no Celery) to make finished jobs fast."""
    assert run_design(job_id, settings=settings, sessions=sessions) == "succeeded"


def test_design_returns_202_with_location_and_a_queued_job(client, checkpoint):
    response = client.post("/design", json={"dataset": "perov_5", "target": 1.0,
                                            "num_samples": 3, "seed": 5})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["model"] == {"name": checkpoint.name, "sha256": checkpoint.sha256,
                            "dataset": "perov_5", "property": "heat_ref", "unit": "eV"}
    assert job["request"]["seed"] == 5 and job["request"]["num_samples"] == 3
    assert client.get(job["links"]["self"]["href"]).json()["status"] == "queued"


def test_job_ids_are_random_uuids_and_seed_is_recorded(client, checkpoint):
    first, second = (client.post("/design", json={"dataset": "perov_5", "target": 1.0}).json()
                     for _ in range(2))
    assert first["id"] != second["id"] and len(first["id"]) == 36 and first["id"][14] == "4"
    assert isinstance(first["request"]["seed"], int)


def test_finished_job_lists_structures_summary_and_timings(client, checkpoint, settings,
                                                          sessions):
    job_id = submit(client, num_samples=4, seed=1)
    run_inline(settings, sessions, job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["progress"]["fraction"] == 1.0
    assert [s["index"] for s in job["structures"]] == [0, 1, 2, 3]
    assert job["summary"]["num_structures"] == 4
    assert set(job["timings"]["worker"]) >= {"load", "sample", "analyse", "total"}
    assert job["timings"]["wall_s"] >= job["timings"]["worker"]["sample"]
    assert all(s["num_atoms"] == 5 for s in job["structures"])  # perov_5 cells
    assert job["summary"]["num_checked"] == 4  # validity is always checked
    detail = client.get(f"/jobs/{job_id}/structures/0").json()
    assert detail["valid"] == (detail["invalid_reason"] is None)
    # Every structurally valid structure is matched against the dataset; the others are not.
    details = [client.get(f"/jobs/{job_id}/structures/{k}").json() for k in range(4)]
    for structure in details:
        assert (structure["novel"] is None) == (not structure["valid_structure"])
        assert (structure["known_as"] is not None) == (structure["novel"] is False)
    assert job["summary"]["num_novel"] + job["summary"]["num_known"] == sum(s["valid_structure"] for s in details)
    # perov_5's property is no formation energy: no hull distances.
    assert job["summary"]["num_near_hull"] == 0 and all(s["predicted_e_above_hull"] is None for s in details)
    assert "oracle is off" in detail["prediction_note"]


def test_structures_paginate_and_serve_json_and_both_cifs(client, checkpoint, settings,
                                                          sessions):
    job_id = submit(client, num_samples=5, seed=2)
    run_inline(settings, sessions, job_id)
    page = client.get(f"/jobs/{job_id}/structures", params={"offset": 1, "limit": 2}).json()
    assert [s["index"] for s in page["items"]] == [1, 2] and page["total"] == 5
    assert page["links"]["next"]["href"].endswith("offset=3&limit=2")
    assert page["links"]["prev"]["href"].endswith("offset=0&limit=2")
    detail = client.get(f"/jobs/{job_id}/structures/3").json()
    assert detail["index"] == 3 and set(detail["lattice"]) >= {"a", "alpha", "volume"}
    symmetrized = client.get(f"/jobs/{job_id}/structures/3.cif")
    p1 = client.get(f"/jobs/{job_id}/structures/3.cif", params={"cell": "p1"})
    assert symmetrized.headers["content-type"].startswith("chemical/x-cif")
    assert symmetrized.text == detail["cif"] and p1.text == detail["cif_p1"]
    assert "_symmetry_space_group_name_H-M   'P 1'" in p1.text
    assert f"_chemical_formula_sum   '{detail['full_formula']}'" in p1.text


def test_bundle_holds_every_cif_and_the_summaries(client, checkpoint, settings, sessions):
    job_id = submit(client, num_samples=3, seed=2)
    run_inline(settings, sessions, job_id)
    response = client.get(f"/jobs/{job_id}/bundle.zip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert len([n for n in names if n.startswith("cif/")]) == 3
    assert len([n for n in names if n.startswith("cif_p1/")]) == 3
    summary = json.loads(archive.read("summary.json"))
    assert summary["id"] == job_id and len(summary["structures"]) == 3
    rows = list(csv.DictReader(io.StringIO(archive.read("summary.csv").decode())))
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["cif"] in names
    assert parse_bundle_cifs(response.content) > 0


def test_bundle_of_an_unfinished_job_is_a_409(client, checkpoint):
    job_id = submit(client)
    response = client.get(f"/jobs/{job_id}/bundle.zip")
    assert response.status_code == 409 and "queued" in response.json()["detail"]


def test_cancel_queued_job_at_once_and_refuse_cancelling_a_finished_one(
        client, checkpoint, settings, sessions):
    job_id = submit(client)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    # The worker, should the message still arrive, leaves it alone.
    assert run_design(job_id, settings=settings, sessions=sessions) is None
    done = submit(client, num_samples=1)
    run_inline(settings, sessions, done)
    response = client.delete(f"/jobs/{done}")
    assert response.status_code == 409 and "already succeeded" in response.json()["detail"]


def test_models_lists_ready_checkpoints_with_property_range(client, checkpoint):
    models = client.get("/models").json()
    assert [m["name"] for m in models] == [checkpoint.name]
    prop = models[0]["property"]
    assert prop["name"] == "heat_ref" and prop["unit"] == "eV" and prop["min"] < prop["max"]
    assert models[0]["active"] and models[0]["conditioning"] == "cdi"
    assert models[0]["max_num_atoms"] == 5
    assert models[0]["timesteps"] == 50 and models[0]["default_guidance"] == 0.0


def test_target_just_outside_the_training_range_runs_with_a_warning(client, checkpoint):
    low = checkpoint.meta.property.min
    response = client.post("/design", json={"dataset": "perov_5", "target": low - 0.1})
    assert response.status_code == 202
    assert "below the lowest heat_ref" in response.json()["warnings"][0]


def test_without_a_target_a_design_runs_at_the_least_value_in_training(client, checkpoint):
    job = client.post("/design", json={"dataset": "perov_5"}).json()
    assert job["request"]["target"] == checkpoint.meta.property.min
    assert job["warnings"][0].startswith("no target given: ran at")


def test_within_elements_the_default_target_is_the_least_among_their_training_structures(client, checkpoint):
    system = training_reference("perov_5", ["Ba", "Ti", "O"])
    job = client.post("/design", json={"dataset": "perov_5", "elements": ["Ba", "Ti", "O"]}).json()
    assert job["request"]["target"] == system.minimum
    assert f"among the {system.count} training structures made only of Ba, Ti, O" in job["warnings"][0]
    # A target below all of them runs, with a warning that says what omitting it would do.
    job = client.post("/design", json={"dataset": "perov_5", "elements": ["Ba", "Ti", "O"],
                                       "target": system.minimum - 0.1}).json()
    assert job["request"]["target"] == system.minimum - 0.1
    assert any(f"omit target to run at {system.minimum:.4g}" in w for w in job["warnings"])


def test_a_system_lists_its_training_structures(client, checkpoint):
    system = client.get(f"/models/{checkpoint.name}/systems/Ba-Ti-O").json()
    expected = training_reference("perov_5", ["Ba", "Ti", "O"])
    assert system["elements"] == ["Ba", "Ti", "O"] and system["unit"] == "eV"
    assert (system["count"], system["minimum"], system["median"]) == (expected.count, expected.minimum, expected.median)
    assert system["minimum"] <= system["p5"] <= system["median"]
    empty = client.get(f"/models/{checkpoint.name}/systems/Ba").json()
    assert empty["count"] == 0 and empty["minimum"] is None
    response = client.get(f"/models/{checkpoint.name}/systems/Ba-Xx")
    assert response.status_code == 422 and "'Xx' not chemical" in response.json()["detail"]
    response = client.get("/models/nope/systems/Ba-Ti-O")
    assert response.status_code == 404 and "no ready model named 'nope'" in response.json()["detail"]


def test_a_server_without_the_training_split_asks_for_a_target(client, checkpoint, monkeypatch):
    from xtaldiff import training_systems

    def missing(name, root=None):
        raise training_systems.TrainingDataMissing(f"this server has no training split of {name} (data/)")

    monkeypatch.setattr(training_systems, "training_compositions", missing)
    response = client.post("/design", json={"dataset": "perov_5", "elements": ["Ba", "Ti", "O"]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("give a target: this server has no training split of perov_5")
    assert client.post("/design", json={"dataset": "perov_5", "elements": ["Ba", "Ti", "O"],
                                        "target": 0.5}).status_code == 202
    response = client.get(f"/models/{checkpoint.name}/systems/Ba-Ti-O")
    assert response.status_code == 404 and "no training split of perov_5" in response.json()["detail"]


def test_metrics_exports_request_counts_and_jobs_per_status(client, checkpoint):
    submit(client)
    client.get("/jobs/nope")
    text = client.get("/metrics").text
    assert 'xtaldiff_jobs{status="queued"} 1.0' in text
    assert 'route="/jobs/{job_id}",status="404"' in text


def test_plain_function_rejects_a_retired_model(settings, sessions, checkpoint):
    from api.design import plan_design
    from api.errors import Unprocessable
    from api.schemas import DesignRequest

    with sessions() as session:
        queries.retire_checkpoint(session, checkpoint=queries.get_checkpoint(
            session, name=checkpoint.name))
        session.commit()
        with pytest.raises(Unprocessable, match="is retired"):
            plan_design(session, request=DesignRequest(model=checkpoint.name, target=1.0),
                        settings=settings)


# --- bad input: every case a 4xx whose message names what to change -------------------------

BAD_DESIGNS = [
    ({"model": "nope", "target": 1.0}, 422, "model 'nope' does not exist"),
    ({"dataset": "mp_20", "target": 1.0}, 422, "no model serves dataset mp_20"),
    ({"dataset": "perov_6", "target": 1.0}, 422, "dataset: Input should be"),
    ({"target": 1.0}, 422, "give `model`"),
    ({"dataset": "perov_5", "elements": ["Ba"]}, 422, "give a target: no structure of perov_5's training split"),
    ({"dataset": "perov_5", "target": "high"}, 422, "target: Input should be a valid number"),
    ({"dataset": "perov_5", "target": 1e9}, 422, "far outside"),
    ({"dataset": "perov_5", "target": 1.0, "num_samples": 0}, 422, "num_samples: Input should "
     "be greater than or equal to 1"),
    ({"dataset": "perov_5", "target": 1.0, "num_samples": 1001}, 422, "at most 1000 per job"),
    ({"dataset": "perov_5", "target": 1.0, "elements": ["Xx"]}, 422, "'Xx' not chemical"),
    ({"dataset": "perov_5", "target": 1.0, "elements": ["U"]}, 422, "never saw U"),
    ({"dataset": "perov_5", "target": 1.0, "elements": []}, 422, "elements: List should have"),
    ({"dataset": "perov_5", "target": 1.0, "num_atoms": 6}, 422, "at most 5 atoms"),
    ({"dataset": "perov_5", "target": 1.0, "steps": 10**6}, 422, "steps is 1000000"),
    ({"dataset": "perov_5", "target": 1.0, "seed": -1}, 422, "seed: Input should be greater"),
    ({"dataset": "perov_5", "target": 1.0, "guidance": 100}, 422, "guidance is 100"),
    ({"dataset": "perov_5", "target": 1.0, "colour": "red"}, 422, "colour: Extra inputs"),
    ({"dataset": "perov_5", "target": 1.0, "steps": 51}, 422, "has T = 50: ask for 50 or fewer"),
    ({"dataset": "perov_5", "target": True}, 422, "target: Input should be a valid number"),
    ({"dataset": "perov_5", "target": "1.0"}, 422, "target: Input should be a valid number"),
    ({"dataset": "perov_5", "target": 1.0, "num_samples": "2"}, 422, "num_samples: Input should be a valid integer"),
    ({"dataset": "perov_5", "target": 1.0, "steps": 5.0}, 422, "steps: Input should be a valid integer"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_DESIGNS,
                         ids=[m for _, _, m in BAD_DESIGNS])
def test_bad_design_requests_are_explained(client, checkpoint, body, status, message):
    response = client.post("/design", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_target_is_refused(client, checkpoint, literal):
    # Python's JSON parser accepts these literals; the API must still refuse them.
    body = '{"dataset": "perov_5", "target": ' + literal + '}'
    response = client.post("/design", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "target: Input should be a finite number" in response.json()["detail"]


def test_malformed_json_is_a_400(client, checkpoint):
    response = client.post("/design", content='{"dataset": "perov_5", "target": ',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_wrong_content_type_is_a_415(client, checkpoint):
    response = client.post("/design", content="dataset=perov_5&target=1",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]


def test_unknown_job_and_structure_out_of_range_are_404s(client, checkpoint, settings,
                                                         sessions):
    response = client.get("/jobs/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404 and "POST /design" in response.json()["detail"]
    job_id = submit(client, num_samples=2)
    response = client.get(f"/jobs/{job_id}/structures/0.cif")
    assert response.status_code == 404 and "no structures (it is queued)" in response.text
    run_inline(settings, sessions, job_id)
    for path in (f"/jobs/{job_id}/structures/2", f"/jobs/{job_id}/structures/7.cif",
                 f"/jobs/{job_id}/structures/-1"):
        response = client.get(path)
        assert response.status_code == 404 and "indices 0 to 1" in response.json()["detail"]
    assert client.get(f"/jobs/{job_id}/structures/x").status_code == 422
    assert client.get(f"/jobs/{job_id}/structures", params={"limit": 0}).status_code == 422


def test_openapi_describes_every_field_and_gives_request_examples(client):
    document = client.get("/openapi.json").json()
    missing = [
        f"{name}.{field}"
        for name, schema in document["components"]["schemas"].items()
        if not name.startswith(("HTTPValidationError", "ValidationError"))
        for field, spec in schema.get("properties", {}).items()
        if "description" not in spec and "$ref" not in spec and "allOf" not in spec
    ]
    assert missing == []
    design = document["components"]["schemas"]["DesignRequest"]
    assert design["examples"] and all("target" in e for e in design["examples"])
    assert math.isfinite(design["examples"][0]["target"])


def test_openapi_declares_this_servers_caps_on_a_design_request(settings, checkpoint):
    from fastapi.testclient import TestClient

    from api.main import create_app

    capped = settings.model_copy(update={"max_num_samples": 250, "max_steps": 400, "max_guidance": 3.0,
                                         "max_structure_steps": 1000})
    with TestClient(create_app(capped)) as client:
        request = client.get("/openapi.json").json()["components"]["schemas"]["DesignRequest"]
        assert "At most 1000 structure-steps (num_samples x steps)" in request["description"]
        fields = request["properties"]
        assert fields["num_samples"]["maximum"] == 250
        assert [b.get("maximum") for b in fields["steps"]["anyOf"]] == [400, None]
        assert [b.get("maximum") for b in fields["guidance"]["anyOf"]] == [3.0, None]
        assert fields["sampler"]["anyOf"][0]["enum"] == ["rescaled", "paper", "exponential"]
        refused = client.post("/design", json={"dataset": "perov_5", "target": 0.1, "num_samples": 251})
        assert refused.status_code == 422 and "at most 250" in refused.text
        too_much = client.post("/design", json={"dataset": "perov_5", "target": 0.1, "num_samples": 51, "steps": 20})
        assert too_much.status_code == 422
        assert "51 structures x 20 steps is 1020 structure-steps; this server runs at most 1000" in too_much.text
        assert client.post("/design", json={"dataset": "perov_5", "target": 0.1, "num_samples": 50,
                                            "steps": 20}).status_code == 202


def test_a_request_without_guidance_or_steps_runs_at_the_models_defaults(client, sessions, tmp_path):
    from model.checkpoint import read_metadata, rewrite_metadata
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff.serve import register_checkpoint

    path = tiny_checkpoint_file(tmp_path / "guided.safetensors", seed=5)
    meta = read_metadata(path).as_dict()
    meta["sampling"].update(default_guidance=1.5, default_sampler="exponential", default_steps=20,
                            default_charge_balance=True)
    rewrite_metadata(path, meta)
    register_checkpoint(sessions, path)
    listed = client.get("/models").json()[0]
    assert (listed["default_guidance"], listed["default_sampler"], listed["default_steps"], listed["timesteps"]) == (
        1.5, "exponential", 20, 50)
    assert listed["default_charge_balance"] is True
    plain = client.post("/design", json={"dataset": "perov_5", "target": 1.0})
    assert plain.status_code == 202, plain.text
    plain = client.get(f"/jobs/{plain.json()['id']}").json()
    ran = plain["request"]
    assert (ran["guidance"], ran["steps"], ran["sampler"], ran["charge_balance"]) == (1.5, 20, "exponential", True)
    chosen = client.get(f"/jobs/{submit(client, guidance=0.0, steps=50, sampler='paper', charge_balance=False)}").json()
    ran = chosen["request"]
    assert (ran["guidance"], ran["steps"], ran["sampler"], ran["charge_balance"]) == (0.0, 50, "paper", False)
    refused = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "charge_balance": "yes"})
    assert refused.status_code == 422 and "charge_balance" in refused.text
    refused = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "sampler": "euler"})
    assert refused.status_code == 422 and "rescaled" in refused.text and "paper" in refused.text


def test_atom_counts_are_drawn_near_the_target_where_the_model_records_them(client, checkpoint):
    listed = client.get("/models").json()[0]
    assert listed["atom_counts_near_target"] is True
    ran = client.get(f"/jobs/{submit(client)}").json()["request"]
    assert ran["atom_counts"] == "near_target"
    assert listed["default_charge_balance"] is False and ran["charge_balance"] is False
    chosen = client.get(f"/jobs/{submit(client, atom_counts='training')}").json()["request"]
    assert chosen["atom_counts"] == "training"
    refused = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "atom_counts": "uniform"})
    assert refused.status_code == 422 and "near_target" in refused.text


def test_a_model_without_atom_counts_by_property_draws_from_the_whole_split(client, sessions, tmp_path):
    from model.checkpoint import read_metadata, rewrite_metadata
    from tests.conftest import tiny_checkpoint_file
    from xtaldiff.serve import register_checkpoint

    path = tiny_checkpoint_file(tmp_path / "older.safetensors", seed=6)
    meta = read_metadata(path).as_dict()
    del meta["num_atoms_by_property"]
    rewrite_metadata(path, meta)
    register_checkpoint(sessions, path)
    assert client.get("/models").json()[0]["atom_counts_near_target"] is False
    plain = client.post("/design", json={"dataset": "perov_5", "target": 1.0})
    assert plain.status_code == 202, plain.text
    assert client.get(f"/jobs/{plain.json()['id']}").json()["request"]["atom_counts"] == "training"
    refused = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "atom_counts": "near_target"})
    assert refused.status_code == 422
    assert "records no atom counts by property" in refused.json()["detail"] and "num_atoms" in refused.json()["detail"]
    fixed = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "atom_counts": "near_target",
                                         "num_atoms": 5})
    assert fixed.status_code == 202, fixed.text


@pytest.mark.parametrize("path", [
    "/jobs/{id}/structures/4170497151666916622675738624.cif",
    "/jobs/{id}/structures/-4170497151666916622675738624.cif",
    "/jobs/{id}/structures/4170497151666916622675738624",
    "/jobs/{id}/structures?limit=480&offset=20550222997464993792",
])
def test_integers_beyond_any_index_are_a_422_not_a_500(client, checkpoint, path):
    response = client.get(path.format(id=submit(client)))
    assert response.status_code == 422, response.text
    assert "2147483647" in response.json()["detail"]


@pytest.mark.parametrize("body", [
    "{\"dataset\": \"perov_5\", \"target\": 1.0, \"model\": \"caf\xe9\"}".encode("latin-1"),
    b"[" * 30_000 + b"]" * 30_000,
    b'{"dataset": "perov_5", "target": ' + b"9" * 5000 + b"}",
])
def test_bodies_the_json_decoder_cannot_read_are_explained(client, checkpoint, body):
    response = client.post("/design", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    detail = response.json()["detail"]
    assert "JSON" in detail and ("send UTF-8" in detail or "fix the syntax" in detail), detail


def test_design_bodies_are_limited(client, checkpoint):
    body = {"dataset": "perov_5", "target": 1.0, "model": "x" * 100_000}
    response = client.post("/design", json=body)
    assert response.status_code == 413 and "at most 65536 bytes" in response.json()["detail"]


def test_an_upload_without_the_admin_token_is_refused_before_its_body_is_read(client):
    sent = []

    def body():
        for _ in range(1000):  # 1 GB, were it all read
            sent.append(1)
            yield b"\0" * (1 << 20)

    response = client.post("/admin/checkpoints", content=body(),
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 401 and "admin routes need" in response.json()["detail"]
    assert len(sent) <= 2


def test_a_caller_with_too_many_unfinished_jobs_gets_a_429_with_retry_after(settings, sessions, checkpoint):
    from fastapi.testclient import TestClient

    from api.main import create_app

    limited = settings.model_copy(update={"max_pending_jobs": 2})
    with TestClient(create_app(limited)) as client:
        first, _ = submit(client), submit(client)
        refused = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "steps": 5})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "2 of your jobs are queued or running" in refused.json()["detail"]
        assert client.delete(f"/jobs/{first}").status_code == 202  # a cancelled job frees a place
        assert client.post("/design", json={"dataset": "perov_5", "target": 1.0}).status_code == 202


def test_without_keys_the_pending_limit_is_per_address(settings, sessions, checkpoint):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from xtaldiff.tables import Job

    limited = settings.model_copy(update={"max_pending_jobs": 2})
    assert not limited.api_keys
    with TestClient(create_app(limited), client=("10.0.0.1", 5000)) as flooder, \
            TestClient(create_app(limited), client=("10.0.0.2", 5000)) as other:
        submit(flooder), submit(flooder)
        refused = flooder.post("/design", json={"dataset": "perov_5", "target": 1.0, "steps": 5})
        assert refused.status_code == 429 and "per address" in refused.json()["detail"]
        job_id = submit(other)
    with sessions() as session:
        assert session.get(Job, job_id).client == "ip:10.0.0.2"


def test_a_job_with_relax_keeps_each_structure_as_generated_and_as_relaxed(client, settings, sessions, checkpoint):
    too_many = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "relax": True,
                                            "num_samples": settings.max_relax_samples + 1})
    assert too_many.status_code == 422 and "relaxes at most" in too_many.text
    plain = submit(client, num_samples=1, seed=3)
    run_inline(settings, sessions, plain)
    refused = client.get(f"/jobs/{plain}/structures/0.cif?cell=relaxed")
    assert refused.status_code == 404 and "was not relaxed" in refused.json()["detail"]

    job_id = submit(client, num_samples=3, seed=3, relax=True)
    run_inline(settings, sessions, job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["request"]["relax"] is True
    assert job["progress"]["phase"] == "relaxing" and job["progress"]["done"] == job["progress"]["total"] == 3
    assert "relax" in job["timings"]["worker"]
    relaxed = 0
    for brief in job["structures"]:
        detail = client.get(brief["links"]["self"]["href"]).json()
        record = detail["relaxation"]
        assert set(record) >= {"energy_before_ev_per_atom", "energy_after_ev_per_atom", "steps", "converged",
                               "rms_displacement", "error"}
        if record["error"] is None:
            relaxed += 1
            assert record["energy_after_ev_per_atom"] <= record["energy_before_ev_per_atom"] + 1e-6
            assert "valid" in record and "predicted_property" in record
            cif = client.get(brief["links"]["cif_relaxed"]["href"])
            assert cif.status_code == 200 and cif.text == detail["relaxed_cif"]
            assert "_relaxed.cif" in cif.headers["content-disposition"]
        else:
            assert detail["relaxed_cif"] is None and "cif_relaxed" not in brief["links"]
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{job_id}/bundle.zip").content))
    assert len([n for n in archive.namelist() if n.startswith("cif_relaxed/")]) == relaxed
    rows = list(csv.DictReader(io.StringIO(archive.read("summary.csv").decode())))
    assert [row["relax_error"] == "" for row in rows] == [
        client.get(b["links"]["self"]["href"]).json()["relaxation"]["error"] is None for b in job["structures"]]


def test_cancelling_while_relaxing_stops_between_structures(client, settings, sessions, checkpoint, monkeypatch):
    import model.relax
    from tests.service.conftest import wait_for
    from xtaldiff.tables import Job

    job_id = submit(client, num_samples=5, seed=3, relax=True)
    settings = settings.model_copy(update={"relax_max_fire_steps": 7})
    relaxed = []

    def heartbeat_at():
        with sessions() as session:
            return session.get(Job, job_id).heartbeat_at

    def relax_and_cancel_at_the_second(structure, max_steps):
        assert max_steps == 7  # the server's cap reaches each relaxation
        relaxed.append(structure)
        if len(relaxed) == 2:
            assert client.delete(f"/jobs/{job_id}").status_code == 202
            # Two heartbeats after the request: the first read it, so the worker knows.
            for _ in range(2):
                before = heartbeat_at()
                wait_for(lambda before=before: heartbeat_at() > before, timeout=30, what="a heartbeat")
        return model.relax.Relaxation(None, None, None, 0, False, None, "not relaxed in this test")

    monkeypatch.setattr(model.relax, "relax", relax_and_cancel_at_the_second)
    assert run_design(job_id, settings=settings, sessions=sessions) == "cancelled"
    job = client.get(f"/jobs/{job_id}").json()
    assert len(relaxed) == 2
    assert (job["status"], job["progress"]["phase"], job["structures"]) == ("cancelled", "relaxing", [])
