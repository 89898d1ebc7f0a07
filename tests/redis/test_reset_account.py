"""reset_daily of one account (ops extension) on every backend: random streams where resets of
single accounts (escaped names, the account in any place of a scope) are mixed with orders,
trades, ticks and whole resets decide exactly as the in-memory engine."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cluster_risk import EventError, RiskEngine
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_events
from cluster_risk.wire import decode_event
from tests.helpers import DAY, EngineFactory
from tests.redis import streams


def with_account_resets(seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    names = [f"A{i}" for i in range(5)] + ["acc:with%colon"]
    out: list[dict[str, Any]] = []
    for event in streams.stream(seed, n=600):
        out.append(event)
        if isinstance(event, dict) and event.get("type") in ("order", "trade") and rnd.random() < 0.06:
            reset = {"type": "reset_account", "timestamp": event["timestamp"] + rnd.choice([0, 1, DAY])}
            out.append(reset | {"account_id": rnd.choice(names)})
    return out


@pytest.mark.parametrize("backend", ["fakeredis", "redis", "cluster"], indirect=True)
@pytest.mark.parametrize("seed", range(4))
def test_account_resets_print_what_memory_prints(backend_engine: EngineFactory, seed: int) -> None:
    rules = streams.rules(seed)
    memory = RiskEngine(rules, streams.CONTRACTS)
    probe = backend_engine(num_shards=1 + seed % 4)
    assert isinstance(probe, RemoteEngine)
    remote = RemoteEngine(rules, streams.CONTRACTS, store=probe.store)
    events = with_account_resets(seed)
    expected = list(replay_events(memory, events))
    check = RiskEngine(streams.rules(seed), streams.CONTRACTS)
    lifted = 0
    for event in events:  # the resets of one account do lift pauses in these streams
        try:
            actions = check.process(decode_event(event))
        except EventError:
            continue
        if isinstance(event, dict) and event.get("type") == "reset_account":
            lifted += sum(1 for a in actions if a.reason == "manual daily reset")
    assert lifted >= 2
    assert list(replay_batched(remote, events, [1, 9, 100, 1000][seed % 4], decoded=True)) == expected
    assert remote.paused_scopes() == memory.paused_scopes()
