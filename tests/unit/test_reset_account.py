"""reset_daily of one account (an ops extension, not in the contract): the in-process engine
and the wire form (``reset_account``) that carries it through a shard stream."""

from __future__ import annotations

import pytest

from cluster_risk import EventError, ResetDaily, RiskEngine
from cluster_risk.wire import decode_line, encode_event
from tests.helpers import DAY, T0, S, act, make_engine, order, trade, views

RULE = "AccountVolumeLimitRule"
RATE = {"type": "OrderRateLimitRule", "threshold": 1}
BY_CONTRACT = {"type": RULE, "daily_cap": 10, "dimensions": ["account", "contract"]}
COUNT = {"type": RULE, "name": "trades", "metric": "count", "daily_cap": 2}


def paused_over_caps() -> RiskEngine:
    engine = make_engine(BY_CONTRACT, COUNT, RATE)
    engine.process_trade(trade(1, T0 + 1, 11, account="A", contract="C2"))
    engine.process_trade(trade(2, T0 + 2, 11, account="A", contract="C1"))
    engine.process_trade(trade(3, T0 + 3, 11, account="B"))
    engine.process_trade(trade(4, T0 + 4, 1, account="A", contract="C3"))  # A's third trade: count 3 > 2
    engine.process_order(order(1, T0 + 5))
    engine.process_order(order(2, T0 + 6))  # the rate rule pauses A
    return engine


def test_only_the_account_is_zeroed_and_resumed_in_rule_then_scope_order() -> None:
    engine = paused_over_caps()
    reset_at = T0 + 10 * S
    assert views(engine.reset_daily(reset_at, account="A")) == [
        act("RESUME", RULE, {"account": "A", "contract": "C1"}, reset_at, 0, 10),
        act("RESUME", RULE, {"account": "A", "contract": "C2"}, reset_at, 0, 10),
        act("RESUME", "trades", {"account": "A"}, reset_at, 0, 2),
    ]
    assert engine.paused_scopes() == [
        (RULE, {"account": "B", "contract": "C1"}),
        ("OrderRateLimitRule", {"account": "A"}),  # rate state untouched
    ]
    assert engine.daily_sum(RULE, {"account": "A", "contract": "C1"}) == 0
    assert engine.daily_sum("trades", {"account": "A"}) == 0
    assert engine.daily_sum(RULE, {"account": "B", "contract": "C1"}) == 11
    assert engine.window_count("OrderRateLimitRule", {"account": "A"}) == 2
    # A counts from zero again; B was not reset
    assert engine.process_trade(trade(5, reset_at + 1, 10, account="A")) == []
    out = engine.process_trade(trade(6, reset_at + 2, 1, account="A"))
    assert views(out) == [act("PAUSE", RULE, {"account": "A", "contract": "C1"}, reset_at + 2, 11, 10)]
    assert engine.reset_daily(reset_at + 3, account="C") == []


def test_a_later_day_rolls_that_account_over_first_and_no_other() -> None:
    engine = paused_over_caps()
    reset_at = T0 + DAY + 3 * S
    out = engine.reset_daily(reset_at, account="A")
    # the rollover lifts A's daily pauses at the day's start; nothing is left for the reset
    assert views(out) == [
        act("RESUME", RULE, {"account": "A", "contract": "C1"}, T0 + DAY, 0, 10),
        act("RESUME", RULE, {"account": "A", "contract": "C2"}, T0 + DAY, 0, 10),
        act("RESUME", "trades", {"account": "A"}, T0 + DAY, 0, 2),
    ]
    # B's day did not move: its pause stays, and a trade of the old day still counts for B
    assert (RULE, {"account": "B", "contract": "C1"}) in engine.paused_scopes()
    assert engine.process_trade(trade(7, T0 + 7, 1, account="B", contract="C2")) == []
    # ... while for A the old day is now in the past: a late trade emits nothing
    assert engine.process_trade(trade(8, T0 + 8, 50, account="A")) == []


def test_the_whole_reset_still_resets_everyone() -> None:
    engine = paused_over_caps()
    out = engine.process(ResetDaily(T0 + 10 * S))
    assert len(out) == 4
    assert engine.paused_scopes() == [("OrderRateLimitRule", {"account": "A"})]


def test_process_takes_the_event_and_refuses_an_empty_account() -> None:
    engine = paused_over_caps()
    assert len(engine.process(ResetDaily(T0 + 10 * S, "A"))) == 3
    with pytest.raises(EventError) as caught:
        engine.reset_daily(T0 + 11 * S, account="")
    assert caught.value.field == "account_id"


def test_wire_form() -> None:
    event = decode_line('{"type": "reset_account", "timestamp": 5, "account_id": "A"}')
    assert event == ResetDaily(5, "A")
    assert encode_event(event) == {"type": "reset_account", "timestamp": 5, "account_id": "A"}
    # the contract's reset_daily ignores unknown fields: an account_id there does not narrow it
    assert decode_line('{"type": "reset_daily", "timestamp": 5, "account_id": "A"}') == ResetDaily(5)
    assert encode_event(ResetDaily(5)) == {"type": "reset_daily", "timestamp": 5}
    for bad in (
        '{"type": "reset_account", "timestamp": 5}',
        '{"type": "reset_account", "timestamp": 5, "account_id": ""}',
    ):
        with pytest.raises(EventError) as caught:
            decode_line(bad)
        assert caught.value.field == "account_id"
