"""The one set of test constants and builders: instants, events, engines and action views.

Every test folder imports these (never its own ``MS``/``T0``/``order``); fixtures that start
servers live in tests/conftest.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, overload
from zoneinfo import ZoneInfo

from cluster_risk import Action, Order, RiskEngine, Trade, build_config
from cluster_risk.engines import open_engine
from cluster_risk.remote import RemoteEngine
from cluster_risk.state.redis import RedisStore

MS = 1_000_000
S = 1_000_000_000
DAY = 86_400 * S

Engine = RiskEngine | RemoteEngine  # the in-process engine, or one whose state is in Redis
EngineFactory = Callable[..., Engine]  # make_engine's arguments (tests/conftest.py: backend_engine)

# Conformance keys: the only ones compared (SEMANTICS.md / conformance README).
KEYS = ("type", "rule", "scope", "timestamp", "value", "limit", "error", "field", "index")

# The shared conformance vectors, case-1.json .. case-24.json, in number order.
CASES_DIR = Path(__file__).parent / "conformance" / "cases"
CASE_FILES = sorted(CASES_DIR.glob("case-*.json"), key=lambda p: int(p.stem.split("-")[1]))

SHANGHAI_NIGHT = {"timezone": "Asia/Shanghai", "start": "21:00"}


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, tz: str = "UTC") -> int:
    """The instant (ns since the epoch) of a local wall-clock time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(tz)).timestamp()) * S


# A quiet base instant, aligned to whole seconds: 2023-03-01 00:00:00 UTC.
T0 = at(2023, 3, 1)
T0_DATE = date(2023, 3, 1)  # T0's date (UTC, and its trading day under the default calendar)
assert datetime.fromtimestamp(T0 // S, UTC).hour == 0 and datetime.fromtimestamp(T0 // S, UTC).date() == T0_DATE


def order(
    oid: int,
    t: int = T0,
    *,
    account: str = "A",
    contract: str = "C1",
    volume: int = 1,
    price: float = 100.0,
    direction: str = "BID",
) -> Order:
    """An order: id and time positional, everything else by keyword."""
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


@overload
def make_engine(*rules: dict[str, Any], store: None = None, **config: Any) -> RiskEngine: ...
@overload
def make_engine(*rules: dict[str, Any], store: RedisStore, **config: Any) -> RemoteEngine: ...
def make_engine(*rules: dict[str, Any], store: RedisStore | None = None, **config: Any) -> Engine:
    """An engine from rule specs plus top-level config keys (through build_config), in process
    or with its state in ``store``.  A whole config dict works too: ``make_engine(**config)``
    (its ``rules`` key instead of positional rules)."""
    if rules and "rules" in config:
        raise TypeError("make_engine: rules both positional and as a config key")
    engine = open_engine(build_config({"rules": list(rules), **config}), store)
    assert isinstance(engine, RiskEngine | RemoteEngine)
    return engine


def state_of(engine: Engine) -> Any:
    """What an engine holds, to compare before and after: the in-process engine's structure
    sizes (``memory_entries``), or every key of a Redis engine's store with its value (DUMP)."""
    if isinstance(engine, RiskEngine):
        return engine.memory_entries()
    store = engine.store
    keys = [key for shard in range(store.num_shards) for key in store.shard_keys(shard)]
    return {key: store.client.dump(key) for key in keys}


def load_case(which: int | Path) -> dict[str, Any]:
    """A conformance vector (config, events, expected), by number or path."""
    path = which if isinstance(which, Path) else CASES_DIR / f"case-{which}.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def lines(events: Iterable[Any]) -> list[str]:
    """Wire lines (json.dumps, ensure_ascii: a lone surrogate is a \\ud800 escape)."""
    return [json.dumps(e) for e in events]


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


def wire_order(oid: int, account: str, contract: str, t: int, volume: int = 1) -> dict[str, Any]:
    """An order as a JSON Lines object (ids of any kind, for the hostile-input tests)."""
    return {
        "type": "order",
        "oid": oid,
        "account_id": account,
        "contract_id": contract,
        "direction": "BID",
        "price": 1,
        "volume": volume,
        "timestamp": t,
    }


def wire_fill(tid: int, oid: int, volume: int, t: int, **ids: str) -> dict[str, Any]:
    """A trade as a JSON Lines object; ``ids``: an explicit account_id / contract_id."""
    return {"type": "trade", "tid": tid, "oid": oid, "price": 1, "volume": volume, "timestamp": t, **ids}
