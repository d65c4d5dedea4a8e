"""Fixtures for the service: real PostgreSQL (a schema per test), SQLite files, real Redis
(a key prefix per test), and real Celery workers in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from xtaldiff import db
from xtaldiff.serve import register_checkpoint
from xtaldiff.settings import REPO_ROOT, Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "XTALDIFF_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("XTALDIFF_TEST_REDIS", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
FAST_TIMINGS = dict(heartbeat_s=0.5, stale_after_s=4.0, requeue_after_s=2.0, sweep_every_s=1.0,
                    worker_seen_s=10.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections live in a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        db.get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'xtaldiff.db'}"
        yield url
        db.get_engine(url).dispose()
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are removed afterwards."""
    prefix = f"xtaldiff-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def make_settings(tmp_path: Path, database_url: str, *, broker_url: str = REDIS_URL,
                  prefix: str = "", **overrides) -> Settings:
    options = {"global_keyprefix": prefix} if broker_url.startswith("redis") else {}
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, broker_url=broker_url,
        broker_transport_options={**options, **overrides.pop("transport", {})},
        admin_token=ADMIN_TOKEN, bundled_checkpoints=[], oracle=False, **FAST_TIMINGS,
        **overrides,
    )


@pytest.fixture
def settings(tmp_path, database_url, redis_prefix) -> Settings:
    db.upgrade(database_url)
    return make_settings(tmp_path, database_url, prefix=redis_prefix)


@pytest.fixture
def sessions(settings):
    return db.session_factory(settings.resolved_database_url)


@pytest.fixture
def checkpoint(settings, sessions, tiny_checkpoint):
    """The tiny perov_5 checkpoint, registered, ready and active."""
    return register_checkpoint(sessions, tiny_checkpoint)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    from api.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class WorkerProcess:
    """A real ``celery worker --pool solo`` in a subprocess, with our settings."""

    def __init__(self, settings: Settings, log_path: Path, *, beat: bool = True) -> None:
        self.name = f"w{uuid.uuid4().hex[:8]}@test"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings.environ(), "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
                   "--queues", "gpu,default", "--hostname", self.name, "--loglevel", "info",
                   "--without-gossip", "--without-mingle"]
        if beat:
            command.append("--beat")
        self.log_path = log_path
        self.log = open(log_path, "ab")
        # Its own session: `--beat` forks a scheduler child that must die with the worker.
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=REPO_ROOT, start_new_session=True)

    def wait_ready(self, sessions, timeout: float = 90) -> None:
        from xtaldiff import queries

        def seen():
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
            with sessions() as session:
                return any(w.name == self.name
                           for w in queries.recent_workers(session, within_s=30))

        wait_for(seen, timeout=timeout, what="the worker to start")

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no chance to requeue or acknowledge anything."""
        self._kill_group()
        self.process.wait()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_group()
        self.log.close()


@pytest.fixture
def start_worker(tmp_path):
    started: list[WorkerProcess] = []

    def start(settings: Settings, sessions, *, beat: bool = True) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker{len(started)}.log", beat=beat)
        started.append(worker)
        worker.wait_ready(sessions)
        return worker

    yield start
    for worker in started:
        worker.stop()


def submit(client: TestClient, **body) -> str:
    response = client.post("/design", json={"dataset": "perov_5", "target": 1.0, "steps": 5,
                                            **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_job(client: TestClient, job_id: str, *, status: str, timeout: float = 120) -> dict:
    def reached():
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("failed", "succeeded", "cancelled") and job["status"] != status:
            raise AssertionError(f"job ended {job['status']}: {job['error']}")
        return job if job["status"] == status else None

    return wait_for(reached, timeout=timeout, what=f"job {job_id} to be {status}", every=0.3)


class TcpProxy:
    """Forwards a local port to ``target``; ``stop()`` makes the target unreachable."""

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target = target
        self.port = free_port()
        self._threading = threading
        self._connections: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        self._threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(source, sink),
                                       daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone does not.
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for connection in self._connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
        self._connections.clear()


class RedisServer:
    """A redis-server of this test's own (no persistence), so it can be restarted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), timeout=20, what="redis-server to start")
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def parse_bundle_cifs(content: bytes) -> int:
    """Parse every CIF of a bundle with pymatgen; returns how many structures parsed.

    An untrained test model sometimes makes a cell collapsed to a plane (volume/abc below
    1e-3): pymatgen refuses to read such a cell back from any CIF, so only those may fail.
    """
    import csv
    import io
    import warnings
    import zipfile

    from pymatgen.io.cif import CifParser

    bundle = zipfile.ZipFile(io.BytesIO(content))
    rows = list(csv.DictReader(io.StringIO(bundle.read("summary.csv").decode())))
    assert rows and len(bundle.namelist()) == 2 * len(rows) + 2
    parsed = 0
    for row in rows:
        collapsed = float(row["volume"]) / (
            float(row["a"]) * float(row["b"]) * float(row["c"])) < 1e-3
        for name in (row["cif"], row["cif_p1"]):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    structures = CifParser(io.StringIO(bundle.read(name).decode())
                                           ).parse_structures(primitive=False)
            except ValueError:
                assert collapsed, f"{name} does not parse"
                continue
            assert len(structures) == 1
            assert structures[0].composition.reduced_formula == row["formula"]
            parsed += name == row["cif"]
    return parsed


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_checkpoint):
    """PostgreSQL schema + Redis prefix + one worker + an API client, shared by this module's
    first tests (each makes and reads only its own jobs)."""
    from api.main import create_app

    tmp = tmp_path_factory.mktemp("stack")
    prefix = f"xtaldiff-test-{tmp.name}:"
    with postgres_schema() as url:
        db.upgrade(url)
        settings = make_settings(tmp, url, prefix=prefix)
        sessions = db.session_factory(url)
        register_checkpoint(sessions, tiny_checkpoint)
        worker = WorkerProcess(settings, tmp / "worker.log")
        try:
            worker.wait_ready(sessions)
            with TestClient(create_app(settings)) as client:
                yield client, settings, sessions
        finally:
            worker.stop()
            client_redis = redis.Redis.from_url(REDIS_URL)
            keys = list(client_redis.scan_iter(f"{prefix}*"))
            if keys:
                client_redis.delete(*keys)


