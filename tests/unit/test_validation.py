"""Bad input of every kind: typed errors naming the field, through the API and the wire, and a
rejected event changes no state at all."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cluster_risk import EventError, Order, ResetDaily, Tick, Trade
from cluster_risk.replay import replay_events
from cluster_risk.wire import decode_event, decode_line
from tests.helpers import DAY, T0, Engine, EngineFactory, make_engine, order, state_of, trade, views

MISSING = object()  # "delete this key"

ORDER = {
    "type": "order",
    "oid": 2,
    "account_id": "A",
    "contract_id": "C1",
    "direction": "BID",
    "price": 100.5,
    "volume": 3,
    "timestamp": T0 + DAY + 5,  # day 2: a rejected event must not move A's day
}
TRADE = {"type": "trade", "tid": 1, "oid": 1, "price": 100.5, "volume": 3, "timestamp": T0 + DAY + 5}
TRADE_WITH_IDS = {**TRADE, "account_id": "A", "contract_id": "C1"}

BAD_INT = [("str", "1"), ("float", 1.0), ("bool", True), ("null", None), ("missing", MISSING)]


def _cases() -> list[Any]:
    cases = []

    def add(base: dict[str, Any], key: str, value: Any, code: str, field: str, label: str) -> None:
        cases.append(pytest.param(base, key, value, code, field, id=f"{base['type']}-{key}-{label}"))

    for base, fields in [(ORDER, ("oid", "volume", "timestamp")), (TRADE, ("tid", "oid", "volume", "timestamp"))]:
        for key in fields:
            for label, value in BAD_INT:
                add(base, key, value, "invalid_field", key, label)
    for base in (ORDER, TRADE):
        add(base, "volume", 0, "invalid_field", "volume", "zero")
        add(base, "volume", -5, "invalid_field", "volume", "negative")
        add(base, "volume", 2**31, "invalid_field", "volume", "2**31")
        add(base, "timestamp", -1, "invalid_field", "timestamp", "negative")
        add(base, "timestamp", 2**63, "invalid_field", "timestamp", "2**63")
        add(base, "price", math.inf, "invalid_field", "price", "inf")
        add(base, "price", -math.inf, "invalid_field", "price", "-inf")
        add(base, "price", math.nan, "invalid_field", "price", "nan")
        add(base, "price", "100.5", "invalid_field", "price", "str")
        add(base, "price", True, "invalid_field", "price", "bool")
        add(base, "price", MISSING, "invalid_field", "price", "missing")
        add(base, "oid", -1, "invalid_field", "oid", "negative")
        add(base, "oid", 2**64, "invalid_field", "oid", "2**64")
    add(TRADE, "tid", 2**64, "invalid_field", "tid", "2**64")
    for key in ("account_id", "contract_id"):
        add(ORDER, key, "", "invalid_field", key, "empty")
        add(ORDER, key, 7, "invalid_field", key, "int")
        add(ORDER, key, MISSING, "invalid_field", key, "missing")
        add(TRADE_WITH_IDS, key, "", "invalid_field", key, "empty")
        add(TRADE_WITH_IDS, key, ["A"], "invalid_field", key, "list")
    for label, value in [("lower", "bid"), ("other", "BUY"), ("int", 1), ("list", ["BID"])]:
        add(ORDER, "direction", value, "invalid_field", "direction", label)
    add(ORDER, "direction", MISSING, "invalid_field", "direction", "missing")
    # Finite as a JSON integer, infinite as the double every backend computes with.
    add(TRADE_WITH_IDS, "price", 10**400, "invalid_field", "price", "beyond-double")
    add(TRADE, "oid", 404, "unknown_order", "oid", "unknown")
    add(ORDER, "type", "cancel", "unknown_type", "type", "unknown")
    add(ORDER, "type", 3, "unknown_type", "type", "int")
    return cases


CASES = _cases()


def mutate(base: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    obj = dict(base)
    if value is MISSING:
        del obj[key]
    else:
        obj[key] = value
    return obj


def to_event(obj: dict[str, Any]) -> Order | Trade:
    """The API object for a wire dict (no validation: construction never checks)."""
    if obj["type"] == "order":
        return Order(
            *(obj.get(k) for k in ("oid", "account_id", "contract_id", "direction", "price", "volume", "timestamp"))
        )
    return Trade(*(obj.get(k) for k in ("tid", "oid", "price", "volume", "timestamp", "account_id", "contract_id")))


def fresh(make: EngineFactory = make_engine) -> Engine:
    return make(
        {"type": "OrderRateLimitRule", "threshold": 1},
        {"type": "AccountVolumeLimitRule", "daily_cap": 10},
        {"type": "AccountVolumeLimitRule", "name": "notional", "metric": "notional", "daily_cap": 1e9},
    )


def engine(make: EngineFactory = make_engine) -> Engine:
    """An engine that already knows order 1 of (A, C1) on day 1, so that bad events meet the
    warm paths (known account, contract and oid), not only the first-sight ones."""
    e = fresh(make)
    assert e.process_order(order(1, T0)) == []
    return e


def follow_up(e: Engine) -> list[dict[str, Any]]:
    """Day-1 events reusing oid 2 / tid 1: a rate pause and a daily pause, unless a rejected
    event left a trace (a seen id, or A moved to day 2)."""
    events = [order(2, T0 + 11), trade(1, T0 + 12, 11, oid=1, account=None, contract=None)]
    return views(a for ev in events for a in e.process(ev))


def expect_error(info: pytest.ExceptionInfo[EventError], code: str, field: str) -> None:
    assert (info.value.code, info.value.field) == (code, field), str(info.value)


@pytest.mark.parametrize(("base", "key", "value", "code", "field"), CASES)
def test_wire_rejects(base: dict[str, Any], key: str, value: Any, code: str, field: str) -> None:
    line = json.dumps(mutate(base, key, value))
    if code == "unknown_order":  # well-formed on the wire; only the engine knows the index
        assert isinstance(decode_line(line), Trade)
        return
    with pytest.raises(EventError) as info:
        decode_line(line)
    if key == "price" and isinstance(value, float) and not math.isfinite(value):
        # NaN / Infinity are not JSON: either verdict names the problem.
        assert (info.value.code, info.value.field) in {(code, field), ("invalid_json", "")}
    else:
        expect_error(info, code, field)


@pytest.mark.parametrize(("base", "key", "value", "code", "field"), [c for c in CASES if c.values[1] != "type"])
def test_api_rejects(
    base: dict[str, Any], key: str, value: Any, code: str, field: str, backend_engine: EngineFactory
) -> None:
    with pytest.raises(EventError) as info:
        engine(backend_engine).process(to_event(mutate(base, key, value)))
    expect_error(info, code, field)


@pytest.mark.parametrize(("base", "key", "value", "code", "field"), [c for c in CASES if c.values[1] != "type"])
def test_rejected_event_changes_no_state(
    base: dict[str, Any], key: str, value: Any, code: str, field: str, backend_engine: EngineFactory
) -> None:
    expected = follow_up(engine(backend_engine))
    assert [a["type"] for a in expected] == ["PAUSE_ORDER", "PAUSE_ORDER"]
    e = engine(backend_engine)
    before = state_of(e)
    with pytest.raises(EventError):
        e.process(to_event(mutate(base, key, value)))
    assert state_of(e) == before
    assert follow_up(e) == expected


@pytest.mark.parametrize("kind", ["tick", "reset_daily"])
@pytest.mark.parametrize("value", [-1, 2**63, 1.5, "1", True, None, MISSING])
def test_bad_clock_events(kind: str, value: Any, backend_engine: EngineFactory) -> None:
    with pytest.raises(EventError) as info:
        decode_line(json.dumps(mutate({"type": kind, "timestamp": 0}, "timestamp", value)))
    expect_error(info, "invalid_field", "timestamp")
    if value in (None, MISSING):
        return
    e = engine(backend_engine)
    with pytest.raises(EventError) as info:
        e.tick(value) if kind == "tick" else e.reset_daily(value)
    expect_error(info, "invalid_field", "timestamp")
    assert follow_up(e) == follow_up(engine(backend_engine))


@pytest.mark.parametrize(
    "line",
    ["", "   ", "not json", "{", '{"type": "order",}', "[]", "5", '"order"', "null", "true", "[" * 100_000, b"\xff{}"],
    ids=[
        "empty",
        "blank",
        "text",
        "open",
        "trailing-comma",
        "array",
        "number",
        "string",
        "null",
        "true",
        "deep",
        "bytes",
    ],
)
def test_not_a_json_object(line: str | bytes) -> None:
    with pytest.raises(EventError) as info:
        decode_line(line)
    expect_error(info, "invalid_json", "")
    assert info.value.to_dict(3) == {"error": "invalid_json", "field": "", "index": 3, "reason": info.value.detail}


def test_missing_type_names_the_field() -> None:
    with pytest.raises(EventError) as info:
        decode_line('{"timestamp": 1}')
    expect_error(info, "invalid_field", "type")


def test_process_refuses_a_non_event(backend_engine: EngineFactory) -> None:
    with pytest.raises(EventError) as info:
        engine(backend_engine).process({"type": "order"})  # type: ignore[arg-type]
    expect_error(info, "unknown_type", "type")


@pytest.mark.parametrize(
    "obj",
    [
        {**ORDER, "volume": 2**31 - 1},
        {**ORDER, "oid": 2**64 - 1, "direction": "ASK", "price": 100},
        {**ORDER, "timestamp": 0},
        {**ORDER, "timestamp": 2**63 - 1},
        {**ORDER, "note": "extra fields are ignored", "account_id": "A" * 200},
        {**TRADE_WITH_IDS, "tid": 2**64 - 1, "oid": 0, "volume": 1},
        {"type": "tick", "timestamp": 0},
        {"type": "reset_daily", "timestamp": 2**63 - 1},
    ],
    ids=["volume-max", "oid-max", "ts-0", "ts-max", "extra", "tid-max", "tick", "reset"],
)
def test_edges_that_are_valid(obj: dict[str, Any], backend_engine: EngineFactory) -> None:
    event = decode_line(json.dumps(obj))
    assert isinstance(event, Order | Trade | Tick | ResetDaily)
    engine(backend_engine).process(event)


def test_ids_near_2_64_stay_exact(backend_engine: EngineFactory) -> None:
    # As doubles, 2**64 - 1 and 2**64 - 2 are the same number; as ids they must not be.
    big, bigger = 2**64 - 2, 2**64 - 1
    e = backend_engine({"type": "AccountVolumeLimitRule", "daily_cap": 10, "dimensions": ["account", "contract"]})
    lines = [
        json.dumps({**ORDER, "oid": bigger, "account_id": "A", "timestamp": T0}),
        json.dumps({**ORDER, "oid": big, "account_id": "B", "contract_id": "C2", "timestamp": T0 + 1}),
        json.dumps({"type": "trade", "tid": bigger, "oid": big, "price": 1.0, "volume": 11, "timestamp": T0 + 2}),
        json.dumps({"type": "trade", "tid": big, "oid": bigger, "price": 1.0, "volume": 11, "timestamp": T0 + 3}),
    ]
    decoded = [decode_line(line) for line in lines]
    assert [getattr(ev, "oid", None) for ev in decoded] == [bigger, big, big, bigger]
    out = [a.scope for ev in decoded for a in e.process(ev)]
    assert out == [{"account": "B", "contract": "C2"}, {"account": "A", "contract": "C1"}]


def test_stream_dead_letters_and_goes_on(backend_engine: EngineFactory) -> None:
    events = [
        {**ORDER, "timestamp": T0},
        {**ORDER, "oid": 2, "volume": 0},
        {"type": "cancel"},
        "not an object",
        {**ORDER, "oid": 3, "timestamp": T0 + 1},
    ]
    got = views(replay_events(fresh(backend_engine), events))
    assert got == [
        {"error": "invalid_field", "field": "volume", "index": 1},
        {"error": "unknown_type", "field": "type", "index": 2},
        {"error": "invalid_json", "field": "", "index": 3},
        {
            "type": "PAUSE_ORDER",
            "rule": "OrderRateLimitRule",
            "scope": {"account": "A"},
            "timestamp": T0 + 1,
            "value": 2,
            "limit": 1,
        },
    ]


def test_decode_event_and_wire_agree() -> None:
    obj = {**ORDER, "oid": 2**63}
    assert decode_event(obj) == decode_line(json.dumps(obj))
