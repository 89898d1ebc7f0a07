"""What a worker tells operators: JSON log lines and Prometheus metrics.

Logs: :func:`configure_logging` makes the standard library's logging write one JSON object
per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, then the fields passed as
``extra={"account": ..., "shard": ...}`` and those fixed for the process (``worker``), then
``exc`` for an exception.  Every message and traceback goes through
:func:`cluster_risk.settings.mask_secrets`: a driver error that quotes a Redis URL does not
leak its password.

Metrics: :class:`WorkerMetrics` holds the ``cluster_risk_*`` metrics in their own registry
(several workers can live in one test process); :func:`start_metrics_server` serves them on
``/metrics``, plus ``/healthz`` (liveness) and ``/readyz`` (readiness) for Kubernetes probes.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import IO, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from cluster_risk.events import Action
from cluster_risk.settings import mask_secrets

__all__ = ["JsonFormatter", "MetricsServer", "WorkerMetrics", "configure_logging", "start_metrics_server"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``fields`` are added to every record (e.g. the worker id)."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
            **self.fields,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = mask_secrets(self.formatException(record.exc_info))
        elif record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=_jsonable, ensure_ascii=False, separators=(",", ":"))


def _jsonable(value: object) -> str:
    return mask_secrets(str(value))


def configure_logging(level: str = "INFO", stream: IO[str] | None = None, **fields: Any) -> logging.Handler:
    """Route the root logger to one JSON handler on ``stream`` (stderr), replacing a handler
    installed by an earlier call; ``fields`` (e.g. ``worker="w1"``) go on every line."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(fields))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# Batches are applied in about a millisecond per thousand events; the buckets resolve that
# range and still catch a Redis stall of seconds.
_BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """The ``cluster_risk_*`` metrics of one worker, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_applied = Counter("cluster_risk_events_applied", "Events applied to the risk state", registry=r)
        self.batch_seconds = Histogram(
            "cluster_risk_batch_seconds", "Time to apply one batch (all its shards)", buckets=_BATCH_BUCKETS, registry=r
        )
        self.shard_lag = Gauge(
            "cluster_risk_shard_lag",
            "Events waiting in the shard's input stream, not yet applied",
            ["shard"],
            registry=r,
        )
        self.actions = Counter("cluster_risk_actions", "Actions emitted", ["type", "rule"], registry=r)
        self.paused_scopes = Gauge(
            "cluster_risk_paused_scopes", "Scopes paused now on this worker's shards", registry=r
        )
        self.lease_changes = Counter(
            "cluster_risk_lease_changes", "Shard leases acquired or lost by this worker", ["change"], registry=r
        )
        self.redis_errors = Counter("cluster_risk_redis_errors", "Redis calls that failed", registry=r)
        self.dead_letters = Counter(
            "cluster_risk_dead_letters", "Entries dead-lettered by this worker, by error code", ["reason"], registry=r
        )
        self.state_lost = Gauge(
            "cluster_risk_shards_state_lost",
            "Shards whose Redis state was lost: this worker applies nothing to them until `recover`",
            registry=r,
        )

    def record_batch(self, events: int, seconds: float, actions: Iterable[Action] = ()) -> None:
        """One applied batch: its size, its latency and the actions it produced."""
        self.events_applied.inc(events)
        self.batch_seconds.observe(seconds)
        for action in actions:
            self.actions.labels(type=action.type.value, rule=action.rule).inc()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the JSON log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never keeps the process alive


class MetricsServer:
    """A running metrics server: ``port`` (the bound one, useful when asked for 0), ``close()``."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        self.port: int = server.server_port
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int,
    registry: CollectorRegistry,
    *,
    addr: str = "127.0.0.1",  # 0.0.0.0 where it must be reachable from outside (a container's)
    live: Callable[[], bool] = lambda: True,
    ready: Callable[[], bool] = lambda: True,
    before_scrape: Callable[[], None] = lambda: None,
) -> MetricsServer:
    """Serve ``/metrics`` from ``registry`` and the probes ``/healthz`` (``live()``: the worker
    loop is turning) and ``/readyz`` (``ready()``: connected, holding shards) on a daemon thread.
    ``before_scrape()`` runs before each ``/metrics`` answer (gauges read when asked, e.g.
    :class:`cluster_risk.cluster.gauges.HeldShardGauges`)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = (live if path == "/healthz" else ready)()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ok\n"]
        if path == "/metrics":
            before_scrape()
        body: Iterable[bytes] = metrics_app(environ, start_response)
        return body

    server = make_server(addr, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    return MetricsServer(server)
