"""Fairness under a flood; prints numbers, asserts nothing.

One API key submits a flood of small perov_5 jobs; once the worker is busy with them, another
key submits one job. Printed: how long that job waited for a worker, how long the flood's job
then in progress still had to run, and how many flood jobs started in between (0 when the
queue is fair: the newcomer goes next).

Embedded (SQLite, file broker):  .venv/bin/python scripts/bench_fairness.py --flood 500
Distributed (an empty database): .venv/bin/python scripts/bench_fairness.py --flood 500 \
    --database-url postgresql+psycopg://postgres@127.0.0.1/fairness --broker-url redis://127.0.0.1/6
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from bench_service import REPO, free_port, start_service, wait_healthy

FLOOD_KEY, OTHER_KEY = "flood-key-for-the-benchmark", "other-key-for-the-benchmark"


def submit(client: httpx.Client, key: str, body: dict) -> str:
    response = client.post("/design", json=body, headers={"X-API-Key": key})
    response.raise_for_status()
    return response.json()["id"]


def job(client: httpx.Client, key: str, job_id: str) -> dict:
    return client.get(f"/jobs/{job_id}", headers={"X-API-Key": key}).raise_for_status().json()


def moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=500, help="Jobs the first key submits.")
    parser.add_argument("--samples", type=int, default=8, help="Structures per flood job.")
    parser.add_argument("--steps", type=int, default=50, help="Reverse steps per job.")
    parser.add_argument("--database-url", help="Distributed mode: an empty database.")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--api-workers", type=int, default=1)
    args = parser.parse_args()
    args.oracle = False  # the queue's order is the point, not the predictions

    checkpoint = REPO / "checkpoints" / "perov_5_cdi.safetensors"
    body = {"model": "perov_5_cdi", "target": 0.0, "steps": args.steps, "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        processes = start_service(args, [checkpoint], Path(tmp) / "data", port, extra_env={
            "XTALDIFF_API_KEYS": json.dumps([FLOOD_KEY, OTHER_KEY]),
            "XTALDIFF_MAX_PENDING_JOBS": str(args.flood + 10),
        })
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base)
            with httpx.Client(base_url=base, timeout=30) as client:
                warm = submit(client, OTHER_KEY, {**body, "num_samples": 1})  # loads the model
                while job(client, OTHER_KEY, warm)["status"] != "succeeded":
                    time.sleep(0.2)
                started = time.monotonic()
                flood = [submit(client, FLOOD_KEY, {**body, "num_samples": args.samples}) for _ in range(args.flood)]
                submit_s = time.monotonic() - started
                while sum(job(client, FLOOD_KEY, j)["status"] == "succeeded" for j in flood[:3]) < 3:
                    time.sleep(0.2)
                newcomer = submit(client, OTHER_KEY, {**body, "num_samples": 1})
                while (mine := job(client, OTHER_KEY, newcomer))["status"] != "succeeded":
                    time.sleep(0.1)
                arrived, began = moment(mine["timings"]["created_at"]), moment(mine["timings"]["started_at"])
                seen = [job(client, FLOOD_KEY, j) for j in flood]
                timings = [(moment(j["timings"]["started_at"]), moment(j["timings"]["finished_at"])) for j in seen]
                running = [(s, f) for s, f in timings if s is not None and s <= arrived and (f is None or f > arrived)]
                overtook = sum(s is not None and arrived < s < began for s, _ in timings)
                durations = [(f - s).total_seconds() for s, f in timings if s is not None and f is not None]
                for j in flood:
                    client.delete(f"/jobs/{j}", headers={"X-API-Key": FLOOD_KEY})
        finally:
            for process in processes:
                process.send_signal(signal.SIGINT)
            for process in processes:
                process.wait(60)
    in_progress = running[0] if running else None
    print(json.dumps({
        "mode": "distributed" if args.database_url else "embedded",
        "flood_jobs": args.flood, "structures_per_flood_job": args.samples, "steps": args.steps,
        "seconds_to_submit_the_flood": round(submit_s, 1),
        "median_flood_job_s": round(sorted(durations)[len(durations) // 2], 2) if durations else None,
        "newcomer_waited_s": round((began - arrived).total_seconds(), 2),
        "in_progress_job_left_s": None if in_progress is None or in_progress[1] is None
        else round((in_progress[1] - arrived).total_seconds(), 2),
        "flood_jobs_started_before_the_newcomer": overtook,
        "flood_jobs_queued_when_it_arrived": sum(s is None or s > arrived for s, _ in timings),
    }, indent=2))


if __name__ == "__main__":
    main()