@contextmanager
def long_running_model(sessions, tiny_checkpoint: Path, tmp_path: Path) -> Iterator[str]:
    """The name of a tiny model with T = 1000, registered and active meanwhile: a job of
    1000 structures x 1000 steps cannot end within a heartbeat, however fast the machine."""
    from model.diffusion import DiffusionConfig
    from tests.conftest import tiny_checkpoint_file

    path = tiny_checkpoint_file(tmp_path / "long.safetensors", seed=3,
                                diffusion=DiffusionConfig(timesteps=1000, lambda_draws=1000))
    try:
        yield register_checkpoint(sessions, path).name
    finally:
        register_checkpoint(sessions, tiny_checkpoint)  # active again for the module's other tests


class EmbeddedServer:
    """`xtaldiff serve` in embedded mode (SQLite, file broker, worker child) in a subprocess of
    its own session, with the given checkpoints bundled, the oracle off and fast timings."""

    def __init__(self, folder: Path, checkpoints: list[Path], **environment: str) -> None:
        port = free_port()
        env = {**os.environ, "XTALDIFF_BUNDLED_CHECKPOINTS": json.dumps([str(p) for p in checkpoints]),
               "XTALDIFF_ORACLE": "false", **environment,
               **{f"XTALDIFF_{k.upper()}": str(v) for k, v in FAST_TIMINGS.items()}}
        for name in ("XTALDIFF_DATABASE_URL", "XTALDIFF_BROKER_URL"):
            env.pop(name, None)
        self.data_dir = folder / "data"
        self.log_path = folder / "serve.log"
        self.base = f"http://127.0.0.1:{port}"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from xtaldiff.cli import app; app()", "serve",
                 "--data-dir", str(self.data_dir), "--port", str(port), "--log-level", "warning"],
                env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_healthy(self) -> None:
        import httpx

        def healthy_with_worker():
            try:
                return httpx.get(f"{self.base}/health", timeout=5).json()["status"] == "ok"
            except httpx.HTTPError:
                assert self.process.poll() is None, self.log_path.read_text()[-3000:]
                return False

        wait_for(healthy_with_worker, timeout=120, what="the embedded service")

    def stop(self, sig: int = signal.SIGINT) -> float:
        """Send ``sig``, wait for serve to exit and for every process of its session to go
        (the worker child and its beat); returns the seconds serve took to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(60)
        finally:
            took = time.monotonic() - started
            wait_for(self.session_empty, timeout=30, what="the worker processes to exit")
        return took

    def session_empty(self) -> bool:
        found = subprocess.run(["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True)
        return found.stdout.strip() == ""
