"""Hypothesis fuzz of everything that turns wire bytes into events (issue 15, "Poison never
spreads"): the JSON Lines decoder, the worker's stream-entry decoder and field reader, and the
in-process engine behind them.  Arbitrary strings (control characters, lone surrogates, braces,
long) and numbers (huge, negative, floats, bools, NaN/Infinity) must give an event or a typed
:class:`EventError` - never another exception - the same answer in every decoder, and output
that is valid JSON.  Bounded ``max_examples`` so CI stays fast; the Redis-backed twin is
tests/redis/test_fuzz_redis.py."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cluster_risk import RiskEngine, build_config
from cluster_risk.cluster.worker import _fields
from cluster_risk.errors import EventError
from cluster_risk.events import Event
from cluster_risk.replay import replay_lines
from cluster_risk.wire import decode_entries, decode_line
from tests.helpers import DAY, T0

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ids: anything a JSON string can hold, weighted towards what breaks separators and encoders
HOSTILE_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from(["\x00", "\x1f", "\n", ":", "%", "{", "}", "\ud800", "\udfff", "a", "é", "😀"])),
    st.sampled_from(["\ud800", "VICTIM\x1fX17", "{s1}", "%1F", "x" * 70_000, "", " "]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    HOSTILE_TEXT,
)
SMALL_ACCOUNTS = st.sampled_from(["A", "\ud800", "A\x1fB", "{s0}", "%:"])


def _value(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field: mostly a plausible value, sometimes anything at all."""
    return st.one_of(good, good, good, NUMBERS)


def _event() -> st.SearchStrategy[dict[str, Any]]:
    ts = _value(st.integers(min_value=T0, max_value=T0 + 3 * DAY))
    order = st.fixed_dictionaries(
        {
            "type": st.just("order"),
            "oid": _value(st.integers(0, 20)),
            "account_id": _value(st.one_of(SMALL_ACCOUNTS, HOSTILE_TEXT)),
            "contract_id": _value(st.one_of(st.sampled_from(["C", "\x1f"]), HOSTILE_TEXT)),
            "direction": _value(st.sampled_from(["BID", "ASK"])),
            "price": _value(st.one_of(st.floats(-1e308, 1e308), st.integers(-(2**53), 2**53))),
            "volume": _value(st.integers(1, 2**31 - 1)),
            "timestamp": ts,
        }
    )
    trade = st.fixed_dictionaries(
        {
            "type": st.just("trade"),
            "tid": _value(st.integers(0, 20)),
            "oid": _value(st.integers(0, 20)),
            "price": _value(st.one_of(st.floats(-1e308, 1e308), st.integers(-(2**53), 2**53))),
            "volume": _value(st.integers(1, 2**31 - 1)),
            "timestamp": ts,
        },
        optional={"account_id": _value(SMALL_ACCOUNTS), "contract_id": _value(st.just("C"))},
    )
    clock = st.fixed_dictionaries({"type": st.sampled_from(["tick", "reset_daily"]), "timestamp": ts})
    other = st.dictionaries(HOSTILE_TEXT, NUMBERS, max_size=4)
    return st.one_of(order, order, trade, trade, clock, other)


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj)  # Python writes NaN/Infinity and \ud800 escapes: both must be handled


def _outcome(decode: Any, raw: Any) -> Event | tuple[str, str]:
    try:
        event: Event = decode(raw)
        return event
    except EventError as exc:
        return (exc.code, exc.field)


def _same(a: Any, b: Any) -> bool:
    """Events compare by value; NaN never reaches an event (refused), so == is exact."""
    return bool(a == b)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_the_line_decoder_takes_any_bytes(raw: bytes | str) -> None:
    _outcome(decode_line, raw)  # an event or an EventError, nothing else


@FUZZ
@given(st.lists(_event(), max_size=12))
def test_the_worker_decoder_agrees_with_the_line_decoder(objs: list[dict[str, Any]]) -> None:
    raws = [_line(o).encode("utf-8", "surrogatepass") for o in objs]
    raws += [b"", b"{", b" {}", b"[" * 5000, b"\xff\xfe", b'{"type":"tick","timestamp":1}\n']
    got = decode_entries(raws)
    assert len(got) == len(raws)
    for raw, outcome in zip(raws, got, strict=True):
        want = _outcome(decode_line, raw)
        have = (outcome.code, outcome.field) if isinstance(outcome, EventError) else outcome
        assert _same(have, want), (raw[:200], have, want)


@FUZZ
@given(
    st.lists(
        st.one_of(st.binary(max_size=20), HOSTILE_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))), max_size=6
    )
)
@example([b"", b"\x80", b"", b""])  # a line index that is not UTF-8 stopped the worker
def test_the_worker_reads_any_field_list(fields: list[bytes]) -> None:
    event, index = _fields(fields)
    assert isinstance(event, bytes) and isinstance(index, str)
    if len(fields) == 4:
        event, index = _fields([b"e", fields[0], b"i", fields[1]])
        assert event == fields[0] and isinstance(index, str)


@FUZZ
@given(st.lists(_event(), min_size=1, max_size=25))
@example(
    [
        {
            "type": "trade",
            "tid": 1,
            "oid": 1,
            "price": 1e308,
            "volume": 100,
            "timestamp": T0,
            "account_id": "A",
            "contract_id": "C",
        }
    ]
)
def test_the_engine_takes_any_stream_and_writes_valid_json(objs: list[dict[str, Any]]) -> None:
    config = build_config(
        {
            "contract_to_product": {"C": "\ud800", "\x1f": "P"},
            "rules": [
                {"type": "OrderRateLimitRule", "threshold": 2, "window_ns": 1 << 20, "bucket_ns": 1 << 10},
                {"type": "AccountVolumeLimitRule", "daily_cap": 5, "dimensions": ["account", "product"]},
                {"type": "AccountVolumeLimitRule", "name": "n", "metric": "notional", "daily_cap": 1 << 53},
            ],
        }
    )
    engine = RiskEngine.from_config(config)
    for record in replay_lines(engine, [_line(o) for o in objs]):
        text = json.dumps(record, allow_nan=False)  # no Infinity, no NaN
        assert json.loads(text) == record
        value = record.get("value")
        assert value is None or (isinstance(value, int | float) and math.isfinite(value))
