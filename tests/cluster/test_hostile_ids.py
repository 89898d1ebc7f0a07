"""Hostile ids and poison entries through a worker fleet (issue 15, items 1 and 2 and "Poison
never spreads"): control characters (U+001F), lone surrogates, braces, 64 KB ids give the
in-process answer through worker processes; entries no decoder takes (bytes that are not
UTF-8, a line index that is not text, nesting, huge numbers, raw surrogate bytes) are
dead-lettered with their reason and the worker goes on."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import build_config
from cluster_risk.cluster.client import RiskClient
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.ops import Ops
from cluster_risk.cluster.shards import rule_dimensions
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from cluster_risk.errors import EventError
from cluster_risk.wire import decode_event, decode_line
from tests.cluster.conform import by_scope, expected, fleet_output
from tests.cluster.conftest import connect
from tests.cluster.fleet import Fleet, final, fleet_fixture, wait_for
from tests.helpers import DAY, MS, T0
from tests.helpers import wire_fill as _fill
from tests.helpers import wire_order as _order

CONFIG: dict[str, Any] = {
    "contract_to_product": {"X17": "P{1}", "\x1f": "\ud800"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 2, "window_ns": 100 * MS, "bucket_ns": MS},
        {"type": "AccountVolumeLimitRule", "daily_cap": 10, "dimensions": ["account", "product"]},
        {"type": "AccountVolumeLimitRule", "name": "trades", "metric": "count", "daily_cap": 3},
    ],
}
HOSTILE = [
    "VICTIM\x1fX17",
    "VICTIM",
    "\ud800",
    "a\udfffb",
    "{s1}",
    "}{",
    "%1F:%",
    "\x00\x01\n\t\x7f",
    "\u2028é😀",
    "x" * 65_536,
]


def hostile_events() -> list[dict[str, Any]]:
    """Orders and fills of hostile ids: fills without account (routed and enriched by their
    order), fills with both ids, the issue's U+001F case, a day change and a reset."""
    events: list[dict[str, Any]] = [
        _order(1, "VICTIM\x1fX17", "C", T0),
        _fill(1, 1, 8, T0 + 1),
        _order(2, "VICTIM", "C", T0 + 2),
        _fill(2, 2, 5, T0 + 3),
    ]
    contracts = ["X17", "\x1f", "C{1}", "\ud800"]
    oid, tid, t = 2, 2, T0 + 10
    for round_ in range(4):
        if round_ == 2:
            t += DAY  # the next trading day
        for i, account in enumerate(HOSTILE):
            contract = contracts[(i + round_) % len(contracts)]
            oid, tid, t = oid + 1, tid + 2, t + MS // 4
            events.append(_order(oid, account, contract, t))
            events.append(_fill(tid - 1, oid, 2 + i % 5, t + 1))
            events.append(_fill(tid, oid, 1, t + 2, account_id=account, contract_id=contract))
    events.append({"type": "reset_daily", "timestamp": t + 10})
    return final(events)


