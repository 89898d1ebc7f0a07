"""JSON Lines wire format of the contract: one JSON object per line, ``type`` first.

Every decoder is here: :func:`decode_line` (one line), :func:`decode_event` (one parsed
object) and :func:`decode_entries` (a worker's batch of stream entries, with a fast path that
gives the same answers).

``decode_event`` checks presence and JSON types of every field and builds the event; the
engine's own checks (:func:`cluster_risk.events.check_order`) then apply the ranges, so one
set of rules decides for wire input and API input alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from json import scanner as _json_scanner
from typing import Any

from cluster_risk.errors import INTERNAL_ERROR, INVALID_JSON, UNKNOWN_TYPE, EventError, invalid
from cluster_risk.events import (
    Action,
    Event,
    Order,
    ResetDaily,
    Tick,
    Trade,
    check_order,
    check_timestamp,
    check_trade,
    order_ok,
    trade_ok,
)

__all__ = ["decode_entries", "decode_event", "decode_line", "encode_action", "encode_event"]

# Not in the contract: a reset of one account's daily sums and daily pauses, written by
# `cluster-risk reset-daily --account` into that account's shard stream.  A `reset_daily`
# carrying an `account_id` stays a full reset (unknown fields are ignored, SEMANTICS.md).
RESET_ACCOUNT = "reset_account"

_ORDER_FIELDS = ("oid", "account_id", "contract_id", "direction", "price", "volume", "timestamp")
_TRADE_FIELDS = ("tid", "oid", "price", "volume", "timestamp")


def _required(obj: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    values = []
    for name in names:
        if name not in obj or obj[name] is None:
            raise invalid(name, "is required")
        values.append(obj[name])
    return values


def decode_event(obj: object) -> Event:
    """Build a validated event from a decoded JSON value; raise :class:`EventError`."""
    if not isinstance(obj, dict):
        raise EventError(INVALID_JSON, "", "an event must be a JSON object")
    kind = obj.get("type")
    if kind is None:
        raise invalid("type", "is required")
    if kind == "order":
        order = Order(*_required(obj, _ORDER_FIELDS))
        check_order(order)
        return order
    if kind == "trade":
        tid, oid, price, volume, timestamp = _required(obj, _TRADE_FIELDS)
        trade = Trade(tid, oid, price, volume, timestamp, obj.get("account_id"), obj.get("contract_id"))
        check_trade(trade)
        return trade
    if kind == "tick":
        return Tick(check_timestamp(obj.get("timestamp")))
    if kind == "reset_daily":
        return ResetDaily(check_timestamp(obj.get("timestamp")))
    if kind == RESET_ACCOUNT:  # ops extension (cluster-risk reset-daily --account)
        timestamp = check_timestamp(obj.get("timestamp"))
        account = obj.get("account_id")
        if not isinstance(account, str) or not account:
            raise invalid("account_id", "must be a non-empty string")
        return ResetDaily(timestamp, account)
    raise EventError(UNKNOWN_TYPE, "type", f"unknown event type {kind!r}")


def decode_line(line: str | bytes) -> Event:
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise EventError(INVALID_JSON, "", f"not JSON: {exc}") from None
    except RecursionError:
        raise EventError(INVALID_JSON, "", "not JSON: nested too deeply") from None
    return decode_event(obj)


def encode_event(event: Event) -> dict[str, Any]:
    """The wire object of an event (``type`` first)."""
    if isinstance(event, Order):
        direction = getattr(event.direction, "value", event.direction)
        return {
            "type": "order",
            "oid": event.oid,
            "account_id": event.account_id,
            "contract_id": event.contract_id,
            "direction": direction,
            "price": event.price,
            "volume": event.volume,
            "timestamp": event.timestamp,
        }
    if isinstance(event, Trade):
        out: dict[str, Any] = {
            "type": "trade",
            "tid": event.tid,
            "oid": event.oid,
            "price": event.price,
            "volume": event.volume,
            "timestamp": event.timestamp,
        }
        if event.account_id is not None:
            out["account_id"] = event.account_id
        if event.contract_id is not None:
            out["contract_id"] = event.contract_id
        return out
    if isinstance(event, Tick):
        return {"type": "tick", "timestamp": event.timestamp}
    if event.account_id is not None:
        return {"type": RESET_ACCOUNT, "timestamp": event.timestamp, "account_id": event.account_id}
    return {"type": "reset_daily", "timestamp": event.timestamp}


def encode_action(action: Action) -> str:
    return json.dumps(action.to_dict(), separators=(",", ":"))


# A worker's batch of stream entries: the same answers as decode_line, entry by entry, faster.
_scan: Callable[[str, int], tuple[Any, int]] = _json_scanner.c_make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
_NONE = object()


def _decode_fast(obj: Any) -> Event:
    """decode_event, with a fast path for a valid order or trade (same result)."""
    if type(obj) is dict:
        kind = obj.get("type")
        try:
            if kind == "order":
                o = Order(
                    obj["oid"],
                    obj["account_id"],
                    obj["contract_id"],
                    obj["direction"],
                    obj["price"],
                    obj["volume"],
                    obj["timestamp"],
                )
                if order_ok(o):
                    return o
            elif kind == "trade":
                get = obj.get
                e = Trade(
                    obj["tid"],
                    obj["oid"],
                    obj["price"],
                    obj["volume"],
                    obj["timestamp"],
                    get("account_id"),
                    get("contract_id"),
                )
                if trade_ok(e):
                    return e
        except KeyError:
            pass
    return decode_event(obj)


def decode_entries(raws: Sequence[bytes]) -> list[Event | EventError]:
    """``decode_line`` of each raw entry (the event or its error), fast: an ASCII batch is
    joined and scanned value by value with json's C scanner; a value is taken only if it
    spans exactly its entry (anything else - whitespace around it, a broken entry - goes
    through ``decode_line`` alone, for the exact answer)."""
    joined = b"\n".join(raws)  # a newline cannot occur inside a JSON string: values stay apart
    text_all = joined.decode("ascii") if joined.isascii() else None
    out: list[Event | EventError] = []
    pos = 0
    for raw in raws:
        obj: Any = _NONE
        if text_all is not None:
            n = len(raw)
            try:
                obj, end = _scan(text_all, pos)
                if end != pos + n:
                    obj = _NONE
            except (StopIteration, ValueError, RecursionError):
                obj = _NONE
            pos += n + 1
        try:
            out.append(decode_line(raw) if obj is _NONE else _decode_fast(obj))
        except EventError as exc:
            out.append(exc)
        except Exception as exc:  # a decoder bug: this entry's dead letter, not the worker's end
            out.append(EventError(INTERNAL_ERROR, "", f"{type(exc).__name__}: {exc}"[:500]))
    return out
