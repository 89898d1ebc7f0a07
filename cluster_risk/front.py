"""The front half every executor shares: compiled rules, enrichment, the trading-day memo,
reason texts and action building (SEMANTICS.md).

An *executor* keeps the state and applies the state primitives: the in-process engine
(:mod:`cluster_risk.engine`, state in this process) and the Redis engine
(:mod:`cluster_risk.remote`, state in Redis, applied by ``lua/apply.lua``; a cluster worker's
``lua/emit.lua`` renders the same actions from the texts :mod:`cluster_risk.cluster.render`
takes from here).  What an event means - which rules it concerns and how, which account and
contract a trade belongs to, what an action says - is decided here once.

Result codes and the rule-independent reason texts are in :mod:`cluster_risk.state.codes`
(shared with Lua).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any, Protocol, TypeVar

from cluster_risk.errors import UNKNOWN_ORDER, ConfigError, EventError
from cluster_risk.events import MAX_TIMESTAMP, Action, ActionType, Event, Order, Trade
from cluster_risk.rules.base import BaseRule, DailyCapRule, Scope, StatelessRule, Verdict, WindowRule
from cluster_risk.state.codes import PAUSE, RESET_REASON, RESET_RESUME, ROLLOVER, ROLLOVER_REASON

__all__ = [
    "Engine",
    "WINDOW",
    "DAILY",
    "STATELESS",
    "CompiledRule",
    "DayMemo",
    "compile_rules",
    "rule_action",
    "verdict_action",
    "rule_and_key",
    "enriched_ids",
    "unknown_order",
]

WINDOW, DAILY, STATELESS = 0, 1, 2  # CompiledRule.kind

_PAUSE_ORDER, _RESUME_ORDER = ActionType.PAUSE_ORDER, ActionType.RESUME_ORDER


class Engine(Protocol):
    """What every executor offers (open one with :func:`cluster_risk.engines.open_engine`):
    the in-process :class:`~cluster_risk.engine.RiskEngine` and the Redis-backed
    :class:`~cluster_risk.remote.RemoteEngine` decide the same actions for the same events.
    Inspection reads the state where the executor keeps it."""

    rules: tuple[BaseRule, ...]

    def process(self, event: Event) -> list[Action]: ...

    def process_order(self, order: Order) -> list[Action]: ...

    def process_trade(self, trade: Trade) -> list[Action]: ...

    def tick(self, now_ns: int | None = None) -> list[Action]: ...

    def reset_daily(self, now_ns: int | None = None, account: str | None = None) -> list[Action]: ...

    def process_many(self, events: Iterable[Event]) -> list[Action]: ...

    def apply_batch(self, events: Sequence[Event]) -> list[list[Action] | EventError]: ...

    def process_batch(self, events: Sequence[Event]) -> list[Action]: ...

    def paused_scopes(self) -> list[tuple[str, dict[str, str]]]: ...

    def window_count(self, rule: str, scope: Mapping[str, str]) -> int: ...

    def daily_sum(self, rule: str, scope: Mapping[str, str], day: date | None = None) -> float: ...

    def memory_entries(self) -> dict[str, int]: ...


class CompiledRule:
    """A configured rule as the executors see it: its kind, which hooks it overrides (built-in
    behaviour needs no call per event; an override does), its limit and its reason texts.

    Reason texts are ``prefix + value + suffix``: ``pause_text`` for a pause (window or daily),
    ``resume_text`` for a window's resume."""

    __slots__ = (
        "counts_every_order",
        "dimensions",
        "index",
        "judges_orders",
        "judges_trades",
        "kind",
        "limit",
        "name",
        "on_orders",
        "overrides_order_amount",
        "pause_text",
        "resume_text",
        "rule",
    )

    def __init__(self, index: int, rule: BaseRule) -> None:
        self.index = index  # position in the configuration (actions of one event come in this order)
        self.rule = rule
        self.name = rule.name
        self.dimensions: tuple[str, ...] = tuple(rule.dimensions)
        cls = type(rule)
        self.pause_text = self.resume_text = ("", "")
        self.limit: float = 0
        if isinstance(rule, WindowRule):
            self.kind = WINDOW
            self.limit = rule.threshold
            window = f" orders in {rule.window_ns} ns"
            self.pause_text = ("", f"{window} > threshold {rule.threshold}")
            self.resume_text = ("", f"{window} <= resume threshold {rule.resume_threshold}")
        elif isinstance(rule, DailyCapRule):
            self.kind = DAILY
            self.limit = rule.daily_cap
            self.pause_text = (f"daily {getattr(rule, 'metric', 'sum')} ", f" > cap {rule.daily_cap}")
        elif isinstance(rule, StatelessRule):
            self.kind = STATELESS
        else:
            raise ConfigError(f"rule {rule.name!r}: subclass StatelessRule, WindowRule or DailyCapRule")
        self.counts_every_order = getattr(cls, "counts_order", None) is WindowRule.counts_order
        self.overrides_order_amount = (
            getattr(cls, "order_amount", DailyCapRule.order_amount) is not DailyCapRule.order_amount
        )
        self.judges_orders = (
            getattr(cls, "evaluate_order", StatelessRule.evaluate_order) is not StatelessRule.evaluate_order
        )
        self.judges_trades = (
            getattr(cls, "evaluate_trade", StatelessRule.evaluate_trade) is not StatelessRule.evaluate_trade
        )
        self.on_orders = self.kind == WINDOW or self.overrides_order_amount or self.judges_orders

    @property
    def by_account(self) -> bool:
        """Whether the rule's group is the account's own."""
        return self.dimensions == ("account",)

    def scope_of(self, key: Sequence[str]) -> dict[str, str]:
        """The action scope of a group key (its values, in the rule's dimension order)."""
        return dict(zip(self.dimensions, key, strict=True))