@pytest.fixture
def fleet(server: RedisProcess, tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(server.url, tmp_path)


def test_hostile_ids_give_the_in_process_answer_through_a_worker_fleet(fleet: Fleet) -> None:
    fleet.config_path.write_text(json.dumps(CONFIG), encoding="utf-8")
    fleet.config = CONFIG
    events = hostile_events()
    fleet.start("w1")
    fleet.start("w2")
    fleet.publish(events)
    wait_for("everything applied", lambda: fleet.drained(len(events)), 90, fleet.explain)
    for name, proc in fleet.procs.items():
        assert proc.poll() is None, f"worker {name} died:\n{fleet.log(name)[-3000:]}"
    fleet.check(events)
    want, _ = expected(CONFIG, events)
    assert any(a["scope"]["account"] == "\ud800" for a in want)
    assert not any(a["scope"]["account"] == "VICTIM" and a["rule"] != "OrderRateLimitRule" for a in want[:2])


def _worker(url: str, **options: Any) -> Worker:
    options = {"tick_ms": 0, "lease_ms": 500, "shards": 2, "drain": True, **options}
    return Worker(build_config(CONFIG), connect(url), worker_id="w1", **options)


def test_poison_entries_are_dead_lettered_and_the_worker_goes_on(
    server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries written by anything (not only our publisher): each bad one becomes a dead letter
    with its reason, every good one after it is applied as the engine would."""
    client = connect(server.url)
    publisher = Publisher(client, shards=2)
    key = publisher.keys.input(0)
    on_0 = [a for a in HOSTILE + [f"Z{i}" for i in range(50)] if publisher.keys.shard_of(a) == 0]
    good: list[dict[str, Any]] = []
    for n, account in enumerate(on_0):
        good += [_order(n + 1, account, "X17", T0 + 4 * n), _fill(n + 1, n + 1, 11, T0 + 4 * n + 1)]
    tick = {"type": "tick", "timestamp": T0}
    poison: list[dict[bytes, bytes]] = [
        {b"e": b"\xff\xfe{", b"i": b"0"},  # not UTF-8
        {b"e": json.dumps(tick).encode(), b"i": b"\x80\xff"},  # a valid event, its index not text
        {b"e": b"[" * 100_000, b"i": b"2"},  # nested too deeply for any JSON parser
        {b"e": b'{"type":"order","oid":' + b"9" * 5000 + b"}", b"i": b"3"},  # past int parsing limits
        {b"e": b'{"type":"trade","tid":1,"oid":1,"price":1e999,"volume":1,"timestamp":1}', b"i": b"4"},
        {b"e": b'{"type":"order","oid":7,"account_id":"\xed\xa0\x80","contract_id":"C"}', b"i": b"5"},
        {b"i": b"6"},  # no event at all
        {b"e": json.dumps({**good[0], "oid": 2**64}).encode(), b"i": b"7"},
        {b"e": json.dumps({**good[0], "price": float("nan")}).encode(), b"i": b"8"},
        {b"e": json.dumps({**good[0], "volume": True}).encode(), b"i": b"9"},
        {b"e": json.dumps({"type": ["order"]}).encode(), b"i": b"10"},
        {b"e": json.dumps({**good[0], "account_id": "\ud800" * 10_000}).encode(), b"i": b"11"},  # other shard?
    ]
    for fields in poison:
        client.xadd(key, fields)  # type: ignore[arg-type]
    for index, event in enumerate(good):
        client.xadd(key, {"e": json.dumps(event), "i": str(100 + index)})
    worker = _worker(server.url)
    with caplog.at_level(logging.WARNING, logger="cluster_risk.cluster.worker"):
        worker.run()
    assert worker.stats.entries == len(poison) + len(good)
    dead = [{k.decode(): v for k, v in f.items()} for _, f in client.xrange(publisher.keys.dead(0))]
    want_dead = []
    for fields in poison:
        try:
            event = decode_line(fields.get(b"e", b""))
        except EventError as exc:
            want_dead.append((exc.code, exc.field))
            continue
        account = getattr(event, "account_id", None)
        if account is not None and publisher.keys.shard_of(account) != 0:
            want_dead.append(("wrong_shard", "account_id"))
    assert [(d["error"].decode(), d["field"].decode()) for d in dead] == want_dead
    assert len(want_dead) == len(poison) - 1 - (publisher.keys.shard_of("\ud800" * 10_000) == 0)
    assert all(d["reason"] for d in dead)
    logged = [r for r in caplog.records if r.getMessage().startswith("dead-lettered")]
    assert len(logged) == len(dead)
    actions, _, _ = fleet_output(client)
    applied = [tick, *good]
    if publisher.keys.shard_of("\ud800" * 10_000) == 0:
        applied.insert(1, {**good[0], "account_id": "\ud800" * 10_000})
    want, _ = expected(CONFIG, applied)
    assert len(want) >= len(good) // 2
    assert by_scope(actions) == by_scope(want)


def test_a_gateway_and_the_ops_commands_take_hostile_ids(server: RedisProcess) -> None:
    """Pauses of hostile accounts reach a gateway (hint and resync), and an operator can pause,
    resume, reset and inspect them: every text crosses Redis as ids.to_bytes, both ways."""
    client = connect(server.url)
    publisher = Publisher(client, shards=2)
    accounts = ["\ud800", "VICTIM\x1fX17", "{s1}:%", "\x00"]
    # burst workers (run, then leave): the gateway's nobody-applies checks off, so that
    # is_paused says what the pauses are (tests/cluster/test_gates.py covers those checks)
    checks_off = {"owner_grace_s": None, "stale_after_s": None}
    with RiskClient(
        connect(server.url), config=build_config(CONFIG), poll_s=0.05, fail_after_s=60, **checks_off
    ) as gateway:
        events = [_order(n + 1, a, "X17", T0 + n) for n, a in enumerate(accounts)]
        events += [_fill(n + 1, n + 1, 11, T0 + 10 + n) for n in range(len(accounts))]
        publisher.publish([(None, e) for e in map(decode_event, events)])
        _worker(server.url).run()
        wait_for("the pauses", lambda: all(gateway.is_paused(a, "X17") for a in accounts), 10)
        assert not gateway.is_paused("VICTIM", "X17")
        gateway.resync()
        assert all(gateway.is_paused(a, "X17") for a in accounts) and not gateway.is_paused("VICTIM")
        ops = Ops(client)
        assert ops.pause({"account": "\udfff"}, "r", "me").status == "ok"
        wait_for("the kill switch", lambda: gateway.is_paused("\udfff"), 10)
        assert ops.resume({"account": "\udfff"}, "r", "me").status == "ok"
        wait_for("its resume", lambda: not gateway.is_paused("\udfff"), 10)
        report = ops.inspect("\ud800", rule_dimensions(build_config(CONFIG).rules))
        assert report["account"] == "\ud800" and report["pauses"]
        ops.reset_daily("\ud800", at_ns=T0 + 100, who="me", reason="r")
        _worker(server.url).run()
        wait_for("the reset's resume", lambda: not gateway.is_paused("\ud800", "X17"), 10)
        assert [r["scope"] for r in ops.audit("\ud800") if r["what"] == "reset_daily"] == [{"account": "\ud800"}]


def test_an_entry_that_meets_a_bug_is_dead_lettered_and_the_rest_applied(
    server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that one entry meets while its batch is planned (here: planted for account BOOM)
    stopped the worker, and every worker after it that took the shard; now that entry is an
    ``internal_error`` dead letter with the exception as its reason, and the rest is applied."""
    client = connect(server.url)
    publisher = Publisher(client, shards=1)
    events = [_order(1, "A", "X17", T0), _order(2, "BOOM", "X17", T0 + 1), _fill(1, 1, 11, T0 + 2)]
    publisher.publish([(None, decode_event(e)) for e in events])
    worker = _worker(server.url, shards=1)
    context = worker.engine._context

    def planted(account: str, contract: str) -> Any:
        if account == "BOOM":
            raise RuntimeError("planted bug")
        return context(account, contract)

    worker.engine._context = planted  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="cluster_risk.cluster.worker"):
        worker.run()
    assert worker.stats.entries == 3
    dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(publisher.keys.dead(0))]
    assert [(d["error"], d["reason"]) for d in dead] == [("internal_error", "RuntimeError: planted bug")]
    actions, _, _ = fleet_output(client)
    assert [(a["type"], a["scope"]) for a in actions] == [("PAUSE_ORDER", {"account": "A", "product": "P{1}"})]
    assert any("planted bug" in (r.exc_text or "") for r in caplog.records)


