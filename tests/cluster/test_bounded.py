"""Bounded Redis memory and a right lag: input streams trimmed once applied (keeping a
retention), actions and dead letters capped, dead letters keeping an excerpt of the raw entry
with its length, ``lag`` and ``worker --drain`` right after an operator deleted an entry."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from cluster_risk import Order, Trade, build_config
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.status import fleet_status, total_lag
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Retention, Worker
from cluster_risk.observability import WorkerMetrics
from tests.cluster.conftest import Threads, connect
from tests.cluster.workload import CONFIG, T0

SHARDS = 4
EXCERPT = 1024  # the bytes of a raw entry a dead letter keeps (docs/operations.md)


def make_worker(url: str, name: str = "w1", **options: Any) -> Worker:
    options = {"tick_ms": 0, "lease_ms": 500, "shards": SHARDS, **options}
    return Worker(build_config(CONFIG), connect(url), worker_id=name, **options)


def orders(account: str, n: int, first: int = 1) -> list[tuple[int | None, Order]]:
    return [(None, Order(first + i, account, "C1", "BID", 1.0, 1, T0 + first + i)) for i in range(n)]


def test_lag_and_drain_are_right_after_an_operator_deletes_an_entry(server: RedisProcess, threads: Threads) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    publisher.publish(orders("A", 20))
    key = publisher.keys.input(publisher.keys.shard_of("A"))
    unapplied = client.xrange(key)[5][0]
    assert client.xdel(key, unapplied) == 1  # an operator removes a poison entry by hand
    assert total_lag(client, publisher.keys) == 19
    threads.start(lambda: make_worker(server.url, drain=True))
    threads.join(20)  # --drain ends: everything present was applied
    assert total_lag(client, publisher.keys) == 0
    assert fleet_status(client)["lag"] == 0
    publisher.publish(orders("A", 3, first=100))  # and it counts on from there
    assert total_lag(client, publisher.keys) == 3
    applied = client.xrange(key)[-1][0]
    client.xdel(key, applied)
    assert total_lag(client, publisher.keys) == 2


def dead_fields(client: Any, key: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(key)]


def test_a_dead_letter_keeps_an_excerpt_and_the_length(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    key = publisher.keys.input(publisher.keys.shard_of("A"))
    broken = b'{"type":"order","oid":1,"account_id":"' + "\u00e9".encode() * 2_000_000  # 5 MB, not JSON
    kind = "é" * 100_000  # the reason quotes it
    client.xadd(key, {"e": broken, "i": 0})
    client.xadd(key, {"e": json.dumps({"type": kind}, ensure_ascii=False), "i": 1})
    publisher.publish(orders("A", 1))
    metrics = WorkerMetrics()
    make_worker(server.url, drain=True, metrics=metrics).run()
    dead = dead_fields(client, key.replace(":in", ":dead"))
    assert [(d["index"], d["error"], d["length"]) for d in dead] == [
        ("0", "invalid_json", str(len(broken))),
        ("1", "unknown_type", str(len(json.dumps({"type": kind}, ensure_ascii=False).encode()))),
    ]
    assert dead[0]["event"] == broken[:EXCERPT].decode("utf-8", "replace")
    cut = (EXCERPT - 10) // 2 + 10  # '{"type": "' then 2 bytes a character
    assert dead[1]["event"] == json.dumps({"type": kind}, ensure_ascii=False)[:cut]
    assert all(len(d["event"].encode()) <= EXCERPT and len(d["reason"]) <= EXCERPT + 3 for d in dead)
    assert client.memory_usage(key.replace(":in", ":dead")) < 16_384
    got = metrics.registry.get_sample_value
    assert got("cluster_risk_dead_letters_total", {"reason": "invalid_json"}) == 1
    assert got("cluster_risk_dead_letters_total", {"reason": "unknown_type"}) == 1


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cluster_risk.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_dead_letters_of_every_shard_in_the_cli_and_status(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    other = next(a for a in (f"B{i}" for i in range(100)) if publisher.keys.shard_of(a) != publisher.keys.shard_of("A"))
    client.xadd(publisher.keys.input(publisher.keys.shard_of("A")), {"e": b"{not json\n\x1b[2J", "i": 7})
    publisher.publish([(3, Trade(1, 999, 1.0, 1, T0))])  # a fill of an order never seen: unknown_order
    client.xadd(publisher.keys.input(publisher.keys.shard_of(other)), {"e": json.dumps({"type": "order"})})
    make_worker(server.url, drain=True).run()

    status = cli("status", "--redis-url", server.url, "--json")
    assert json.loads(status.stdout)["dead"] == 3
    assert sum(row["dead"] for row in json.loads(status.stdout)["shards"]) == 3
    assert "dead letters: 3" in cli("status", "--redis-url", server.url).stdout

    done = cli("dead", "--redis-url", server.url, "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    keys = publisher.keys
    assert sorted((r["error"], r["field"], r["index"], r["shard"]) for r in records) == [
        ("invalid_field", "oid", None, keys.shard_of(other)),
        ("invalid_json", "", 7, keys.shard_of("A")),
        ("unknown_order", "oid", 3, keys.route_shard(999)),
    ]
    ids = [[int(part) for part in r["id"].split("-")] for r in records]
    assert ids == sorted(ids)
    (broken,) = [r for r in records if r["error"] == "invalid_json"]
    assert broken["event"] == "{not json\n\x1b[2J" and broken["length"] == 14
    readable = cli("dead", "--redis-url", server.url)
    lines = readable.stdout.splitlines()
    assert len(lines) == 3 and any("unknown_order oid: oid 999 was never seen" in line for line in lines)
    assert any("{not json\\n\\u001b[2J" in line for line in lines)
    assert "\x1b" not in readable.stdout  # one line each, no terminal control

    command = [sys.executable, "-m", "cluster_risk.cli", "dead", "--redis-url", server.url, "--follow", "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as follow:
        try:
            assert follow.stdout is not None and follow.stderr is not None
            assert json.loads(follow.stdout.readline())["error"] in ("invalid_json", "invalid_field", "unknown_order")
            client.xadd(publisher.keys.input(publisher.keys.shard_of("A")), {"e": b"[]"})
            make_worker(server.url, drain=True).run()
            got = [json.loads(follow.stdout.readline()) for _ in range(3)]
            assert got[-1]["event"] == "[]"
            follow.send_signal(signal.SIGINT)
            assert follow.wait(timeout=10) == 130
            assert follow.stderr.read() == ""  # Ctrl-C: quiet
        finally:
            follow.kill()


def test_input_streams_are_trimmed_once_applied_and_never_before(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    publisher.publish(orders("A", 300))
    keys = publisher.keys
    make_worker(server.url, max_events=100, batch=100).run()  # a batch or two, then it stops
    left = client.xlen(keys.input(keys.shard_of("A")))
    assert 0 < left < 300 and left == total_lag(client, keys)  # only what was applied went
    make_worker(server.url, drain=True).run()
    assert [client.xlen(keys.input(shard)) for shard in range(SHARDS)] == [0] * SHARDS
    assert total_lag(client, keys) == 0


def test_a_retention_keeps_applied_input_entries(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    publisher.publish(orders("A", 30))
    make_worker(server.url, drain=True, retention=Retention(input_s=3600)).run()
    assert client.xlen(publisher.keys.input(publisher.keys.shard_of("A"))) == 30
    assert total_lag(client, publisher.keys) == 0


def test_actions_and_dead_letters_are_capped(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    shard = publisher.keys.shard_of("A")
    old = f"{time.time_ns() // 1_000_000 - 2 * 86_400_000}-0"  # two days ago
    client.xadd(publisher.keys.actions(shard), {"a": "{}"}, id=old)
    client.xadd(publisher.keys.dead(shard), {"entry": "0-1"}, id=old)
    for i in range(12):
        client.xadd(publisher.keys.input(shard), {"e": b"not json", "i": i})
    publisher.publish(orders("A", 5))  # under every limit: no action
    publisher.publish([(None, Order(50, "A", "C1", "BID", 1.0, 99, T0 + 50))])  # MaxOrderVolumeRule: a REJECT
    retention = Retention(actions_s=86_400, dead_s=86_400, dead_maxlen=5)
    make_worker(server.url, drain=True, retention=retention).run()
    actions = client.xrange(publisher.keys.actions(shard))
    assert [json.loads(f[b"a"])["type"] for _, f in actions] == ["REJECT_ORDER"]  # the old one went
    dead = client.xrange(publisher.keys.dead(shard))
    assert [f[b"index"] for _, f in dead] == [b"7", b"8", b"9", b"10", b"11"]  # the newest 5


def test_trimming_on_a_redis_cluster(cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = connect(cluster_url)
    publisher = Publisher(client, shards=SHARDS)
    accounts = [f"A{i}" for i in range(20)]
    publisher.publish([(None, Order(i + 1, a, "C1", "BID", 1.0, 1, T0 + i)) for i, a in enumerate(accounts * 5)])
    client.xadd(publisher.keys.input(publisher.keys.shard_of("A0")), {"e": b"not json"})
    with caplog.at_level(logging.WARNING, logger="cluster_risk.cluster.worker"):
        make_worker(cluster_url, drain=True, retention=Retention(dead_maxlen=1)).run()
    assert "trimming streams failed" not in caplog.text
    assert [client.xlen(publisher.keys.input(s)) for s in range(SHARDS)] == [0] * SHARDS
    assert total_lag(client, publisher.keys) == 0
    assert client.xlen(publisher.keys.dead(publisher.keys.shard_of("A0"))) == 1


def test_trimming_follows_the_cursor_stored_in_redis(server: RedisProcess) -> None:
    """After a failover that lost applied batches the stored cursor is behind the worker's:
    the entries after it are applied again, so they must not be trimmed."""
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    publisher.publish(orders("A", 10))
    shard = publisher.keys.shard_of("A")
    ids = [entry_id for entry_id, _ in client.xrange(publisher.keys.input(shard))]
    worker = make_worker(server.url)
    worker.leases.beat()
    client.hset(publisher.keys.lease(shard), "sid", ids[4])  # the server's cursor: 5 applied
    worker._trim(final=True)
    assert [entry_id for entry_id, _ in client.xrange(publisher.keys.input(shard))] == ids[5:]
    worker._leave()
