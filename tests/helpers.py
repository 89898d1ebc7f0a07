"""Small builders shared by the test modules: events, engines, instants and action views."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from cluster_risk import Action, Order, RiskEngine, Trade, build_config

MS = 1_000_000
S = 1_000_000_000
DAY = 86_400 * S

# Conformance keys: the only ones compared (SEMANTICS.md / conformance README).
KEYS = ("type", "rule", "scope", "timestamp", "value", "limit", "error", "field", "index")

SHANGHAI_NIGHT = {"timezone": "Asia/Shanghai", "start": "21:00"}


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, tz: str = "UTC") -> int:
    """The instant (ns since the epoch) of a local wall-clock time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(tz)).timestamp()) * S


# A quiet base instant, aligned to whole seconds: 2023-03-01 00:00:00 UTC.
T0 = at(2023, 3, 1)
assert datetime.fromtimestamp(T0 // S, UTC).hour == 0


def order(
    oid: int,
    t: int,
    account: str = "A",
    contract: str = "C1",
    *,
    volume: int = 1,
    price: float = 100.0,
    direction: str = "BID",
) -> Order:
    return Order(oid, account, contract, direction, price, volume, t)


def trade(
    tid: int,
    t: int,
    volume: int = 1,
    *,
    oid: int | None = None,
    account: str | None = "A",
    contract: str | None = "C1",
    price: float = 100.0,
) -> Trade:
    """A trade; by default it names its account and contract (no order needed), oid = tid."""
    return Trade(tid, tid if oid is None else oid, price, volume, t, account, contract)


def make_engine(*rules: dict[str, Any], **config: Any) -> RiskEngine:
    """An engine from rule specs plus top-level config keys (through build_config)."""
    return RiskEngine.from_config(build_config({"rules": list(rules), **config}))


def view(action: Action | dict[str, Any]) -> dict[str, Any]:
    """The conformance keys of an action (or of an output record)."""
    record = action.to_dict() if isinstance(action, Action) else action
    return {key: record[key] for key in KEYS if key in record}


def views(actions: Iterable[Action | dict[str, Any]]) -> list[dict[str, Any]]:
    return [view(a) for a in actions]


def act(kind: str, rule: str, scope: dict[str, str], timestamp: int, value: float, limit: float) -> dict[str, Any]:
    """An expected action in the conformance form; ``kind`` is PAUSE, RESUME or REJECT."""
    return {
        "type": f"{kind}_ORDER",
        "rule": rule,
        "scope": scope,
        "timestamp": timestamp,
        "value": value,
        "limit": limit,
    }


def kinds(actions: Iterable[Action]) -> list[str]:
    return [a.type.value for a in actions]
