"""The one-line validations on the hot paths must agree with check_order/check_trade: the
engine's, and events.order_ok / trade_ok (the Redis planner's and the worker's).

The hot path only falls back to the field-by-field checks when its combined test fails, so
the risk is a value the combined test lets through that the definition refuses.  Hypothesis
draws field values from a mix of valid and invalid ones and compares the two.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_risk import Direction, EventError, Order, RiskEngine, Trade
from cluster_risk.events import check_order, check_trade, order_ok, trade_ok
from cluster_risk.rules import OrderRateLimitRule

ints = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([2**31 - 1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**53)]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just("1"),
    st.none(),
)
prices = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 10**400]),
    st.booleans(),
    st.just("100.0"),
    st.none(),
)
texts = st.one_of(st.sampled_from(["A1", "T2303", ""]), st.none(), st.integers(0, 3), st.just(["A1"]))
directions = st.one_of(
    st.sampled_from([Direction.BID, Direction.ASK, "BID", "ASK", "bid", "", "SIDEWAYS"]), st.none(), st.just(["BID"])
)


def _outcome(call: object, arg: object) -> tuple[str, str] | None:
    try:
        call(arg)  # type: ignore[operator]
    except EventError as exc:
        return exc.code, exc.field
    return None


def _engine() -> RiskEngine:
    return RiskEngine([OrderRateLimitRule(threshold=1000)])


@settings(max_examples=400, deadline=None)
@given(oid=ints, account=texts, contract=texts, direction=directions, price=prices, volume=ints, ts=ints)
def test_fast_order_check_agrees_with_check_order(oid, account, contract, direction, price, volume, ts):  # type: ignore[no-untyped-def]
    order = Order(oid, account, contract, direction, price, volume, ts)
    expected = _outcome(check_order, order)
    engine = _engine()
    engine.process_order(Order(7, "A1", "T2303", Direction.BID, 1.0, 1, 1))  # a known context
    assert _outcome(engine.process_order, order) == expected


@settings(max_examples=400, deadline=None)
@given(tid=ints, oid=ints, price=prices, volume=ints, ts=ints, account=st.one_of(st.none(), texts))
def test_fast_trade_check_agrees_with_check_trade(tid, oid, price, volume, ts, account):  # type: ignore[no-untyped-def]
    trade = Trade(tid, oid, price, volume, ts, account, "T2303" if account is not None else None)
    expected = _outcome(check_trade, trade)
    engine = _engine()
    engine.process_order(Order(1, "A1", "T2303", Direction.BID, 1.0, 1, 1))
    got = _outcome(engine.process_trade, trade)
    if expected is None:
        assert got is None or got == ("unknown_order", "oid")
    else:
        assert got == expected


@settings(max_examples=600, deadline=None)
@given(oid=ints, account=texts, contract=texts, direction=directions, price=prices, volume=ints, ts=ints)
def test_order_ok_passes_only_what_check_order_passes(oid, account, contract, direction, price, volume, ts):  # type: ignore[no-untyped-def]
    order = Order(oid, account, contract, direction, price, volume, ts)
    if order_ok(order):
        assert _outcome(check_order, order) is None


@settings(max_examples=600, deadline=None)
@given(tid=ints, oid=ints, price=prices, volume=ints, ts=ints, account=st.one_of(st.none(), texts), contract=texts)
def test_trade_ok_passes_only_what_check_trade_passes(tid, oid, price, volume, ts, account, contract):  # type: ignore[no-untyped-def]
    trade = Trade(tid, oid, price, volume, ts, account, contract)
    if trade_ok(trade):
        assert _outcome(check_trade, trade) is None


def test_order_ok_and_trade_ok_pass_valid_events() -> None:  # the fast path is taken at all
    assert order_ok(Order(1, "A1", "T2303", Direction.BID, 101.5, 3, 1))
    assert order_ok(Order(2, "A", "C", "ASK", 7, 1, 0))
    assert trade_ok(Trade(1, 2, 101.5, 3, 1)) and trade_ok(Trade(1, 2, 100, 3, 1, "A1", "T2303"))


def test_non_finite_and_huge_prices_are_refused_on_the_hot_path() -> None:
    engine = _engine()
    for price in (math.inf, -math.inf, math.nan, 2**53, 10**400, True):
        assert _outcome(engine.process_order, Order(1, "A1", "T2303", Direction.BID, price, 1, 1)) == (
            "invalid_field",
            "price",
        )
