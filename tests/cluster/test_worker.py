"""One worker, in this process, against a real server: fencing before any write, dead
letters, lost replies (a fault-injecting proxy), fills routed by their order, the shard count
check."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import build_config
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.leases import Leases
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import ShardLost, Worker
from cluster_risk.state.functions import LuaOperation
from cluster_risk.state.redis import RedisStore, load_lua
from tests.cluster.conform import by_scope, expected, fleet_output, with_final_tick
from tests.cluster.conftest import connect
from tests.cluster.workload import CONFIG
from tests.cluster.workload import events as workload
from tests.helpers import T0, lines
from tests.redis.proxy import CuttingProxy
from tests.redis.servers import has_functions, server_version

SHARDS = 4


def make_worker(url: str, name: str = "w1", **options: Any) -> Worker:
    options = {"tick_ms": 0, "lease_ms": 500, "shards": SHARDS, **options}
    return Worker(build_config(CONFIG), connect(url), worker_id=name, **options)


def everything(server: RedisProcess) -> dict[bytes, Any]:
    client = server.client()
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"stream":
            out[key] = client.xrange(key)
        elif kind == b"string":
            out[key] = client.get(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1)
        elif kind == b"set":
            out[key] = client.smembers(key)
    return out


def test_a_stale_epoch_is_refused_before_any_write(server: RedisProcess) -> None:
    assert len(list(Publisher(connect(server.url), shards=SHARDS).publish_lines(lines(workload(400, seed=4))))) < 10
    old = make_worker(server.url, max_events=100)
    old.run()  # applies a batch per shard, then releases its leases
    stale = {shard: cursor.epoch for shard, cursor in old.cursors.items()}
    Leases(connect(server.url), old.keys, "w2", lease_ms=500).beat()  # w2 takes every shard
    before = everything(server)
    old.leases.held = stale  # old believes it still holds them
    old.cursors.clear()
    shard = next(iter(stale))
    entries = connect(server.url).xrange(old.keys.input(shard), count=50)
    with pytest.raises(ShardLost, match="fenced"):
        old._apply(shard, entries)
    assert everything(server) == before


def test_malformed_entries_are_dead_lettered_and_the_worker_goes_on(
    server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    good = {"type": "order", "oid": 1, "account_id": "A", "contract_id": "C1", "direction": "BID"}
    good |= {"price": 1.0, "volume": 1, "timestamp": T0}
    key = publisher.keys.input(publisher.keys.shard_of("A"))
    client.xadd(key, {"e": b"{not json", "i": 0})
    client.xadd(key, {"e": json.dumps({"type": "order", "oid": 2}), "i": 1})
    client.xadd(key, {"x": "no event field"})
    client.xadd(key, {"e": json.dumps(good), "i": 3})
    client.xadd(key, {"e": json.dumps({**good, "oid": 9, "volume": 99}), "i": 4})  # the example rule rejects it
    client.xadd(key, {"e": json.dumps({**good, "oid": 10, "volume": "x"}), "i": 5})
    elsewhere = next(
        a for a in (f"B{i}" for i in range(100)) if publisher.keys.shard_of(a) != publisher.keys.shard_of("A")
    )
    reset = {"type": "reset_account", "timestamp": good["timestamp"], "account_id": elsewhere}
    client.xadd(key, {"e": json.dumps(reset), "i": 6})  # misrouted: its account lives on another shard
    worker = make_worker(server.url, drain=True)
    with caplog.at_level(logging.INFO, logger="cluster_risk.cluster.worker"):
        worker.run()
    dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(key.replace(":in", ":dead"))]
    shard = publisher.keys.shard_of("A")
    logged = [r for r in caplog.records if r.getMessage().startswith("dead-lettered")]
    assert [(r.shard, r.account) for r in logged] == [(shard, None)] * 3 + [(shard, "A"), (shard, elsewhere)]  # type: ignore[attr-defined]
    (action,) = [r for r in caplog.records if r.getMessage().startswith("REJECT_ORDER")]
    assert (action.shard, action.account) == (shard, "A")  # type: ignore[attr-defined]
    assert [(d["index"], d["error"], d["field"]) for d in dead] == [
        ("0", "invalid_json", ""),
        ("1", "invalid_field", "account_id"),
        ("", "invalid_json", ""),
        ("5", "invalid_field", "volume"),
        ("6", "wrong_shard", "account_id"),
    ]
    assert all(d["reason"] and d["entry"] for d in dead)
    assert worker.stats.entries == 7
    actions, _, _ = fleet_output(client)
    assert [a["type"] for a in actions] == ["REJECT_ORDER"]  # a stateless verdict, rendered by Python


class EveryNthReply(CuttingProxy):
    """Cuts every n-th reply (of any connection) and every m-th reply to an apply.lua call (an
    FCALL; on Redis 6.2 an EVALSHA of its SHA-1): faults spread over the whole run, a
    reconnection (a few replies) is rarely hit again, and some cuts are sure to lose a script's
    reply (counting replies alone left that to chance)."""

    def __init__(self, upstream_port: int, n: int, m: int) -> None:
        super().__init__(upstream_port)
        self.n, self.m = n, m
        self.replies = self.fcall_replies = 0
        if has_functions(*server_version()):
            self.apply_call = b"FCALL"
        else:
            self.apply_call = LuaOperation("apply.lua", load_lua("apply.lua", shebang=False)).sha.encode()

    def _take_cut(self, request: bytes) -> str:
        with self._lock:
            self.replies += 1
            fcall = self.apply_call in request
            self.fcall_replies += fcall
            if self.replies % self.n and not (fcall and self.fcall_replies % self.m == 0):
                return ""
            self.cut_replies += 1
            return "cut"


def test_lost_replies_are_retried_without_loss_or_double_counting(server: RedisProcess) -> None:
    events = with_final_tick(workload(4000, seed=5))
    publisher = Publisher(connect(server.url), shards=SHARDS)
    rejected = {(e.code, e.field, i) for i, e in publisher.publish_lines(lines(events))}
    proxy = EveryNthReply(server.port, 15, 10)
    try:
        client = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0").client
        worker = Worker(build_config(CONFIG), client, worker_id="w1", tick_ms=0, lease_ms=2000, batch=50, drain=True)
        worker.run()
    finally:
        proxy.close()
    assert proxy.cut_replies >= 10
    assert proxy.fcall_replies >= 10  # so at least one script reply was cut
    assert worker.stats.again >= 1  # a lost apply reply: the retry got the stored result
    want_actions, want_errors = expected(CONFIG, events)
    actions, dead, ids = fleet_output(connect(server.url))
    assert by_scope(actions) == by_scope(want_actions)
    assert rejected | dead == want_errors
    assert len(ids) == len(set(ids))


def test_a_fill_at_another_gateway_routes_by_its_order(server: RedisProcess) -> None:
    t = T0
    one = Publisher(connect(server.url), shards=SHARDS)
    two = Publisher(connect(server.url), shards=SHARDS)
    for oid, account in enumerate(["A", "B", "C", "D", "E", "F"], 1):
        order = {"type": "order", "oid": oid, "account_id": account, "contract_id": "C1", "direction": "BID"}
        assert not list(one.publish_lines([json.dumps(order | {"price": 1.0, "volume": 1, "timestamp": t})]))
    for tid in range(1, 7):
        fill = {"type": "trade", "tid": tid, "oid": tid, "price": 1.0, "volume": 500, "timestamp": t + 1}
        assert not list(two.publish_lines([json.dumps(fill)]))  # no account: the route says where
    make_worker(server.url, drain=True).run()
    actions, dead, _ = fleet_output(connect(server.url))
    assert not dead
    paused = sorted(a["scope"]["account"] for a in actions if a["rule"] == "AccountVolumeLimitRule")
    assert paused == ["A", "B", "C", "D", "E", "F"]


def test_publisher_and_worker_refuse_another_shard_count(server: RedisProcess, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text("", encoding="utf-8")
    common = ["--config", str(config), "--redis-url", server.url]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cluster_risk.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    assert cli("publish", *common, "--shards", "8", str(events)).returncode == 0
    done = cli("worker", *common, "--shards", "4", "--max-events", "1")
    assert done.returncode == 2
    assert "has 8 shards, this process was started with 4" in done.stderr
    done = cli("publish", *common, "--shards", "16", str(events))
    assert done.returncode == 2 and "has 8 shards" in done.stderr


def test_a_lost_script_cache_is_loaded_again_by_publisher_and_worker(server: RedisProcess) -> None:
    """SCRIPT FLUSH and FUNCTION FLUSH (a restart without persistence, a failover to a node
    without them) between rounds: the calls that found nothing ran nothing and are sent
    again, the worker's round as well as the publisher's chunk."""
    events = with_final_tick(workload(1200, seed=11))
    text = lines(events)
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    worker = make_worker(server.url, batch=40)
    rejected: set[tuple[str, str, int]] = set()
    flushes = 0
    functions = has_functions(*server_version())
    guard = threading.Timer(90, worker.stop)  # a worker that cannot apply would never get on
    guard.start()
    for start in range(0, len(text), 150):
        chunk = text[start : start + 150]
        rejected |= {(e.code, e.field, start + i) for i, e in publisher.publish_lines(chunk)}
        worker.max_events = worker.stats.entries + 1  # a round or two, then stop
        worker.run()
        if functions:
            client.function_flush()  # apply.lua: a Redis Function
        if flushes % 2 or not functions:  # publish.lua and lookup_ids.lua (and apply.lua on Redis 6.2)
            client.script_flush()
        flushes += 1
    worker.max_events, worker.drain = None, True
    worker.run()
    guard.cancel()
    assert flushes >= 8 and worker.stats.resyncs == 0  # every call found again its script, none failed
    want_actions, want_errors = expected(CONFIG, events)
    actions, dead, ids = fleet_output(client)
    assert by_scope(actions) == by_scope(want_actions)
    assert rejected | dead == want_errors
    assert len(ids) == len(set(ids))
