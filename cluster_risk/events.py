"""Events in (orders, trades, ticks, resets) and actions out.

Slots dataclasses: these sit on the hot path.  Construction does not validate (a gateway
building millions of orders should not pay twice); the engine validates every event it is
given with :func:`check_order` / :func:`check_trade` before any state changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cluster_risk.errors import invalid

__all__ = [
    "Direction",
    "ActionType",
    "Order",
    "Trade",
    "Tick",
    "ResetDaily",
    "Event",
    "Action",
    "check_order",
    "check_trade",
    "check_timestamp",
    "order_ok",
    "trade_ok",
]

MAX_ID = 1 << 64  # oid / tid in [0, 2**64)
MAX_VOLUME = 1 << 31  # volume in [1, 2**31)
MAX_TIMESTAMP = 1 << 63  # ns in [0, 2**63)
MAX_INT_PRICE = 1 << 53  # an integer price must be exact as a double


class Direction(StrEnum):
    BID = "BID"
    ASK = "ASK"


class ActionType(StrEnum):
    """What a gateway must do.  PAUSE/RESUME come from the built-in rules; the others are
    available to user rules (the action set is open)."""

    PAUSE_ORDER = "PAUSE_ORDER"
    RESUME_ORDER = "RESUME_ORDER"
    REJECT_ORDER = "REJECT_ORDER"
    ALERT = "ALERT"


@dataclass(slots=True)
class Order:
    oid: int
    account_id: str
    contract_id: str
    direction: Direction | str
    price: float
    volume: int
    timestamp: int


@dataclass(slots=True)
class Trade:
    tid: int
    oid: int
    price: float
    volume: int
    timestamp: int
    account_id: str | None = None
    contract_id: str | None = None


@dataclass(slots=True)
class Tick:
    """Time-driven resume checks at ``timestamp`` (``engine.tick``)."""

    timestamp: int


@dataclass(slots=True)
class ResetDaily:
    """Manual daily reset at ``timestamp`` (``engine.reset_daily``).  With ``account_id``
    (an ops extension, not in the contract; wire type ``reset_account``): only that
    account's daily sums and daily pauses (``engine.reset_daily(t, account=...)``)."""

    timestamp: int
    account_id: str | None = None


Event = Order | Trade | Tick | ResetDaily


@dataclass(slots=True)
class Action:
    """A decision for the gateways: ``scope`` maps the rule's dimensions to values."""

    type: ActionType
    rule: str
    scope: dict[str, str]
    timestamp: int
    value: float
    limit: float
    reason: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (conformance keys first, then ``reason``)."""
        return {
            "type": self.type.value,
            "rule": self.rule,
            "scope": dict(self.scope),
            "timestamp": self.timestamp,
            "value": self.value,
            "limit": self.limit,
            "reason": self.reason,
        }


_DIRECTIONS = frozenset(("BID", "ASK"))
_BID, _ASK = Direction.BID, Direction.ASK


def check_timestamp(value: object, name: str = "timestamp") -> int:
    # type(...) is int, not isinstance: bool is an int subclass and is refused on purpose.
    if type(value) is not int or not 0 <= value < MAX_TIMESTAMP:
        raise invalid(name, "must be an integer number of ns in [0, 2**63)")
    return value


def _check_id(value: object, name: str) -> None:
    if type(value) is not int or not 0 <= value < MAX_ID:
        raise invalid(name, "must be an integer in [0, 2**64)")


def _check_text(value: object, name: str) -> None:
    if type(value) is not str or not value:
        raise invalid(name, "must be a non-empty string")


def _check_price(value: object) -> None:
    # Integers beyond 2**53 would lose precision in a double (and in Lua): refused.
    if not (
        (type(value) is float and math.isfinite(value))
        or (type(value) is int and -MAX_INT_PRICE < value < MAX_INT_PRICE)
    ):
        raise invalid("price", "must be a finite number (an integer price within +-2**53)")


def _check_volume(value: object) -> None:
    if type(value) is not int or not 0 < value < MAX_VOLUME:
        raise invalid("volume", "must be an integer in [1, 2**31)")


def _amounts_ok(price: object, volume: object, t: object) -> bool:
    """Price (a finite float, or an int within +-2**53), volume and timestamp, as check_order
    and check_trade see them."""
    return (
        (type(price) is float or (type(price) is int and -MAX_INT_PRICE < price < MAX_INT_PRICE))
        and price - price == 0.0  # finite: inf - inf and nan - nan are nan
        and type(volume) is int
        and 0 < volume < MAX_VOLUME
        and type(t) is int
        and 0 <= t < MAX_TIMESTAMP
    )


def order_ok(order: Order) -> bool:
    """check_order's rules as one expression, for hot paths: True means check_order passes;
    False means call check_order, which decides (and names the bad field)."""
    oid, account_id, contract_id, direction = order.oid, order.account_id, order.contract_id, order.direction
    return (
        type(oid) is int
        and 0 <= oid < MAX_ID
        and type(account_id) is str
        and account_id != ""
        and type(contract_id) is str
        and contract_id != ""
        and (direction is _BID or direction is _ASK or (type(direction) is str and direction in _DIRECTIONS))
        and _amounts_ok(order.price, order.volume, order.timestamp)
    )


def trade_ok(trade: Trade) -> bool:
    """check_trade's rules as one expression (as order_ok for check_order)."""
    tid, oid, account_id, contract_id = trade.tid, trade.oid, trade.account_id, trade.contract_id
    return (
        type(tid) is int
        and 0 <= tid < MAX_ID
        and type(oid) is int
        and 0 <= oid < MAX_ID
        and _amounts_ok(trade.price, trade.volume, trade.timestamp)
        and (account_id is None or (type(account_id) is str and account_id != ""))
        and (contract_id is None or (type(contract_id) is str and contract_id != ""))
    )


def check_order(order: Order) -> None:
    """Raise :class:`EventError` naming the first bad field (fields in wire order)."""
    _check_id(order.oid, "oid")
    _check_text(order.account_id, "account_id")
    _check_text(order.contract_id, "contract_id")
    if not isinstance(order.direction, str) or order.direction not in _DIRECTIONS:
        raise invalid("direction", 'must be "BID" or "ASK"')
    _check_price(order.price)
    _check_volume(order.volume)
    check_timestamp(order.timestamp)


def check_trade(trade: Trade) -> None:
    """Raise :class:`EventError` naming the first bad field (fields in wire order)."""
    _check_id(trade.tid, "tid")
    _check_id(trade.oid, "oid")
    _check_price(trade.price)
    _check_volume(trade.volume)
    check_timestamp(trade.timestamp)
    if trade.account_id is not None:
        _check_text(trade.account_id, "account_id")
    if trade.contract_id is not None:
        _check_text(trade.contract_id, "contract_id")
