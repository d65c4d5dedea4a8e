"""xtaldiff.client against the real service (PostgreSQL, Redis, a Celery worker); its retry
rules against a scripted transport."""

from __future__ import annotations

import time
import warnings
import zipfile

import httpx
import pytest
from pymatgen.core import Structure

from tests.service.conftest import long_running_model
from xtaldiff.client import Client, JobFailed, RequestRefused, ServerUnavailable


@pytest.fixture(scope="module")
def api(stack):
    """The client, talking to the stack's app in process (the worker is a real subprocess)."""
    test_client, _, _ = stack
    with Client(str(test_client.base_url), transport=test_client._transport) as xtaldiff:
        yield xtaldiff


def test_a_relaxed_job_gives_the_relaxed_cells_and_their_figures(api):
    job_id = api.submit(dataset="perov_5", target=1.0, n=2, steps=5, seed=6, relax=True)
    assert api.wait(job_id, timeout=180, progress=False)["progress"]["phase"] == "relaxing"
    generated = api.structures(job_id)
    records = {s.properties["index"]: s.properties["relaxation"] for s in generated}
    assert records and all("energy_before_ev_per_atom" in r for r in records.values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relaxed = api.structures(job_id, cell="relaxed")
    assert [s.properties["index"] for s in relaxed] == [i for i, r in records.items() if r["error"] is None]
    for structure in relaxed:
        assert structure.properties["relaxation"]["energy_after_ev_per_atom"] is not None
        assert len(structure) == structure.properties["num_atoms"]
    if len(relaxed) < len(records):
        assert any("no relaxed cell" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="cell must be one of p1, symmetrized, relaxed"):
        api.structures(job_id, cell="niggli")


def test_design_returns_structures_with_their_properties(api, tmp_path):
    models = api.models()
    assert models[0]["dataset"] == "perov_5"
    # The untrained test model collapses some cells to zero volume; those cannot be read back.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structures = api.design(dataset="perov_5", target=1.0, n=6, steps=5, seed=4, progress=False)
    assert structures and all(isinstance(s, Structure) for s in structures)
    kept = [s.properties["index"] for s in structures]
    left_out = sorted(set(range(6)) - set(kept))
    assert kept == sorted(kept)
    notes = [str(w.message) for w in caught if "left out" in str(w.message)]
    if left_out:
        assert len(notes) == 1 and f"indices {left_out}" in notes[0]
    else:
        assert notes == []
    for structure in structures:
        assert structure.composition.reduced_formula == structure.properties["formula"]
        assert len(structure) == structure.properties["num_atoms"]
        assert "predicted_property" in structure.properties and "valid" in structure.properties
        assert structure.properties["novel"] in (True, False, None) and "known_as" in structure.properties

    job_id = api.submit(dataset="perov_5", target=1.0, n=2, steps=5, seed=4)
    job = api.wait(job_id, timeout=120, progress=False)
    assert job["request"]["seed"] == 4 and job["summary"]["num_structures"] == 2
    bundle = api.bundle(job_id, tmp_path / "bundle.zip")
    assert "summary.json" in zipfile.ZipFile(bundle).namelist()


def test_a_system_and_a_design_within_it_without_a_target(api):
    model = api.models()[0]["name"]
    system = api.system(model, ["Ba", "Ti", "O"])
    assert system["count"] > 0 and system["elements"] == ["Ba", "Ti", "O"]
    job = api.job(api.submit(model=model, elements=["Ba", "Ti", "O"], n=1, steps=5))
    assert job["request"]["target"] == system["minimum"]
    with pytest.raises(RequestRefused, match="never saw Pu"):
        api.system(model, ["Ba", "Pu"])


def test_refusals_carry_the_servers_explanation(api):
    with pytest.raises(RequestRefused, match="far outside") as refused:
        api.submit(dataset="perov_5", target=1e9)
    assert refused.value.status_code == 422
    with pytest.raises(RequestRefused, match="not found|does not exist|no job"):
        api.job("00000000-0000-0000-0000-000000000000")


def test_a_cancelled_job_raises_and_a_timeout_says_how_long_it_waited(api, stack, tiny_checkpoint, tmp_path):
    with long_running_model(stack[2], tiny_checkpoint, tmp_path) as name:
        job_id = api.submit(model=name, target=1.0, n=1000, steps=1000)
        with pytest.raises(TimeoutError, match=r"after waiting \d+ s"):
            api.wait(job_id, timeout=0.2, poll_s=0.1, progress=False)
        api.cancel(job_id)
        with pytest.raises(JobFailed, match="cancelled"):
            api.wait(job_id, timeout=120, poll_s=0.2, progress=False)


def scripted(statuses: list[tuple[int, dict]]) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering with the given (status, headers) in turn, then 200; it records
    when each request arrived."""
    arrivals: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        arrivals.append(time.monotonic())
        if len(arrivals) <= len(statuses):
            status, headers = statuses[len(arrivals) - 1]
            return httpx.Response(status, headers=headers, json={"detail": "busy, come back later"})
        return httpx.Response(200, json=[{"name": "m"}])

    return httpx.MockTransport(answer), arrivals


def test_429_and_503_are_retried_honouring_retry_after():
    transport, arrivals = scripted([(429, {"Retry-After": "1"}), (503, {})])
    with Client("http://server", transport=transport, backoff_s=0.05) as client:
        assert client.models() == [{"name": "m"}]
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 1.0  # Retry-After, not the 0.05 s backoff
    assert arrivals[2] - arrivals[1] >= 0.1  # the backoff doubled


def test_retries_end_with_a_clear_error():
    transport, arrivals = scripted([(503, {})] * 10)
    with Client("http://server", transport=transport, retries=2, backoff_s=0.01) as client:
        with pytest.raises(ServerUnavailable, match="503 .* after 2 retries: busy, come back later"):
            client.models()
    assert len(arrivals) == 3
