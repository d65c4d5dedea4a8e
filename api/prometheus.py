"""Prometheus metrics: HTTP traffic (an ASGI middleware) and job counts read at scrape time."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from xtaldiff import queries
from xtaldiff.states import JobStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class JobCollector:
    """Jobs per status, counted in the database when Prometheus scrapes; during a database
    outage only `xtaldiff_database_up 0`, so the HTTP metrics are still served."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self):
        up = GaugeMetricFamily("xtaldiff_database_up", "1 if the last scrape could count jobs.")
        try:
            with self.sessions() as session:
                counts = queries.job_counts(session)
        except (OperationalError, InterfaceError, PoolTimeout):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        gauge = GaugeMetricFamily("xtaldiff_jobs", "Jobs per status.", labels=["status"])
        for status in JobStatus:
            gauge.add_metric([status.value], counts.get(status.value, 0))
        yield gauge


class Metrics:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xtaldiff_http_requests", "HTTP requests.", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xtaldiff_http_request_seconds", "HTTP request latency.", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(JobCollector(sessions))


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware) so that it costs microseconds per request."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500

        async def send_with_status(message):
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            # The route template, not the raw path, keeps label cardinality bounded.
            label = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(scope["method"], label, str(status_code)).inc()
            self.metrics.latency.labels(scope["method"], label).observe(
                time.perf_counter() - start
            )
