"""A Python client for an xtaldiff server: designs come back as pymatgen Structures.

    from xtaldiff.client import Client

    client = Client("http://127.0.0.1:8000")
    structures = client.design(dataset="perov_5", target=-0.3, n=8, steps=200)
    best = min(structures, key=lambda s: s.properties["predicted_property"] or float("inf"))

Torch-free: it needs httpx, tqdm and pymatgen, not the model. Temporary refusals (503 while a
dependency is down, 429 past a rate limit) are retried with exponential backoff, honouring
Retry-After; any other 4xx raises `RequestRefused` carrying the server's `detail`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import httpx

RETRIED_STATUSES = (429, 503)
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
PAGE_SIZE = 200


class XtaldiffError(Exception):
    """Anything the client cannot do; the message says what happened."""


class RequestRefused(XtaldiffError):
    """The server refused a request (4xx); `detail` is its explanation of what to change."""

    def __init__(self, status_code: int, detail: str, url: str) -> None:
        super().__init__(f"{status_code} from {url}: {detail}")
        self.status_code, self.detail = status_code, detail


class ServerUnavailable(XtaldiffError):
    """The server kept answering 429/503 (or could not be reached) through every retry."""


class JobFailed(XtaldiffError):
    """The job ended failed or cancelled; `job` is its last state."""

    def __init__(self, job: dict) -> None:
        reason = job.get("error") or "no reason given"
        super().__init__(f"job {job['id']} {job['status']}: {reason}")
        self.job = job


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return detail if isinstance(detail, str) else str(detail)


class Client:
    """One server. `api_key` is sent as a bearer token when the server requires keys."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 30.0, retries: int = 6, backoff_s: float = 0.5,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout,
                                 transport=transport)
        self.retries, self.backoff_s = retries, backoff_s

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The response of the first attempt that is not a temporary refusal."""
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            last_attempt = attempt == self.retries
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if last_attempt:
                    raise ServerUnavailable(f"{self.http.base_url}{path}: {error}") from error
                time.sleep(wait)
                wait *= 2
                continue
            if response.status_code not in RETRIED_STATUSES:
                break
            if last_attempt:
                raise ServerUnavailable(
                    f"{response.status_code} from {response.request.url} after {self.retries} "
                    f"retries: {_detail(response)}"
                )
            retry_after = response.headers.get("Retry-After")
            time.sleep(float(retry_after) if retry_after and retry_after.isdigit() else wait)
            wait *= 2
        if 400 <= response.status_code < 500:
            raise RequestRefused(response.status_code, _detail(response), str(response.request.url))
        if response.status_code >= 500:
            raise XtaldiffError(f"{response.status_code} from {response.request.url}: {_detail(response)}")
        return response

    def models(self) -> list[dict]:
        """The models the server can run: dataset, conditioning, property and unit, metrics."""
        return self._request("GET", "/models").json()

    def submit(self, *, target: float | None = None, dataset: str | None = None, model: str | None = None,
               n: int = 16, num_atoms: int | None = None, elements: Sequence[str] | None = None,
               guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
               atom_counts: str | None = None, charge_balance: bool | None = None, relax: bool = False,
               seed: int | None = None) -> str:
        """Queue a design job; returns its id. Fields left None take the server's defaults (target: the
        least value in training, among the structures made only of `elements` when they are given)."""
        body = {"target": target, "dataset": dataset, "model": model, "num_samples": n,
                "num_atoms": num_atoms, "elements": list(elements) if elements is not None else None,
                "guidance": guidance, "steps": steps, "sampler": sampler, "atom_counts": atom_counts,
                "charge_balance": charge_balance, "relax": relax or None, "seed": seed}
        return self._request("POST", "/design", json={k: v for k, v in body.items() if v is not None}).json()["id"]

    def system(self, model: str, elements: Sequence[str]) -> dict:
        """The training structures of `model`'s dataset made only of `elements`: count, minimum, p5 and
        median of the property (the minimum is the target a request with these elements and no target runs at)."""
        return self._request("GET", f"/models/{model}/systems/{'-'.join(elements)}").json()

    def job(self, job_id: str) -> dict:
        """The job as GET /jobs/{id} returns it: status, progress, request as run, summary."""
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0,
             progress: bool = True) -> dict:
        """Poll until the job ends; returns it when it succeeded, raises JobFailed otherwise."""
        from tqdm.auto import tqdm

        started = time.monotonic()
        with tqdm(total=1.0, unit="job", disable=not progress, desc=job_id[:8],
                  bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}") as bar:
            while True:
                job = self.job(job_id)
                bar.set_description_str(f"{job_id[:8]} {job['progress'].get('phase') or job['status']}")
                bar.update(job["progress"]["fraction"] - bar.n)
                if job["status"] in FINAL_STATUSES:
                    break
                waited = time.monotonic() - started
                if timeout is not None and waited > timeout:
                    raise TimeoutError(
                        f"job {job_id} still {job['status']} after waiting {waited:.0f} s "
                        f"({job['progress'].get('phase') or 'waiting'}: {job['progress']['done']} of "
                        f"{job['progress']['total']} done)"
                    )
                time.sleep(poll_s)
        if job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    def structures(self, job_id: str, *, cell: str = "p1") -> list:
        """The job's structures as pymatgen Structures, in order, each with `properties`:
        index, formula, space group, predicted property, validity and the reasons, `novel` and
        `known_as` (the dataset structure it matches: material_id and split), links.

        cell: "p1" for the cell as the model made it, "symmetrized" for the symmetrised CIF,
        "relaxed" for the cell CHGNet relaxed it to (a job submitted with relax=True; the
        figures of the relaxation are in `properties["relaxation"]` whatever the cell).
        A structure whose cell no CIF can hold (a collapsed, zero-volume cell of a poorly
        trained model, or one CHGNet could not relax) is left out with a warning naming its
        index; its JSON stays on the server.
        """
        from pymatgen.core import Structure

        sources = {"p1": "cif_p1", "symmetrized": "cif", "relaxed": "relaxed_cif"}
        if cell not in sources:
            raise ValueError(f"cell must be one of {', '.join(sources)}, got {cell!r}")
        found, unreadable, offset = [], [], 0
        while True:
            page = self._request("GET", f"/jobs/{job_id}/structures",
                                 params={"offset": offset, "limit": PAGE_SIZE}).json()
            for item in page["items"]:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # pymatgen's notes on rounded coordinates
                        structure = Structure.from_str(item[sources[cell]] or "", fmt="cif")
                except ValueError:
                    unreadable.append(item["index"])
                    continue
                structure.properties = {k: v for k, v in item.items() if k not in sources.values()}
                found.append(structure)
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                break
        if unreadable:
            warnings.warn(
                f"job {job_id}: {len(unreadable)} of {offset} structures have no {cell} cell a CIF can hold "
                f"and are left out: indices {unreadable}; see /jobs/{job_id}/structures/<index>",
                stacklevel=2,
            )
        return found

    def design(self, *, target: float | None = None, dataset: str | None = None, model: str | None = None, n: int = 16,
               num_atoms: int | None = None, elements: Sequence[str] | None = None,
               guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
               atom_counts: str | None = None, charge_balance: bool | None = None, relax: bool = False,
               seed: int | None = None, timeout: float | None = None,
               progress: bool = True) -> list:
        """Submit, wait (with a progress bar) and return the structures (see `structures`; with
        relax=True, the relaxed cells)."""
        job_id = self.submit(target=target, dataset=dataset, model=model, n=n, num_atoms=num_atoms,
                             elements=elements, guidance=guidance, steps=steps, sampler=sampler,
                             atom_counts=atom_counts, charge_balance=charge_balance, relax=relax, seed=seed)
        self.wait(job_id, timeout=timeout, progress=progress)
        return self.structures(job_id, cell="relaxed" if relax else "p1")

    def bundle(self, job_id: str, path: str | Path) -> Path:
        """Save the job's bundle.zip (symmetrised and P1 CIFs, summary.json, summary.csv)."""
        path = Path(path)
        path.write_bytes(self._request("GET", f"/jobs/{job_id}/bundle.zip").content)
        return path

