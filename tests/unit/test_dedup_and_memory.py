"""Duplicate oid / tid are ignored entirely; ids are forgotten after id_retention_days trading
days so the order index and the seen-sets stay bounded over a multi-day run."""

from __future__ import annotations

import pytest

from cluster_risk import ConfigError, EventError, RiskEngine, build_config
from tests.helpers import DAY, MS, T0, act, make_engine, order, trade, views

RATE = {"type": "OrderRateLimitRule", "threshold": 2}
VOLUME = {"type": "AccountVolumeLimitRule", "daily_cap": 10}
A = {"account": "A"}


def test_duplicate_oid_is_not_counted() -> None:
    engine = make_engine(RATE)
    engine.process_order(order(1, T0))
    engine.process_order(order(2, T0 + MS))
    assert engine.process_order(order(2, T0 + 2 * MS)) == []
    assert engine.process_order(order(1, T0 + 3 * MS, account="B", contract="C2", volume=5)) == []
    assert engine.window_count("OrderRateLimitRule", A) == 2
    assert engine.window_count("OrderRateLimitRule", {"account": "B"}) == 0
    assert len(engine.process_order(order(3, T0 + 4 * MS))) == 1  # the third distinct order


def test_duplicate_oid_does_not_advance_the_day() -> None:
    engine = make_engine(VOLUME)
    engine.process_order(order(1, T0))
    engine.process_trade(trade(1, T0 + 1, 6))
    assert engine.process_order(order(1, T0 + DAY + 1)) == []  # a day-2 duplicate
    # A is still on day 1: this trade is not late and crosses the cap.
    assert views(engine.process_trade(trade(2, T0 + 2, 5))) == [
        act("PAUSE", "AccountVolumeLimitRule", A, T0 + 2, 11, 10)
    ]


def test_duplicate_oid_does_not_roll_over_a_pause() -> None:
    engine = make_engine(VOLUME)
    engine.process_order(order(1, T0))
    engine.process_trade(trade(1, T0 + 1, 11))
    assert engine.process_order(order(1, T0 + DAY + 1)) == []  # no RESUME
    assert engine.paused_scopes() == [("AccountVolumeLimitRule", A)]


def test_duplicate_tid_changes_nothing() -> None:
    engine = make_engine(VOLUME)
    engine.process_trade(trade(1, T0, 6))
    assert engine.process_trade(trade(1, T0 + 1, 6)) == []  # would cross the cap
    assert engine.process_trade(trade(1, T0 + 2, 9, oid=77, account="B")) == []
    assert engine.daily_sum("AccountVolumeLimitRule", A) == 6
    assert engine.daily_sum("AccountVolumeLimitRule", {"account": "B"}) == 0
    assert engine.process_trade(trade(1, T0 + DAY, 1)) == []  # nor does it move the day
    assert len(engine.process_trade(trade(2, T0 + 3, 5))) == 1  # day 1: 11 > 10


def test_duplicate_tid_after_a_pause_does_not_pause_again_or_resume() -> None:
    engine = make_engine(VOLUME)
    engine.process_trade(trade(1, T0, 11))
    assert engine.process_trade(trade(1, T0 + 2 * DAY, 11)) == []
    assert engine.paused_scopes() == [("AccountVolumeLimitRule", A)]


def run_days(engine: RiskEngine, days: range, per_day: int) -> list[dict[str, int]]:
    """Each day: ``per_day`` orders and their trades, fresh ids; memory sizes after each day."""
    sizes = []
    for day in days:
        for i in range(per_day):
            n = day * per_day + i
            engine.process_order(order(n, T0 + day * DAY + i * MS, account=f"ACC{i % 5}"))
            engine.process_trade(trade(n, T0 + day * DAY + i * MS + 1, oid=n, account=None, contract=None))
        sizes.append(engine.memory_entries())
    return sizes


@pytest.mark.parametrize("retention", [1, 3])
def test_ids_are_kept_for_the_retention_days(retention: int) -> None:
    engine = RiskEngine(build_config({"rules": [RATE, VOLUME]}).rules, id_retention_days=retention)
    engine.process_order(order(1, T0))
    engine.process_trade(trade(1, T0, 1))
    for day in range(1, retention + 1):
        # Still known on every day up to day + retention: duplicates are ignored.
        engine.tick(T0 + day * DAY)
        assert engine.process_order(order(1, T0 + day * DAY, account="B")) == []
        assert engine.process_trade(trade(1, T0 + day * DAY, 50, account="B")) == []
    assert engine.daily_sum("AccountVolumeLimitRule", {"account": "B"}) == 0
    # One day more and they are forgotten: the same ids count as new.
    later = T0 + (retention + 1) * DAY
    engine.tick(later)
    assert engine.memory_entries()["orders"] == 0
    assert engine.memory_entries()["trades"] == 0
    engine.process_order(order(1, later, account="B"))
    engine.process_trade(trade(1, later, 50, account="B"))
    assert engine.window_count("OrderRateLimitRule", {"account": "B"}) == 1
    assert engine.daily_sum("AccountVolumeLimitRule", {"account": "B"}) == 50


def test_memory_stays_bounded_over_many_days() -> None:
    per_day, retention, days = 40, 2, 12
    engine = make_engine(RATE, VOLUME, id_retention_days=retention)
    sizes = run_days(engine, range(days), per_day)
    bound = (retention + 1) * per_day
    assert max(s["orders"] for s in sizes) == bound < days * per_day
    assert max(s["trades"] for s in sizes) == bound
    assert sizes[-1]["orders"] == sizes[retention]["orders"]  # a steady state, not growth
    assert sizes[-1]["accounts"] == 5
    # Ticks alone move the latest day: after `retention` more days everything is forgotten.
    engine.tick(T0 + (days + retention) * DAY)
    assert engine.memory_entries()["orders"] == engine.memory_entries()["trades"] == 0


def test_forgotten_order_no_longer_enriches_a_trade() -> None:
    engine = make_engine(VOLUME, id_retention_days=1)
    engine.process_order(order(5, T0))
    engine.tick(T0 + 2 * DAY)
    with pytest.raises(EventError) as info:
        engine.process_trade(trade(9, T0 + 2 * DAY, oid=5, account=None, contract=None))
    assert info.value.code == "unknown_order"


def test_default_retention_keeps_a_week() -> None:
    engine = make_engine(RATE)
    engine.process_order(order(1, T0))
    engine.tick(T0 + 7 * DAY)
    assert engine.memory_entries()["orders"] == 1


@pytest.mark.parametrize("days", [0, -1])
def test_retention_must_keep_the_previous_day(days: int) -> None:
    with pytest.raises(ConfigError, match="id_retention_days"):
        RiskEngine([], id_retention_days=days)
    with pytest.raises(ConfigError, match="id_retention_days"):
        build_config({"rules": [], "id_retention_days": days})
