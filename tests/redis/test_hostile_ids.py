"""Hostile ids through ``replay --redis-url``'s path (RemoteEngine, one batch per event or many):
control characters (U+001F included), lone surrogates, braces, ``%`` and ``:``, 64 KB ids.
Each gives exactly the in-process answer (issue 15, items 1 and 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import RiskEngine, build_config
from cluster_risk.cluster.shards import Keys
from cluster_risk.keys import index_pair, index_value, shard_of
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_lines
from cluster_risk.state.redis import RedisStore
from tests.helpers import T0, lines
from tests.helpers import wire_fill as _fill
from tests.helpers import wire_order as _order
from tests.redis.servers import RedisServer

CAP10 = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 10}]}
BY_CONTRACT = {
    "contract_to_product": {"X17": "P{1}", "\x1f": "\ud800"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 2, "window_ns": 1 << 20, "bucket_ns": 1 << 10},
        {"type": "AccountVolumeLimitRule", "daily_cap": 10, "dimensions": ["account", "product"]},
        {"type": "AccountVolumeLimitRule", "name": "c", "daily_cap": 3, "dimensions": ["account", "contract"]},
    ],
}
HOSTILE = [
    "VICTIM\x1fX17",
    "VICTIM",
    "\ud800",
    "a\udfffb",
    "\udbff\udc00",  # a surrogate pair written as two escapes: one astral character in Python
    "{s1}",
    "}{",
    "%1F:%",
    ":",
    "\x00\x01\n\t\x7f",
    "\u2028é😀",
    "x" * 65_536,
    "\x1f",
]


@pytest.fixture
def store(redis_store: RedisStore) -> RedisStore:
    return redis_store  # tests/conftest.py: 4 shards on the session's server, flushed


def _both(config: dict[str, Any], lines: list[str], store: RedisStore, batch_size: int) -> tuple[list[Any], list[Any]]:
    built = build_config(config)
    want = list(replay_lines(RiskEngine.from_config(built), lines))
    got = list(replay_batched(RemoteEngine.from_config(built, store), lines, batch_size))
    return want, got


def test_an_account_holding_u001f_does_not_charge_another_account(store: RedisStore) -> None:
    """Issue 15 item 1: the order index joined ``account\\x1fcontract`` and split at the first
    U+001F, so fills of ``VICTIM\\x1fX17``'s order (8) were charged to ``VICTIM`` (8 + 5 > 10)."""
    events = [
        _order(1, "VICTIM\x1fX17", "C", T0),
        _fill(1, 1, 8, T0 + 1),
        _order(2, "VICTIM", "C", T0 + 2),
        _fill(2, 2, 5, T0 + 3),
    ]
    want, got = _both(CAP10, lines(events), store, batch_size=1)
    assert want == [] and got == want


def test_the_order_index_value_is_unambiguous() -> None:
    for account in HOSTILE:
        for contract in ("C", "\x1f", "1:", "\ud800", "x" * 1000):
            assert index_pair(index_value(account, contract)) == (account, contract)
    for corrupt in ("A\x1fC", "1:A", "0:AC", "01:AC", "x:AC", ""):  # nothing this package writes
        with pytest.raises(ValueError, match="not an order-index value"):
            index_pair(corrupt)


def test_one_shard_function_that_takes_every_id(store: RedisStore) -> None:
    keys = Keys("risk", 4)
    for account in HOSTILE:
        assert store.shard_of(account) == keys.shard_of(account) == shard_of(account, 4)


def test_a_lone_surrogate_id_gives_the_in_process_answer(store: RedisStore) -> None:
    """Issue 15 item 2: ``"\\ud800"`` is valid JSON; replay --redis-url died in shard_of."""
    events = [_order(1, "\ud800", "\udc00", T0), _fill(1, 1, 18, T0 + 1), _fill(2, 1, 1, T0 + 2)]
    want, got = _both(CAP10, lines(events), store, batch_size=1)
    assert [a["scope"] for a in want] == [{"account": "\ud800"}]
    assert got == want


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_hostile_ids_give_the_in_process_answer(store: RedisStore, batch_size: int) -> None:
    events: list[dict[str, Any]] = []
    contracts = ["X17", "\x1f", "C{1}", "\ud800"]
    oid = tid = 0
    t = T0
    for round_ in range(3):
        for i, account in enumerate(HOSTILE):
            contract = contracts[(i + round_) % len(contracts)]
            oid += 1
            t += 1000
            events.append(_order(oid, account, contract, t))
            tid += 1
            events.append(_fill(tid, oid, 3 + i % 4, t + 1))  # enriched from the order index
            tid += 1
            events.append(_fill(tid, oid, 1, t + 2, account_id=account, contract_id=contract))
    events.append({"type": "reset_daily", "timestamp": t + 10})
    events.append({"type": "tick", "timestamp": t + 10 * (1 << 20)})
    want, got = _both(BY_CONTRACT, lines(events), store, batch_size)
    assert any(a["scope"]["account"] == "\ud800" for a in want)
    assert got == want
    for record in got:  # every output record is valid JSON, and says what in-process says
        assert json.loads(json.dumps(record)) == record


@pytest.mark.parametrize("batch_size", ["1", "1000"])
def test_replay_redis_url_prints_what_the_in_process_replay_prints(
    standalone: RedisServer, tmp_path: Path, batch_size: str
) -> None:
    """The issue's reproductions, as a user runs them: ``cluster-risk replay`` with and without
    ``--redis-url``, hostile ids included, print the same lines (each valid JSON)."""
    standalone.client().flushall()
    config = tmp_path / "config.json"
    notional = {"type": "AccountVolumeLimitRule", "name": "n", "metric": "notional", "daily_cap": 10}
    config.write_text(json.dumps({**BY_CONTRACT, "rules": [*BY_CONTRACT["rules"], notional]}), encoding="utf-8")
    events = [
        _order(1, "VICTIM\x1fX17", "C", T0),
        _fill(1, 1, 8, T0 + 1),
        _order(2, "VICTIM", "C", T0 + 2),
        _fill(2, 2, 5, T0 + 3),
    ]
    for n, account in enumerate(HOSTILE):
        events += [_order(10 + n, account, "\x1f", T0 + 10 + n), _fill(10 + n, 10 + n, 11, T0 + 30 + n)]
    events.append(_fill(99, 99, 100, T0 + 50, account_id="N", contract_id="C") | {"price": 1e308})
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line + "\n" for line in lines(events)), encoding="utf-8")
    command = [sys.executable, "-m", "cluster_risk.cli", "replay", "-q", "--config", str(config), str(path)]
    local = subprocess.run(command, capture_output=True, timeout=120, check=False)
    remote = subprocess.run(
        [*command, "--redis-url", standalone.url, "--batch-size", batch_size],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert local.returncode == remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout == local.stdout
    records = [json.loads(line, parse_constant=_no_constant) for line in local.stdout.splitlines()]
    assert {"account": "N"} in [r.get("scope") for r in records]  # 1e308 x 100: a finite value
    assert any(r.get("scope", {}).get("account") == "\ud800" for r in records)
    assert not any(r.get("scope") == {"account": "VICTIM", "product": "C"} for r in records)


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")
