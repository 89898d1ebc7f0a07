"""AccountVolumeLimitRule and the trading-day machinery: metrics, dimensions, strict cap,
late trades, per-account days, night-session rollover, reset_daily, trade enrichment."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from cluster_risk import EventError
from tests.helpers import (
    DAY,
    MS,
    SHANGHAI_NIGHT,
    T0,
    Engine,
    EngineFactory,
    S,
    act,
    at,
    order,
    trade,
    views,
)

RULE = "AccountVolumeLimitRule"
A = {"account": "A"}
B = {"account": "B"}


@pytest.fixture
def vol_engine(backend_engine: EngineFactory) -> EngineFactory:
    """``vol_engine(cap, *more_rules, **options)``: a volume rule (options: its own and the
    config's trading_day / contract_to_product), on ``backend``."""

    def make(cap: float, *more: dict[str, Any], **options: Any) -> Engine:
        config = {k: options.pop(k) for k in ("trading_day", "contract_to_product") if k in options}
        return backend_engine({"type": RULE, "daily_cap": cap, **options}, *more, **config)

    return make


def test_volume_cap_is_strict(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    assert engine.process_trade(trade(1, T0, 4)) == []
    assert engine.process_trade(trade(2, T0 + 1, 6)) == []  # 10 is not > 10
    assert views(engine.process_trade(trade(3, T0 + 2, 1))) == [act("PAUSE", RULE, A, T0 + 2, 11, 10)]


def test_paused_only_once_but_the_sum_keeps_growing(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    assert len(engine.process_trade(trade(1, T0, 11))) == 1
    assert engine.process_trade(trade(2, T0 + 1, 5)) == []
    assert engine.daily_sum(RULE, A) == 16


def test_count_metric(vol_engine: EngineFactory) -> None:
    engine = vol_engine(2, metric="count")
    out = [engine.process_trade(trade(i, T0 + i, 100)) for i in range(1, 4)]
    assert out[:2] == [[], []]
    assert views(out[2]) == [act("PAUSE", RULE, A, T0 + 3, 3, 2)]


def test_notional_metric_uses_contract_multiplier(vol_engine: EngineFactory) -> None:
    engine = vol_engine(1000, metric="notional", contract_multiplier={"C1": 10})
    assert engine.process_trade(trade(1, T0, 3, price=10.0, contract="C2")) == []  # 30: default multiplier 1
    assert engine.process_trade(trade(2, T0 + 1, 2, price=48.5)) == []  # + 48.5 * 2 * 10 = 1000
    assert views(engine.process_trade(trade(3, T0 + 2, 1, price=0.25))) == [act("PAUSE", RULE, A, T0 + 2, 1002.5, 1000)]


def test_account_and_product_dimensions(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10, dimensions=["account", "product"], contract_to_product={"T2303": "T10Y", "T2306": "T10Y"})
    assert engine.process_trade(trade(1, T0, 6, contract="T2303")) == []
    assert engine.process_trade(trade(2, T0 + 1, 9, contract="IF2312")) == []  # unmapped: own product
    assert engine.process_trade(trade(3, T0 + 2, 9, account="B", contract="T2306")) == []
    out = engine.process_trade(trade(4, T0 + 3, 5, contract="T2306"))
    assert views(out) == [act("PAUSE", RULE, {"account": "A", "product": "T10Y"}, T0 + 3, 11, 10)]
    assert views(engine.process_trade(trade(5, T0 + 4, 2, contract="IF2312"))) == [
        act("PAUSE", RULE, {"account": "A", "product": "IF2312"}, T0 + 4, 11, 10)
    ]


@pytest.mark.memory_only("no account dimension: the Redis executor refuses it (events are sharded by account)")
def test_contract_dimension_spans_accounts(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10, dimensions=["contract"])
    engine.process_trade(trade(1, T0, 6, account="A"))
    out = engine.process_trade(trade(2, T0 + 1, 6, account="B"))
    assert views(out) == [act("PAUSE", RULE, {"contract": "C1"}, T0 + 1, 12, 10)]


def test_late_trade_counts_toward_its_own_day_and_emits_nothing(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    assert engine.process_trade(trade(1, T0 + 1, 8)) == []
    assert engine.process_order(order(50, T0 + DAY + 1)) == []  # A is now on day 2
    assert engine.process_trade(trade(2, T0 + 2, 8)) == []  # day 1's sum is 16 > 10, but late
    assert engine.daily_sum(RULE, A, date(2023, 3, 1)) == 16
    assert engine.daily_sum(RULE, A) == 0
    assert engine.process_trade(trade(3, T0 + DAY + 2, 10)) == []  # day 2: 10, not 16 + 10
    assert views(engine.process_trade(trade(4, T0 + DAY + 3, 1))) == [act("PAUSE", RULE, A, T0 + DAY + 3, 11, 10)]


def test_trading_day_is_per_account(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    engine.process_order(order(50, T0 + DAY, account="A"))  # A moves to day 2; B stays on day 1
    assert engine.process_trade(trade(1, T0 + 5, 11, account="A")) == []  # late for A
    out = engine.process_trade(trade(2, T0 + 6, 11, account="B"))
    assert views(out) == [act("PAUSE", RULE, B, T0 + 6, 11, 10)]


def test_night_session_belongs_to_the_next_day(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10, trading_day=SHANGHAI_NIGHT)
    sh = "Asia/Shanghai"
    engine.process_trade(trade(1, at(2023, 3, 26, 20, 30, tz=sh), 8))  # day 26
    assert engine.process_trade(trade(2, at(2023, 3, 26, 21, 30, tz=sh), 8)) == []  # day 27
    assert engine.daily_sum(RULE, A, date(2023, 3, 26)) == 8
    assert engine.daily_sum(RULE, A, date(2023, 3, 27)) == 8
    afternoon = at(2023, 3, 27, 14, 0, tz=sh)  # still day 27: 8 + 3 > 10
    assert views(engine.process_trade(trade(3, afternoon, 3))) == [act("PAUSE", RULE, A, afternoon, 11, 10)]


@pytest.mark.parametrize(("offset", "new_day"), [(-1, False), (0, True)])
def test_night_session_edge_is_21_00_local(offset: int, new_day: bool, vol_engine: EngineFactory) -> None:
    engine = vol_engine(10, trading_day=SHANGHAI_NIGHT)
    start = at(2023, 3, 26, 21, 0, tz="Asia/Shanghai")
    engine.process_trade(trade(1, start - DAY + 1, 11))  # paused on day 26
    out = engine.process_order(order(9, start + offset))
    assert views(out) == ([act("RESUME", RULE, A, start, 0, 10)] if new_day else [])


def test_rollover_by_own_order_comes_before_the_events_own_actions(backend_engine: EngineFactory) -> None:
    rate = {"type": "OrderRateLimitRule", "threshold": 1}
    engine = backend_engine(rate, {"type": RULE, "daily_cap": 10})
    engine.process_trade(trade(1, T0 + 5, 11))  # daily pause on day 1
    engine.process_order(order(1, T0 + DAY - 100 * MS))
    out = engine.process_order(order(2, T0 + DAY + 100 * MS))  # day 2, and 2 orders in 1 s
    assert views(out) == [
        act("RESUME", RULE, A, T0 + DAY, 0, 10),
        act("PAUSE", "OrderRateLimitRule", A, T0 + DAY + 100 * MS, 2, 1),
    ]


def test_rollover_by_own_trade_then_its_pause(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    engine.process_trade(trade(1, T0, 11))
    out = engine.process_trade(trade(2, T0 + 3 * DAY + 7, 12))
    assert views(out) == [act("RESUME", RULE, A, T0 + 3 * DAY, 0, 10), act("PAUSE", RULE, A, T0 + 3 * DAY + 7, 12, 10)]


def test_rollover_of_another_account_does_not_lift_mine(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    engine.process_trade(trade(1, T0, 11, account="A"))
    assert engine.process_order(order(1, T0 + DAY, account="B")) == []
    assert engine.paused_scopes() == [(RULE, A)]


def test_rollover_by_tick_lifts_every_account_in_rule_then_scope_order(vol_engine: EngineFactory) -> None:
    count = {"type": RULE, "name": "trades", "metric": "count", "daily_cap": 1}
    engine = vol_engine(10, count)
    for tid, account in [(1, "B"), (2, "A")]:
        engine.process_trade(trade(tid, T0 + tid, 11, account=account))
        engine.process_trade(trade(tid + 10, T0 + tid + 10, 1, account=account))
    assert len(engine.paused_scopes()) == 4
    assert engine.tick(T0 + DAY - 1) == []  # same day, nothing to lift
    assert views(engine.tick(T0 + DAY + 5 * S)) == [
        act("RESUME", RULE, A, T0 + DAY, 0, 10),
        act("RESUME", RULE, B, T0 + DAY, 0, 10),
        act("RESUME", "trades", A, T0 + DAY, 0, 1),
        act("RESUME", "trades", B, T0 + DAY, 0, 1),
    ]
    assert engine.tick(T0 + DAY + 6 * S) == []


def test_tick_day_applies_to_accounts_seen_later(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    engine.tick(T0 + DAY)  # every account is on day 2 from now on
    assert engine.process_trade(trade(1, T0 + 5, 11, account="NEW")) == []  # late for NEW


@pytest.mark.memory_only("no account dimension: the Redis executor refuses it (events are sharded by account)")
def test_accountless_scope_follows_the_latest_day_of_any_event(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10, dimensions=["product"])
    engine.process_trade(trade(1, T0, 11, account="A"))
    out = engine.process_order(order(1, T0 + DAY, account="B"))
    assert views(out) == [act("RESUME", RULE, {"product": "C1"}, T0 + DAY, 0, 10)]


def test_reset_daily_zeroes_the_day_and_lifts_daily_pauses_only(backend_engine: EngineFactory) -> None:
    rate = {"type": "OrderRateLimitRule", "threshold": 1}
    engine = backend_engine({"type": RULE, "daily_cap": 10}, rate)
    engine.process_trade(trade(1, T0 + 1, 11, account="B"))
    engine.process_trade(trade(2, T0 + 2, 11, account="A"))
    engine.process_order(order(1, T0 + 3))
    engine.process_order(order(2, T0 + 4))  # rate pause for A, count 2
    reset_at = T0 + 10 * S  # a tick here would lift the rate pause; a reset must not
    assert views(engine.reset_daily(reset_at)) == [
        act("RESUME", RULE, A, reset_at, 0, 10),
        act("RESUME", RULE, B, reset_at, 0, 10),
    ]
    assert engine.paused_scopes() == [("OrderRateLimitRule", A)]
    assert engine.window_count("OrderRateLimitRule", A) == 2
    assert engine.daily_sum(RULE, A) == 0
    assert engine.process_trade(trade(3, reset_at + 1, 10)) == []
    assert views(engine.process_trade(trade(4, reset_at + 2, 1))) == [act("PAUSE", RULE, A, reset_at + 2, 11, 10)]


def test_reset_daily_after_a_new_day_rolls_over_first(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    engine.process_trade(trade(1, T0, 11))
    reset_at = T0 + DAY + 3 * S
    # The rollover lifts the pause at the day's start; there is nothing left for the reset.
    assert views(engine.reset_daily(reset_at)) == [act("RESUME", RULE, A, T0 + DAY, 0, 10)]
    assert engine.process_trade(trade(2, T0 + 7, 50)) == []  # day 1 is now in the past


def test_trade_enriched_from_the_order_index(vol_engine: EngineFactory) -> None:
    engine = vol_engine(10, dimensions=["account", "contract"])
    engine.process_order(order(7, T0, contract="C9"))
    out = engine.process_trade(trade(1, T0 + 1, 11, oid=7, account=None, contract=None))
    assert views(out) == [act("PAUSE", RULE, {"account": "A", "contract": "C9"}, T0 + 1, 11, 10)]


@pytest.mark.parametrize(
    ("account", "contract", "scope"),
    [
        ("B", None, {"account": "B", "contract": "C9"}),
        (None, "C5", {"account": "A", "contract": "C5"}),
        ("B", "C5", {"account": "B", "contract": "C5"}),
    ],
)
def test_explicit_ids_win_over_the_index(
    account: str | None, contract: str | None, scope: dict[str, str], vol_engine: EngineFactory
) -> None:
    engine = vol_engine(10, dimensions=["account", "contract"])
    engine.process_order(order(7, T0, contract="C9"))
    out = engine.process_trade(trade(1, T0 + 1, 11, oid=7, account=account, contract=contract))
    assert [a.scope for a in out] == [scope]


@pytest.mark.parametrize(("account", "contract"), [(None, None), ("A", None), (None, "C1")])
def test_unknown_order(account: str | None, contract: str | None, vol_engine: EngineFactory) -> None:
    engine = vol_engine(10)
    with pytest.raises(EventError) as info:
        engine.process_trade(trade(1, T0, 11, oid=404, account=account, contract=contract))
    assert (info.value.code, info.value.field) == ("unknown_order", "oid")
    # Nothing was recorded: the same tid, now resolvable, counts.
    assert len(engine.process_trade(trade(1, T0, 11, oid=404, account="A", contract="C1"))) == 1
