"""Hypothesis fuzz through real Redis (issue 15, "Poison never spreads"): streams of events with
arbitrary ids (control characters, lone surrogates, braces, ``%``/``:``, long) and numbers
(huge, negative, floats, bools, NaN/Infinity) give exactly the in-process records through
``replay --redis-url``'s path (RemoteEngine), and the same actions and dead letters through
publish -> a worker's apply.  Bounded ``max_examples`` so CI stays fast; the pure-Python
decoders are fuzzed in tests/unit/test_fuzz_wire.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_risk import RiskEngine, build_config
from cluster_risk.cluster.shards import Deployment
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_lines
from cluster_risk.state.redis import RedisStore
from tests.cluster.conform import by_scope, expected, fleet_output, with_final_tick
from tests.helpers import DAY, T0, lines
from tests.redis.servers import RedisServer

CONFIG: dict[str, Any] = {
    "contract_to_product": {"C": "\ud800", "\x1f": "P:1"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 2, "window_ns": 1 << 20, "bucket_ns": 1 << 10},
        {"type": "AccountVolumeLimitRule", "daily_cap": 5, "dimensions": ["account", "product"]},
        {"type": "AccountVolumeLimitRule", "name": "n", "metric": "notional", "daily_cap": 1 << 53},
        {"type": "AccountVolumeLimitRule", "name": "c", "metric": "count", "daily_cap": 2},
    ],
}

TEXT = st.one_of(
    st.sampled_from(["A", "\ud800", "A\x1fB", "A\x1f", "{s0}", "%:", "\x00", "x" * 70_000, "é😀", "\udc00\ud800"]),
    st.text(alphabet=st.sampled_from(["\x00", "\x1f", "\n", ":", "%", "{", "}", "\ud800", "a", "😀"]), min_size=1),
)
ANY = st.one_of(
    st.integers(-(2**66), 2**66),
    st.floats(),
    st.booleans(),
    st.none(),
    TEXT,
    st.sampled_from([2**53 + 1, 2**63, 2**64, -1, 0]),
)


def _field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(*([good] * 6), ANY)


def _events() -> st.SearchStrategy[list[dict[str, Any]]]:
    ts = _field(st.integers(T0, T0 + 2 * DAY))
    price = st.one_of(st.integers(-(2**53) + 1, 2**53 - 1), st.floats(-1e308, 1e308), st.just(1e308))
    order = st.fixed_dictionaries(
        {
            "type": st.just("order"),
            "oid": _field(st.integers(0, 12)),
            "account_id": _field(TEXT),
            "contract_id": _field(st.one_of(st.sampled_from(["C", "\x1f", "D"]), TEXT)),
            "direction": _field(st.sampled_from(["BID", "ASK"])),
            "price": _field(price),
            "volume": _field(st.integers(1, 2**31 - 1)),
            "timestamp": ts,
        }
    )
    trade = st.fixed_dictionaries(
        {
            "type": st.just("trade"),
            "tid": _field(st.integers(0, 12)),
            "oid": _field(st.integers(0, 12)),
            "price": _field(price),
            "volume": _field(st.integers(1, 2**31 - 1)),
            "timestamp": ts,
        },
        optional={"account_id": _field(TEXT), "contract_id": _field(st.sampled_from(["C", "\x1f"]))},
    )
    clock = st.fixed_dictionaries({"type": st.sampled_from(["tick", "reset_daily"]), "timestamp": ts})
    reset = st.fixed_dictionaries({"type": st.just("reset_account"), "timestamp": ts, "account_id": _field(TEXT)})
    return st.lists(st.one_of(order, order, trade, trade, trade, clock, reset), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(events=_events(), batch_size=st.sampled_from([1, 7, 1000]))
def test_replay_through_redis_is_the_in_process_replay(
    standalone: RedisServer, events: list[dict[str, Any]], batch_size: int
) -> None:
    standalone.client().flushall()
    config = build_config(CONFIG)
    text = lines(events)
    want = list(replay_lines(RiskEngine.from_config(config), text))
    store = RedisStore.from_url(standalone.url, num_shards=3)
    try:
        got = list(replay_batched(RemoteEngine.from_config(config, store), text, batch_size))
    finally:
        store.close()
    assert got == want
    for record in got:
        json.dumps(record, allow_nan=False)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(events=_events())
def test_publish_then_a_worker_applies_as_the_engine_decides(
    standalone: RedisServer, events: list[dict[str, Any]]
) -> None:
    standalone.client().flushall()
    events = with_final_tick(events)
    client = RedisStore.from_url(standalone.url).client
    try:
        Deployment(client).ensure(3)
        publisher = Publisher(client, shards=3)
        rejected = {(e.code, e.field, index) for index, e in publisher.publish_lines(lines(events))}
        worker = Worker(build_config(CONFIG), client, worker_id="w", shards=3, tick_ms=0, lease_ms=2000, drain=True)
        worker.run()
        actions, dead, _ = fleet_output(client)
    finally:
        client.close()
    want_actions, want_errors = expected(CONFIG, events)
    assert by_scope(actions) == by_scope(want_actions)
    assert rejected | dead == want_errors
