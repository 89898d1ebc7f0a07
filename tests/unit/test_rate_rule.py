"""OrderRateLimitRule: buckets, window edges, out-of-order and late orders, hysteresis, ticks."""

from __future__ import annotations

from typing import Any

import pytest

from cluster_risk import Action
from tests.helpers import MS, T0, Engine, EngineFactory, S, act, order, trade, views

RULE = "OrderRateLimitRule"
A = {"account": "A"}


@pytest.fixture
def rate_engine(backend_engine: EngineFactory) -> EngineFactory:
    """``rate_engine(threshold, **options)``: an engine with one rate rule, on ``backend``."""

    def make(threshold: int, **options: Any) -> Engine:
        return backend_engine({"type": RULE, "threshold": threshold, **options})

    return make


class Feed:
    """Sends orders with fresh oids and keeps every action list."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.oid = 0

    def send(self, t: int, account: str = "A", contract: str = "C1") -> list[Action]:
        self.oid += 1
        return self.engine.process_order(order(self.oid, t, account=account, contract=contract))

    def burst(self, times: list[int], account: str = "A", contract: str = "C1") -> list[list[Action]]:
        return [self.send(t, account, contract) for t in times]


def test_pause_when_count_exceeds_threshold(rate_engine: EngineFactory) -> None:
    feed = Feed(rate_engine(3))
    out = feed.burst([T0, T0 + 100 * MS, T0 + 200 * MS, T0 + 300 * MS])
    assert out[:3] == [[], [], []]
    assert views(out[3]) == [act("PAUSE", RULE, A, T0 + 300 * MS, 4, 3)]
    assert out[3][0].reason  # a human-readable reason rides along


def test_paused_only_once_and_orders_still_counted_while_paused(rate_engine: EngineFactory) -> None:
    feed = Feed(rate_engine(2))
    out = feed.burst([T0 + i * MS for i in range(5)])
    assert [len(a) for a in out] == [0, 0, 1, 0, 0]
    assert feed.engine.window_count(RULE, A) == 5
    # At T0+1s+2ms the window is buckets [3ms, ...]: the two orders sent while paused.
    assert views(feed.engine.tick(T0 + S + 2 * MS)) == [act("RESUME", RULE, A, T0 + S + 2 * MS, 2, 2)]


@pytest.mark.parametrize(
    ("last", "paused"),
    [
        (T0 + S - 1, True),  # bucket index T0//B + 999: T0's bucket is still in the window
        (T0 + S, False),  # bucket index T0//B + 1000: T0's bucket has left the window
    ],
)
def test_order_at_the_window_edge(last: int, paused: bool, rate_engine: EngineFactory) -> None:
    engine = rate_engine(2, window_ns=S, bucket_ns=MS)
    feed = Feed(engine)
    feed.burst([T0, T0 + MS])
    actions = feed.send(last)
    assert [a.type.value for a in actions] == (["PAUSE_ORDER"] if paused else [])
    assert engine.window_count(RULE, A) == (3 if paused else 2)


def test_coarse_buckets_count_whole_buckets(rate_engine: EngineFactory) -> None:
    # B = 100 ms, K = 10.  An exact 1 s sliding window at T0+1.05s would still hold T0+99ms;
    # the contract's window is bucket indices [1, 10], so bucket 0 (T0+99ms) is out.
    engine = rate_engine(2, window_ns=S, bucket_ns=100 * MS)
    feed = Feed(engine)
    out = feed.burst([T0 + 99 * MS, T0 + 150 * MS, T0 + S + 50 * MS])
    assert out == [[], [], []]
    assert engine.window_count(RULE, A) == 2
    # A fourth order in bucket 10 does cross the threshold.
    assert views(feed.send(T0 + S + 99 * MS)) == [act("PAUSE", RULE, A, T0 + S + 99 * MS, 3, 2)]


def test_out_of_order_order_inside_the_window_counts_with_its_own_timestamp(rate_engine: EngineFactory) -> None:
    engine = rate_engine(2)
    feed = Feed(engine)
    feed.burst([T0 + 500 * MS, T0 + 600 * MS])
    assert views(feed.send(T0 + 100 * MS)) == [act("PAUSE", RULE, A, T0 + 100 * MS, 3, 2)]


@pytest.mark.parametrize(
    ("late", "counted"),
    [
        (T0 + 4 * S, False),  # t//B == h//B - K: too late
        (T0 + 4 * S + MS - 1, False),  # same bucket
        (T0 + 4 * S + MS, True),  # t//B == h//B - K + 1: the oldest bucket of the window
    ],
)
def test_late_order_edge(late: int, counted: bool, rate_engine: EngineFactory) -> None:
    engine = rate_engine(5, window_ns=S, bucket_ns=MS)
    feed = Feed(engine)
    feed.burst([T0 + 5 * S - MS, T0 + 5 * S])  # h_g = T0 + 5 s
    assert feed.send(late) == []
    assert engine.window_count(RULE, A) == (3 if counted else 2)


def test_late_order_is_not_counted_but_is_indexed_and_deduplicated(backend_engine: EngineFactory) -> None:
    engine = backend_engine(
        {"type": RULE, "threshold": 2},
        {"type": "AccountVolumeLimitRule", "daily_cap": 1, "dimensions": ["account", "contract"]},
    )
    feed = Feed(engine)
    feed.burst([T0 + 5 * S, T0 + 5 * S + MS])
    late = order(100, T0 + 2 * S, contract="LATE")
    assert engine.process_order(late) == []
    assert engine.window_count(RULE, A) == 2
    # Indexed: a trade naming only the oid is enriched to (A, LATE).
    out = engine.process_trade(trade(1, T0 + 5 * S + 2 * MS, 2, oid=100, account=None, contract=None))
    assert views(out) == [
        act("PAUSE", "AccountVolumeLimitRule", {"account": "A", "contract": "LATE"}, T0 + 5 * S + 2 * MS, 2, 1)
    ]
    # Seen: the same oid again, now inside the window, changes nothing.
    assert engine.process_order(order(100, T0 + 5 * S + 3 * MS)) == []
    assert engine.window_count(RULE, A) == 2


def test_late_order_rechecks_the_pause_at_the_high_water_time(rate_engine: EngineFactory) -> None:
    engine = rate_engine(2)
    feed = Feed(engine)
    out = feed.burst([T0 + 10 * S, T0 + 10 * S + MS, T0 + 10 * S + 2 * MS])
    assert views(out[2]) == [act("PAUSE", RULE, A, T0 + 10 * S + 2 * MS, 3, 2)]
    # A tick far ahead lifts it: count(g, max(T, h_g)) = 0.
    assert views(engine.tick(T0 + 20 * S)) == [act("RESUME", RULE, A, T0 + 20 * S, 0, 2)]
    # A late order is not counted, but step 3 still runs: count(g, h_g) = 3 > 2.
    assert views(feed.send(T0 + 5 * S)) == [act("PAUSE", RULE, A, T0 + 5 * S, 3, 2)]


def test_tick_counts_at_the_high_water_time_not_before_it(rate_engine: EngineFactory) -> None:
    engine = rate_engine(2)
    feed = Feed(engine)
    feed.burst([T0 + 10 * S + i * MS for i in range(3)])
    assert engine.tick(T0) == []  # max(T0, h_g) = h_g: still 3 in the window
    assert engine.tick(T0 + 10 * S + 999 * MS) == []
    assert views(engine.tick(T0 + 11 * S + MS)) == [act("RESUME", RULE, A, T0 + 11 * S + MS, 1, 2)]
    assert engine.tick(T0 + 12 * S) == []  # nothing paused any more


def test_hysteresis_with_resume_threshold(rate_engine: EngineFactory) -> None:
    engine = rate_engine(3, resume_threshold=1)
    feed = Feed(engine)
    out = feed.burst([T0 + i * MS for i in range(4)])
    assert views(out[3]) == [act("PAUSE", RULE, A, T0 + 3 * MS, 4, 3)]
    # count 3, then 2: at or below threshold but above resume_threshold -> still paused.
    assert engine.tick(T0 + S) == []
    assert engine.tick(T0 + S + MS) == []
    assert views(engine.tick(T0 + S + 2 * MS)) == [act("RESUME", RULE, A, T0 + S + 2 * MS, 1, 3)]


def test_default_resume_threshold_is_the_threshold(rate_engine: EngineFactory) -> None:
    engine = rate_engine(3)
    Feed(engine).burst([T0 + i * MS for i in range(4)])
    assert views(engine.tick(T0 + S)) == [act("RESUME", RULE, A, T0 + S, 3, 3)]


def test_an_order_can_resume(rate_engine: EngineFactory) -> None:
    engine = rate_engine(3, resume_threshold=1)
    feed = Feed(engine)
    feed.burst([T0 + i * MS for i in range(4)])
    assert views(feed.send(T0 + 5 * S)) == [act("RESUME", RULE, A, T0 + 5 * S, 1, 3)]
    assert engine.paused_scopes() == []


def test_dimensions_account_and_contract(rate_engine: EngineFactory) -> None:
    engine = rate_engine(1, dimensions=["account", "contract"])
    feed = Feed(engine)
    assert feed.send(T0, "A", "C1") == []
    assert feed.send(T0 + MS, "A", "C2") == []
    assert feed.send(T0 + 2 * MS, "B", "C1") == []
    out = feed.send(T0 + 3 * MS, "A", "C1")
    assert views(out) == [act("PAUSE", RULE, {"account": "A", "contract": "C1"}, T0 + 3 * MS, 2, 1)]
    assert list(out[0].scope) == ["account", "contract"]


def test_scope_keeps_the_rule_dimension_order(rate_engine: EngineFactory) -> None:
    engine = rate_engine(1, dimensions=["contract", "account"])
    feed = Feed(engine)
    feed.send(T0)
    (action,) = feed.send(T0 + MS)
    assert list(action.scope.items()) == [("contract", "C1"), ("account", "A")]


@pytest.mark.memory_only("no account dimension: the Redis executor refuses it (events are sharded by account)")
def test_product_dimension_groups_mapped_contracts(backend_engine: EngineFactory) -> None:
    engine = backend_engine(
        {"type": RULE, "threshold": 1, "dimensions": ["product"]},
        contract_to_product={"T2303": "T10Y", "T2306": "T10Y"},
    )
    feed = Feed(engine)
    assert feed.send(T0, "A", "T2303") == []
    assert feed.send(T0 + MS, "B", "IF2312") == []  # unmapped: its own product
    out = feed.send(T0 + 2 * MS, "B", "T2306")
    assert views(out) == [act("PAUSE", RULE, {"product": "T10Y"}, T0 + 2 * MS, 2, 1)]


def test_tick_resumes_in_sorted_scope_order_at_tick_time(rate_engine: EngineFactory) -> None:
    engine = rate_engine(1, dimensions=["account", "contract"])
    feed = Feed(engine)
    for account, contract in [("B", "C1"), ("A", "C2"), ("A", "C1")]:
        feed.burst([T0, T0 + MS], account, contract)
    assert len(engine.paused_scopes()) == 3
    later = T0 + 5 * S
    expected = [
        act("RESUME", RULE, {"account": a, "contract": c}, later, 0, 1)
        for a, c in [("A", "C1"), ("A", "C2"), ("B", "C1")]
    ]
    assert views(engine.tick(later)) == expected
    assert engine.paused_scopes() == []


def test_tick_only_resumes_groups_whose_window_emptied(rate_engine: EngineFactory) -> None:
    engine = rate_engine(1)
    feed = Feed(engine)
    feed.burst([T0, T0 + MS], "A")
    feed.burst([T0 + 3 * S, T0 + 3 * S + MS], "B")
    assert views(engine.tick(T0 + 2 * S)) == [act("RESUME", RULE, A, T0 + 2 * S, 0, 1)]
    assert engine.paused_scopes() == [(RULE, {"account": "B"})]


def test_named_rule_uses_its_name(rate_engine: EngineFactory) -> None:
    engine = rate_engine(1, name="burst")
    feed = Feed(engine)
    feed.send(T0)
    assert [a.rule for a in feed.send(T0 + 1)] == ["burst"]
