"""A worker's Prometheus metrics and JSON logs, scraped over HTTP from a real `cluster-risk
worker` process on a real redis-server; the scrape-time gauges (lag per held shard, paused
scopes) against `cluster-risk status`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cluster_risk.cluster.gauges import HeldShardGauges
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.shards import Keys
from cluster_risk.cluster.status import fleet_status, shard_lags
from cluster_risk.cluster.streams import Publisher
from cluster_risk.events import Order
from cluster_risk.observability import WorkerMetrics, start_metrics_server
from tests.cluster.conftest import connect
from tests.cluster.workload import CONFIG
from tests.cluster.workload import events as workload
from tests.helpers import T0

CLI = [sys.executable, "-m", "cluster_risk.cli"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port(count: int = 1) -> int:
    """A loopback port P with P .. P + count - 1 all free now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        try:
            for other in range(port, port + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", other))
        except OSError:
            continue
        return port
    raise OSError(f"no {count} free consecutive loopback ports")


def cli(*args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.status, reply.read().decode()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_worker_metrics_and_json_logs_over_http(server: RedisProcess, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    events = workload(1500, seed=5)  # no final tick: some scopes stay paused
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    common = ["--config", str(config), "--redis-url", server.url]
    cli("publish", *common, "--shards", "4", str(path))

    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as stderr:
        worker = subprocess.Popen(
            [*CLI, "worker", *common, "--tick-ms", "0", "--id", "w1", "--metrics-port", str(port)], stderr=stderr
        )
    client = connect(server.url)
    try:
        wait_until(lambda: fleet_status(client)["lag"] == 0 and len(fleet_status(client)["workers"]) == 1, "drained")
        status = fleet_status(client)
        applied = sum(row["applied"] for row in status["shards"])
        wait_until(lambda: named(scrape(port), "cluster_risk_events_applied_total") == {(): applied}, "counted")
        samples = scrape(port)
        actions = Counter(
            (a["type"], a["rule"]) for a in map(json.loads, cli("actions", "--redis-url", server.url).splitlines())
        )
        assert actions, "the workload pauses scopes"
        assert {
            (dict(k)["type"], dict(k)["rule"]): v for k, v in named(samples, "cluster_risk_actions_total").items()
        } == (dict(actions))
        assert named(samples, "cluster_risk_batch_seconds_count")[()] > 0
        assert named(samples, "cluster_risk_batch_seconds_bucket")[(("le", "+Inf"),)] > 0
        assert named(samples, "cluster_risk_shard_lag") == {(("shard", str(s)),): 0.0 for s in range(4)}
        assert named(samples, "cluster_risk_paused_scopes") == {(): float(len(status["paused"]))}
        assert status["paused"], "some scopes stay paused at the end of the workload"
        assert named(samples, "cluster_risk_lease_changes_total")[(("change", "gained"),)] == 4
        assert named(samples, "cluster_risk_redis_errors_total") == {(): 0.0}
        assert get(port, "/healthz")[0] == 200 and get(port, "/readyz")[0] == 200
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) and line["worker"] == "w1" for line in lines)
    assert lines[-1]["msg"] == "stopped" and lines[-1]["stats"]["entries"] == applied


def test_gauges_follow_the_held_shards(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=4)
    keys: Keys = publisher.keys
    orders = [
        Order(
            oid=i,
            account_id=f"A{i % 7}",
            contract_id="C1",
            direction="BID",
            price=1.0,
            volume=1,
            timestamp=T0 + i,
        )
        for i in range(1, 41)
    ]
    publisher.publish([(None, order) for order in orders])
    lags = shard_lags(client, keys)
    assert sum(lags) == 40
    client.hset(keys.paused(1, "OrderRateLimitRule"), mapping={"A1": "since=1 value=2 limit=1 account=A1"})
    client.hset(keys.manual(1), mapping={"A5": "x", "A5:C1": "y"})
    client.hset(keys.paused(2, "OrderRateLimitRule"), mapping={"A2": "since=1 value=2 limit=1 account=A2"})

    metrics = WorkerMetrics()
    held = [0, 1]
    gauges = HeldShardGauges(metrics, client, keys, ["OrderRateLimitRule"], held=lambda: held)
    server_ = start_metrics_server(0, metrics.registry, addr="127.0.0.1", before_scrape=gauges.refresh)
    try:
        samples = scrape(server_.port)
        assert named(samples, "cluster_risk_shard_lag") == {(("shard", "0"),): lags[0], (("shard", "1"),): lags[1]}
        assert named(samples, "cluster_risk_paused_scopes") == {(): 3.0}  # shard 1: a rule's pause + 2 manual

        held[:] = [2]  # shards 0 and 1 moved to another worker: their series go
        samples = scrape(server_.port)
        assert named(samples, "cluster_risk_shard_lag") == {(("shard", "2"),): lags[2]}
        assert named(samples, "cluster_risk_paused_scopes") == {(): 1.0}

        server.stop()  # Redis gone: counted, last values kept, the scrape still answers
        samples = scrape(server_.port)
        assert named(samples, "cluster_risk_redis_errors_total") == {(): 1.0}
        assert named(samples, "cluster_risk_shard_lag") == {(("shard", "2"),): lags[2]}
    finally:
        server_.close()


def test_up_serves_each_workers_metrics(redis_binaries: tuple[str, str], tmp_path: Path) -> None:
    """`cluster-risk up --metrics-port P`: worker i serves /metrics on P + i."""
    port = free_port(2)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    up = [*CLI, "up", "--config", str(config), "--workers", "2", "--metrics-port", str(port)]
    proc = subprocess.Popen(up, stdout=subprocess.DEVNULL)
    try:

        def both_hold_shards() -> bool:
            try:
                return all(
                    sum(named(scrape(p), "cluster_risk_lease_changes_total").values()) > 0 for p in (port, port + 1)
                )
            except OSError:
                return False

        wait_until(both_hold_shards, "both workers serve metrics")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