def test_an_entry_apply_lua_fails_on_is_dead_lettered_and_the_shard_goes_on(
    server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """apply.lua failing at run time on one entry (here: a plan planted to break the script for
    account LUA) was retried forever: the shard stalled.  Now the batch's entries are applied
    one at a time, the one that fails alone is a ``script_error`` dead letter, the rest applied."""
    client = connect(server.url)
    publisher = Publisher(client, shards=1)
    events = [
        _order(1, "A", "X17", T0),
        _order(2, "LUA", "X17", T0 + 1),
        _fill(1, 1, 11, T0 + 2),
        _order(3, "B", "C", T0),
    ]
    publisher.publish([(None, decode_event(e)) for e in events])
    worker = _worker(server.url, shards=1)
    plan_shard = worker.engine.plan_shard

    def planted(shard: int, batch: Any, **options: Any) -> Any:
        planned = plan_shard(shard, batch, **options)
        if any(getattr(e, "account_id", None) == "LUA" for e in batch):
            planned.blob = worker.store.encode([1, 0, "not", "a", "plan"])
        return planned

    worker.engine.plan_shard = planted  # type: ignore[method-assign]
    guard = threading.Timer(30, worker.stop)  # a stalled shard never drains: stop, then fail below
    guard.start()
    try:
        with caplog.at_level(logging.ERROR, logger="cluster_risk.cluster.worker"):
            worker.run()
    finally:
        guard.cancel()
    assert worker.stats.entries == 4
    dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(publisher.keys.dead(0))]
    assert [(d["error"], d["index"]) for d in dead] == [("script_error", "")]
    reason = dead[0]["reason"]  # the script's own error message, as each server words it
    assert reason.startswith(("user_script:", "user_function:", "Error running script (call to f_")), reason
    assert "user_" in reason
    assert '"LUA"' in dead[0]["event"]
    actions, _, _ = fleet_output(client)
    assert [(a["type"], a["scope"]) for a in actions] == [("PAUSE_ORDER", {"account": "A", "product": "P{1}"})]
    logged = [r.getMessage() for r in caplog.records]
    assert [m.split(" (")[0] for m in logged if "apply.lua failed" in m] == [
        "shard 0: apply.lua failed",
        f"shard 0: apply.lua failed on entry {dead[0]['entry']}",
    ]
