"""JSON log lines and the worker metrics, scraped over real HTTP."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from cluster_risk import Action, ActionType
from cluster_risk.observability import MetricsServer, WorkerMetrics, configure_logging, start_metrics_server


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging changes the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_one_json_object_per_line_with_extra_fields(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream, worker="w1")
    log = logging.getLogger("cluster_risk.worker")
    log.info("paused %s", "ACC001", extra={"account": "ACC001", "shard": 3})
    log.debug("not shown at INFO")
    try:
        1 / 0  # noqa: B018 - an exception to log
    except ZeroDivisionError:
        log.exception("batch failed", extra={"shard": 5})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "paused ACC001"
    assert (first["level"], first["logger"], first["worker"], first["account"], first["shard"]) == (
        "INFO",
        "cluster_risk.worker",
        "w1",
        "ACC001",
        3,
    )
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert second["level"] == "ERROR" and second["shard"] == 5
    assert "ZeroDivisionError" in second["exc"]


def test_configure_twice_keeps_one_handler(root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", first)
    configure_logging("WARNING", second)
    logging.getLogger("x").warning("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_unserialisable_extra_is_written_as_text(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)
    logging.getLogger("x").info("odd", extra={"thing": object()})
    assert json.loads(stream.getvalue())["thing"].startswith("<object object")


@pytest.fixture
def served() -> Iterator[tuple[WorkerMetrics, MetricsServer, dict[str, bool]]]:
    metrics = WorkerMetrics()
    health = {"live": True, "ready": False}
    server = start_metrics_server(
        0, metrics.registry, addr="127.0.0.1", live=lambda: health["live"], ready=lambda: health["ready"]
    )
    yield metrics, server, health
    server.close()


def test_scrape_returns_every_metric(served: tuple[WorkerMetrics, MetricsServer, dict[str, bool]]) -> None:
    metrics, server, _ = served
    pause = Action(ActionType.PAUSE_ORDER, "OrderRateLimitRule", {"account": "A"}, 1, 6, 5)
    metrics.record_batch(1000, 0.002, [pause, pause])
    metrics.shard_lag.labels(shard="7").set(42)
    metrics.paused_scopes.set(2)
    metrics.lease_changes.labels(change="acquired").inc()
    metrics.redis_errors.inc()
    status, text = get(server.port, "/metrics")
    assert status == 200
    expected = [
        "cluster_risk_events_applied_total 1000.0",
        'cluster_risk_batch_seconds_bucket{le="0.0025"} 1.0',
        "cluster_risk_batch_seconds_count 1.0",
        'cluster_risk_shard_lag{shard="7"} 42.0',
        'cluster_risk_actions_total{rule="OrderRateLimitRule",type="PAUSE_ORDER"} 2.0',
        "cluster_risk_paused_scopes 2.0",
        'cluster_risk_lease_changes_total{change="acquired"} 1.0',
        "cluster_risk_redis_errors_total 1.0",
    ]
    for line in expected:
        assert line in text.splitlines(), line
    assert "python_gc" not in text  # a registry of its own, not the process-global one


def test_probes(served: tuple[WorkerMetrics, MetricsServer, dict[str, bool]]) -> None:
    _, server, health = served
    assert get(server.port, "/healthz") == (200, "ok\n")
    assert get(server.port, "/readyz") == (503, "not ok\n")
    health["ready"], health["live"] = True, False
    assert get(server.port, "/readyz") == (200, "ok\n")
    assert get(server.port, "/healthz")[0] == 503


def test_two_workers_in_one_process_do_not_clash() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.events_applied.inc(3)
    assert b.registry.get_sample_value("cluster_risk_events_applied_total") == 0.0
    assert a.registry.get_sample_value("cluster_risk_events_applied_total") == 3.0
