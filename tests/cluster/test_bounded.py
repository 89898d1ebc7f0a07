"""Bounded Redis memory and a right lag: input streams trimmed once applied (keeping a
retention), actions and dead letters capped, dead letters keeping an excerpt of the raw entry
with its length, ``lag`` and ``worker --drain`` right after an operator deleted an entry."""

from __future__ import annotations

import json
from typing import Any

from cluster_risk import Order, build_config
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.status import fleet_status, total_lag
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
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
    assert dead[1]["event"] == json.dumps({"type": kind}, ensure_ascii=False)[: (EXCERPT - 10) // 2 + 10]  # 2 bytes a character
    assert all(len(d["event"].encode()) <= EXCERPT and len(d["reason"]) <= EXCERPT + 3 for d in dead)
    assert client.memory_usage(key.replace(":in", ":dead")) < 16_384
    got = metrics.registry.get_sample_value
    assert got("cluster_risk_dead_letters_total", {"reason": "invalid_json"}) == 1
    assert got("cluster_risk_dead_letters_total", {"reason": "unknown_type"}) == 1