C = TypeVar("C", bound=CompiledRule)


def compile_rules(rules: Sequence[BaseRule], compiled: type[C]) -> list[C]:
    """Each rule compiled (``compiled``: :class:`CompiledRule` or an executor's subclass of
    it), in configuration order; rule names must be unique."""
    names = [rule.name for rule in rules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
    return [compiled(i, rule) for i, rule in enumerate(rules)]


def rule_action(rule: CompiledRule, code: int, scope: dict[str, str], t: int, value: Any, day: int = 0) -> Action:
    """A stateful rule's action for a result code (:mod:`cluster_risk.state.codes`): PAUSE,
    a window's RESUME / TICK_RESUME, a daily ROLLOVER (``day``: the new trading day's ordinal;
    ``t`` its start) or RESET_RESUME."""
    if code == PAUSE:
        prefix, suffix = rule.pause_text
        return Action(_PAUSE_ORDER, rule.name, scope, t, value, rule.limit, f"{prefix}{value}{suffix}")
    if code == ROLLOVER:
        reason = f"{ROLLOVER_REASON}{date.fromordinal(day).isoformat()}"
    elif code == RESET_RESUME:
        reason = RESET_REASON
    else:
        prefix, suffix = rule.resume_text
        reason = f"{prefix}{value}{suffix}"
    return Action(_RESUME_ORDER, rule.name, scope, t, value, rule.limit, reason)


def verdict_action(rule: CompiledRule, scope: Scope, verdict: Verdict, t: int) -> Action:
    """A stateless rule's verdict on an event of ``scope``, as an action."""
    values = rule.scope_of(rule.rule.scope_key(scope))
    return Action(verdict.type, rule.name, values, t, verdict.value, verdict.limit, verdict.reason)


def rule_and_key(rules: Iterable[CompiledRule], name: str, scope: Mapping[str, str]) -> tuple[Any, tuple[str, ...]]:
    """The rule named ``name`` and the group key of ``scope`` for it (inspection)."""
    for rule in rules:
        if rule.name == name:
            try:
                return rule, tuple(scope[dim] for dim in rule.dimensions)
            except KeyError as exc:
                raise KeyError(f"rule {name!r} needs scope values for {rule.dimensions}") from exc
    raise KeyError(f"no rule named {name!r}")


def enriched_ids(trade: Trade, indexed: tuple[str, str] | None) -> tuple[str, str]:
    """The trade's (account, contract): its own fields win over its order's (``indexed``,
    from the order index; None when the oid is not there).  Raises ``unknown_order`` when a
    field is missing from both."""
    account, contract = trade.account_id, trade.contract_id
    if indexed is not None:
        account = account or indexed[0]
        contract = contract or indexed[1]
    if account is None or contract is None:
        raise unknown_order(trade)
    return account, contract


def unknown_order(trade: Trade) -> EventError:
    """A trade whose order is not in the index and that lacks its own account or contract."""
    missing = "account_id" if trade.account_id is None else "contract_id"
    return EventError(UNKNOWN_ORDER, "oid", f"oid {trade.oid} was never seen and the trade has no {missing}")


class DayMemo:
    """An account's current trading day, memoised: ``[lo, hi)`` are the instants of day
    ``day`` (an ordinal), clamped to the valid timestamps so that "inside the range" also
    proves "a valid timestamp"; the calendar is consulted only when a time leaves it."""

    __slots__ = ("day", "hi", "lo")

    def __init__(self, day: int = -1) -> None:
        self.day = day
        self.lo = 0
        self.hi = 0

    def set_range(self, day: int, lo: int, hi: int) -> None:
        self.day = day
        self.lo = max(lo, 0)
        self.hi = min(hi, MAX_TIMESTAMP)
