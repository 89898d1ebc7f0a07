"""RiskEngine: validate -> dedupe -> enrich -> trading day -> rules -> actions.

The in-process engine executes the state primitives directly: per (account, contract) it
keeps one :class:`_Context` holding, for each rule, the group that the pair falls in, so the
hot path does two dict look-ups and no tuple building per event.  The oid index points at
these contexts, which is also how a trade is enriched.

Trading days are per account (SEMANTICS.md): ``D_a`` is the latest day among the account's
own events and all ticks and resets.  Each account caches the ``[lo, hi)`` instant range of
its current day, so the calendar is consulted only when a timestamp leaves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from cluster_risk.calendar import TradingCalendar, calendar_for
from cluster_risk.errors import BatchError, ConfigError, EventError
from cluster_risk.events import (
    MAX_ID,
    MAX_INT_PRICE,
    MAX_TIMESTAMP,
    MAX_VOLUME,
    Action,
    Direction,
    Event,
    Order,
    ResetDaily,
    Tick,
    Trade,
    check_order,
    check_timestamp,
    check_trade,
)
from cluster_risk.front import (
    DAILY,
    WINDOW,
    CompiledRule,
    DayMemo,
    compile_rules,
    enriched_ids,
    rule_action,
    rule_and_key,
    verdict_action,
)
from cluster_risk.rules.base import BaseRule, DailyCapRule, Scope, WindowRule
from cluster_risk.state.codes import PAUSE, RESET_RESUME, RESUME, ROLLOVER
from cluster_risk.state.memory import PAUSED, RESUMED, DailySum, IdRetention, SlidingWindow

if TYPE_CHECKING:
    from cluster_risk.config import TradingDay

__all__ = ["RiskEngine"]

_BID, _ASK = Direction.BID, Direction.ASK
_SIDES = frozenset(("BID", "ASK"))
_SMALL = (1 << 30) - 1  # CPython compares ints up to this bound on its fastest path
_NO_DAY = -1


class _RuleSlot(CompiledRule):
    """A compiled rule plus this executor's state for it: its groups and which are paused."""

    __slots__ = ("groups", "paused")

    def __init__(self, index: int, rule: BaseRule) -> None:
        super().__init__(index, rule)
        self.groups: dict[tuple[str, ...], Any] = {}
        self.paused: set[Any] = set()


class _Account(DayMemo):
    __slots__ = ("account_id", "contexts", "daily_paused")

    def __init__(self, account_id: str) -> None:
        super().__init__(_NO_DAY)
        self.account_id = account_id
        self.contexts: dict[str, _Context] = {}
        self.daily_paused: list[tuple[_RuleSlot, DailySum]] = []


_DailyAdd = tuple[Callable[[int, float, bool], int], Callable[..., Any], _RuleSlot, DailySum]


class _Context:
    """Per (account, contract): the groups each rule keeps for this pair."""

    __slots__ = ("account", "daily_adds", "order_steps", "scope", "trade_steps", "window", "window_slot")

    def __init__(self, account: _Account, scope: Scope) -> None:
        self.account = account
        self.scope = scope
        # The first rule on orders when it is a plain window counter: inlined in process_order.
        self.window: SlidingWindow | None = None
        self.window_slot: _RuleSlot = None  # type: ignore[assignment]  # set whenever window is
        # Daily rules on trades: (group.add, rule.trade_amount, slot, group).
        self.daily_adds: tuple[_DailyAdd, ...] = ()
        self.order_steps: tuple[tuple[_RuleSlot, Any], ...] = ()  # the other rules on orders, in order
        self.trade_steps: tuple[tuple[_RuleSlot, Any], ...] = ()  # stateless rules reacting to trades


class RiskEngine:
    """The in-process risk engine (the embedded default; no server).

    ``rules`` run in the given order; actions for one event come in that order.
    """

    def __init__(
        self,
        rules: Sequence[BaseRule],
        contract_to_product: Mapping[str, str] | None = None,
        trading_day: TradingDay | TradingCalendar | None = None,
        *,
        id_retention_days: int = 7,
    ) -> None:
        """With the state in Redis instead: :func:`cluster_risk.engines.open_engine` (the
        same API and the same actions, plus one script call per shard for
        :meth:`process_batch`)."""
        if id_retention_days < 1:
            raise ConfigError("id_retention_days: must be at least 1 (the contract keeps the previous day)")
        self.rules: tuple[BaseRule, ...] = tuple(rules)
        self.contract_to_product: dict[str, str] = dict(contract_to_product or {})
        self.calendar = calendar_for(trading_day)
        self._slots = compile_rules(self.rules, _RuleSlot)
        self._accounts: dict[str, _Account] = {}
        self._contexts: dict[str, dict[str, _Context]] = {}  # account -> contract -> context
        # oid -> context (dedup and trade enrichment) and seen tids, forgotten after
        # id_retention_days trading days so memory stays bounded over days.
        self._orders: dict[int, _Context] = {}
        self._trades: dict[int, None] = {}  # a dict, not a set: IdRetention relies on insertion order
        self._order_retention = IdRetention(self._orders, id_retention_days)
        self._trade_retention = IdRetention(self._trades, id_retention_days)
        self._latest_day = _NO_DAY  # latest trading day of any event (dedup generations, accountless scopes)
        self._clock_day = _NO_DAY  # latest trading day of any tick or reset
        self._floating_paused: list[tuple[_RuleSlot, DailySum]] = []  # daily pauses of scopes without account
        self._handlers: dict[type, Callable[[Any], list[Action]]] = {
            Order: self.process_order,
            Trade: self.process_trade,
            Tick: lambda event: self.tick(event.timestamp),
            ResetDaily: lambda event: self.reset_daily(event.timestamp, event.account_id),
        }

    @classmethod
    def from_config(cls, config: Any) -> RiskEngine:
        """Build from :func:`cluster_risk.config.build_config`'s result (in process; any
        executor: :func:`cluster_risk.engines.open_engine`)."""
        return cls(
            config.rules,
            config.contract_to_product,
            config.trading_day,
            id_retention_days=config.id_retention_days,
        )

    # ------------------------------------------------------------------ events

    def process(self, event: Event) -> list[Action]:
        """Any event: order, trade, tick or reset."""
        try:
            handler = self._handlers[type(event)]
        except KeyError:
            for kind, candidate in self._handlers.items():  # subclasses of the event types
                if isinstance(event, kind):
                    return candidate(event)
            raise EventError("unknown_type", "type", f"not an event: {type(event).__name__}") from None
        return handler(event)

    def process_order(self, order: Order) -> list[Action]:
        oid = order.oid
        t = order.timestamp
        volume = order.volume
        price = order.price
        direction = order.direction
        # One combined test on the hot path; check_order (the definition) names the culprit
        # when it fails.  Cheap by construction: ints compare fastest against bounds below
        # 2**30, so the wide bound is only tried past it; the ids need no test when they name
        # a known context (only checked ids become keys); the timestamp's range is implied by
        # the account's current-day range, which lies inside [0, 2**63).
        # tests/unit/test_fast_validation.py keeps this in step with check_order.
        if not (
            type(oid) is int
            and (0 <= oid <= _SMALL or _SMALL < oid < MAX_ID)
            and type(volume) is int
            and (0 < volume <= _SMALL or _SMALL < volume < MAX_VOLUME)
            and type(t) is int
            and (direction is _BID or direction is _ASK or (type(direction) is str and direction in _SIDES))
            and (type(price) is float or (type(price) is int and -MAX_INT_PRICE < price < MAX_INT_PRICE))
            and price - price == 0.0  # finite: inf - inf and nan - nan are nan
        ):
            check_order(order)
        try:
            ctx: _Context | None = self._contexts[order.account_id][order.contract_id]
            account = ctx.account  # type: ignore[union-attr]
            in_day = account.lo <= t < account.hi
        except (KeyError, TypeError):
            check_order(order)
            ctx = None
            in_day = False
        if not in_day and not 0 <= t < MAX_TIMESTAMP:
            check_order(order)
        if oid in self._orders:
            return []  # a duplicate changes nothing
        if ctx is None:
            ctx = self._context(order.account_id, order.contract_id)
            account = ctx.account
            in_day = account.lo <= t < account.hi
        actions = [] if in_day else self._advance(account, t)[1]
        self._orders[oid] = ctx
        window = ctx.window
        if window is not None:
            # SlidingWindow.hit's in-order fast path, inlined for the first window rule.
            if t >= window.high:
                window.high = t
                times = window.times
                times.append(t)
                if len(times) > window.quiet_len and (code := window.settle()):
                    actions.append(self._window_action(ctx.window_slot, window, code, t))
            elif code := window.hit(t):
                actions.append(self._window_action(ctx.window_slot, window, code, t))
        if ctx.order_steps:
            self._other_order_steps(ctx, order, actions)
        return actions

    def _other_order_steps(self, ctx: _Context, order: Order, actions: list[Action]) -> None:
        """Rules other than plain window counters: user rules with per-order hooks."""
        account = ctx.account
        t = order.timestamp
        day = account.day if account.lo <= t < account.hi else self.calendar.day_of(t)
        for slot, group in ctx.order_steps:
            kind = slot.kind
            if kind == WINDOW:
                if slot.counts_every_order or slot.rule.counts_order(order):  # type: ignore[attr-defined]
                    code = group.hit(t)
                    if code:
                        actions.append(self._window_action(slot, group, code, t))
            elif kind == DAILY:
                amount = slot.rule.order_amount(order)  # type: ignore[attr-defined]
                if amount is not None:
                    self._add_daily(slot, group, account, day, amount, t, actions)
            else:
                verdict = slot.rule.evaluate_order(order, ctx.scope)  # type: ignore[attr-defined]
                if verdict is not None:
                    actions.append(verdict_action(slot, ctx.scope, verdict, t))

    def process_trade(self, trade: Trade) -> list[Action]:
        tid = trade.tid
        oid = trade.oid
        t = trade.timestamp
        volume = trade.volume
        price = trade.price
        account_id = trade.account_id
        contract_id = trade.contract_id
        # As in process_order: one combined test, check_trade names the culprit; the
        # timestamp's range is implied by the account's current-day range.
        if not (
            type(tid) is int
            and (0 <= tid <= _SMALL or _SMALL < tid < MAX_ID)
            and type(oid) is int
            and (0 <= oid <= _SMALL or _SMALL < oid < MAX_ID)
            and type(volume) is int
            and (0 < volume <= _SMALL or _SMALL < volume < MAX_VOLUME)
            and type(t) is int
            and (type(price) is float or (type(price) is int and -MAX_INT_PRICE < price < MAX_INT_PRICE))
            and price - price == 0.0
            and account_id is None
            and contract_id is None
        ):
            check_trade(trade)
        ctx = self._orders.get(oid) if account_id is None and contract_id is None else None
        if ctx is not None:
            account = ctx.account
            in_day = account.lo <= t < account.hi
        else:
            in_day = False
        if not in_day and not 0 <= t < MAX_TIMESTAMP:
            check_trade(trade)
        if tid in self._trades:
            return []  # a duplicate changes nothing
        if ctx is None:
            ctx = self._enrich(trade)  # read-only until here; may raise unknown_order
            account = ctx.account
            in_day = account.lo <= t < account.hi
        if in_day:
            actions: list[Action] = []
            day = account.day
        else:
            day, actions = self._advance(account, t)
        self._trades[tid] = None
        if ctx.daily_adds:
            contract = ctx.scope.contract
            on_account_day = day == account.day
            for add, amount_of, slot, group in ctx.daily_adds:
                amount = amount_of(trade, contract)
                if amount is not None:
                    current = on_account_day if group.account is not None else day == self._latest_day
                    if add(day, amount, current) == PAUSED:
                        actions.append(self._daily_paused(slot, group, account, t))
        if ctx.trade_steps:
            self._judge_trade(ctx, trade, actions)
        return actions

    def _judge_trade(self, ctx: _Context, trade: Trade, actions: list[Action]) -> None:
        """Stateless rules with a trade hook."""
        for slot, _ in ctx.trade_steps:
            verdict = slot.rule.evaluate_trade(trade, ctx.scope)  # type: ignore[attr-defined]
            if verdict is not None:
                actions.append(verdict_action(slot, ctx.scope, verdict, trade.timestamp))

    def tick(self, now_ns: int | None = None) -> list[Action]:
        """Time-driven checks at ``now_ns`` (default: the wall clock): rollover, then resumes."""
        now = time.time_ns() if now_ns is None else check_timestamp(now_ns)
        actions = self._advance_clock(now)
        for slot in self._slots:
            if slot.kind != WINDOW or not slot.paused:
                continue
            for group in sorted(slot.paused, key=_group_key):
                if group.try_resume(now) == RESUMED:
                    slot.paused.discard(group)
                    actions.append(self._window_action(slot, group, RESUMED, now))
        return actions

    def reset_daily(self, now_ns: int | None = None, account: str | None = None) -> list[Action]:
        """Manual daily reset: rollover as a tick would, then zero ``day(now)`` and lift every
        daily pause (RESUME, value 0).  Rate-rule state is untouched.

        ``account`` (an ops extension, not in the contract): only that account.  The reset
        then acts on the account as its own event at ``now`` would (its day moves to
        ``day(now)`` if that is later, with the usual rollover RESUMEs; other accounts and the
        tick clock do not move), then zeroes ``day(now)`` of the scopes that include the
        account and lifts their daily pauses (RESUME, value 0, timestamp ``now``)."""
        now = time.time_ns() if now_ns is None else check_timestamp(now_ns)
        if account is not None:
            return self._reset_account(now, account)
        actions = self._advance_clock(now)
        day = self.calendar.day_of(now)
        for slot in self._slots:
            if slot.kind != DAILY:
                continue
            for group in slot.groups.values():
                group.zero(day)
            for group in sorted(slot.paused, key=_group_key):
                group.paused = False
                actions.append(rule_action(slot, RESET_RESUME, slot.scope_of(group.key), now, 0))
            slot.paused.clear()
        for known in self._accounts.values():
            known.daily_paused.clear()
        self._floating_paused.clear()
        return actions

    def _reset_account(self, now: int, account_id: str) -> list[Action]:
        if not isinstance(account_id, str) or not account_id:
            raise EventError("invalid_field", "account_id", "must be a non-empty string")
        account = self._account(account_id)
        actions = self._advance(account, now)[1]
        day = self.calendar.day_of(now)
        for slot in self._slots:
            if slot.kind != DAILY:
                continue
            for group in slot.groups.values():
                if group.account == account_id:
                    group.zero(day)
            for group in sorted((g for g in slot.paused if g.account == account_id), key=_group_key):
                group.paused = False
                slot.paused.discard(group)
                actions.append(rule_action(slot, RESET_RESUME, slot.scope_of(group.key), now, 0))
        account.daily_paused.clear()
        return actions

    def apply_batch(self, events: Sequence[Event]) -> list[list[Action] | EventError]:
        """Per event, its actions or the error that rejected it (a rejected event changes
        nothing and does not stop the batch).  With a Redis store: one script call per shard."""
        outcomes: list[list[Action] | EventError] = []
        for event in events:
            try:
                outcomes.append(self.process(event))
            except EventError as exc:
                outcomes.append(exc)
        return outcomes

    def process_batch(self, events: Sequence[Event]) -> list[Action]:
        """All actions of ``events`` in event order.  Rejected events do not stop the batch; if
        there were any, :class:`BatchError` is raised afterwards with every error (and index)
        and every action.  In memory this is a loop; with a Redis store one call per shard."""
        return BatchError.collect(self.apply_batch(events))

    def process_many(self, events: Iterable[Event]) -> list[Action]:
        """Convenience: every event in order, all actions concatenated (errors propagate)."""
        out: list[Action] = []
        for event in events:
            out.extend(self.process(event))
        return out

    # ------------------------------------------------------------------ inspection

    def paused_scopes(self) -> list[tuple[str, dict[str, str]]]:
        """Every (rule name, scope) currently paused, in rule order then scope order."""
        return [
            (slot.rule.name, slot.scope_of(group.key))
            for slot in self._slots
            for group in sorted(slot.paused, key=_group_key)
        ]

    def window_count(self, rule: str, scope: Mapping[str, str]) -> int:
        """A window rule's count for ``scope`` at the group's own high-water time."""
        slot, key = self._slot_and_key(rule, scope)
        group = slot.groups.get(key)
        return 0 if group is None else int(group.count())

    def daily_sum(self, rule: str, scope: Mapping[str, str], day: date | None = None) -> float:
        """A daily rule's sum for ``scope`` on ``day`` (default: that scope's current day)."""
        slot, key = self._slot_and_key(rule, scope)
        group = slot.groups.get(key)
        if group is None:
            return 0
        if day is None:
            account = self._accounts.get(scope.get("account", ""))
            current = account.day if account is not None else self._latest_day
            return float(group.sum_on(current))
        return float(group.sum_on(day.toordinal()))

    def memory_entries(self) -> dict[str, int]:
        """Sizes of the structures that grow with traffic (for tests and ops)."""
        return {
            "orders": len(self._orders),
            "trades": len(self._trades),
            "accounts": len(self._accounts),
            "groups": sum(len(slot.groups) for slot in self._slots),
        }

    # ------------------------------------------------------------------ internals

    def _slot_and_key(self, rule: str, scope: Mapping[str, str]) -> tuple[_RuleSlot, tuple[str, ...]]:
        return rule_and_key(self._slots, rule, scope)

    def _context(self, account_id: str, contract: str) -> _Context:
        account = self._accounts.get(account_id) or self._account(account_id)
        return account.contexts.get(contract) or self._new_context(account, contract)

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            account = _Account(account_id)
            if self._clock_day != _NO_DAY:
                self._set_day(account, self._clock_day)
            self._accounts[account_id] = account
            self._contexts[account_id] = account.contexts
        return account

    def _set_day(self, account: _Account, day: int) -> None:
        account.set_range(day, self.calendar.start_of(day), self.calendar.start_of(day + 1))

    def _new_context(self, account: _Account, contract: str) -> _Context:
        scope = Scope(account.account_id, contract, self.contract_to_product.get(contract, contract))
        ctx = _Context(account, scope)
        daily_adds: list[_DailyAdd] = []
        order_steps: list[tuple[_RuleSlot, Any]] = []
        trade_steps: list[tuple[_RuleSlot, Any]] = []
        for slot in self._slots:
            group = self._group(slot, scope)
            if isinstance(group, DailySum):
                daily_adds.append((group.add, slot.rule.trade_amount, slot, group))  # type: ignore[attr-defined]
            if slot.on_orders:
                order_steps.append((slot, group))
            if slot.judges_trades:
                trade_steps.append((slot, group))
        first = order_steps[0][0] if order_steps else None
        if first is not None and first.kind == WINDOW and first.counts_every_order:
            # The first rule on orders is a plain window counter: process_order inlines it.
            ctx.window_slot, ctx.window = order_steps.pop(0)
        ctx.daily_adds = tuple(daily_adds)
        ctx.order_steps = tuple(order_steps)
        ctx.trade_steps = tuple(trade_steps)
        account.contexts[contract] = ctx
        return ctx

    @staticmethod
    def _group(slot: _RuleSlot, scope: Scope) -> SlidingWindow | DailySum | None:
        """The rule's group for ``scope`` (created on first use); None for stateless rules."""
        rule = slot.rule
        key = rule.scope_key(scope)
        group: SlidingWindow | DailySum | None = slot.groups.get(key)
        if group is None:
            if isinstance(rule, WindowRule):
                group = SlidingWindow(key, rule.window_ns, rule.bucket_ns, rule.threshold, rule.resume_threshold)
            elif isinstance(rule, DailyCapRule):
                group = DailySum(key, scope.account if "account" in rule.dimensions else None, rule.daily_cap)
            else:
                return None
            slot.groups[key] = group
        return group

    def _enrich(self, trade: Trade) -> _Context:
        """The trade's (account, contract): explicit fields win over the order index."""
        indexed = self._orders.get(trade.oid)
        if indexed is not None and trade.account_id is None and trade.contract_id is None:
            return indexed
        pair = None if indexed is None else (indexed.account.account_id, indexed.scope.contract)
        return self._context(*enriched_ids(trade, pair))

    def _advance(self, account: _Account, t: int) -> tuple[int, list[Action]]:
        """Slow path: ``t`` is outside the account's current day.  Returns the event's day and
        the rollover actions (empty for a late event)."""
        day, lo, hi = self.calendar.day_range(t)
        if day <= account.day:
            return day, []  # late: an earlier day than the account's current one
        lifted: list[tuple[_RuleSlot, DailySum]] = []
        if day > self._latest_day:
            self._new_latest_day(day, lifted)
        lifted.extend(account.daily_paused)
        account.daily_paused.clear()
        account.set_range(day, lo, hi)
        return day, self._rollover_actions(lifted, day, lo)

    def _new_latest_day(self, day: int, lifted: list[tuple[_RuleSlot, DailySum]]) -> None:
        if self._latest_day != _NO_DAY:
            self._order_retention.new_day(self._latest_day, day)
            self._trade_retention.new_day(self._latest_day, day)
        self._latest_day = day
        lifted.extend(self._floating_paused)
        self._floating_paused.clear()

    def _advance_clock(self, now: int) -> list[Action]:
        """Tick or reset: every account's day moves to at least ``day(now)``."""
        day, lo, _ = self.calendar.day_range(now)
        if day <= self._clock_day:
            return []
        self._clock_day = day
        lifted: list[tuple[_RuleSlot, DailySum]] = []
        if day > self._latest_day:
            self._new_latest_day(day, lifted)
        for account in self._accounts.values():
            if account.day < day:
                lifted.extend(account.daily_paused)
                account.daily_paused.clear()
                self._set_day(account, day)
        return self._rollover_actions(lifted, day, lo)

    def _rollover_actions(self, lifted: list[tuple[_RuleSlot, DailySum]], day: int, start_ns: int) -> list[Action]:
        if not lifted:
            return []
        lifted.sort(key=lambda item: (item[0].index, item[1].key))
        actions = []
        for slot, group in lifted:
            group.paused = False
            slot.paused.discard(group)
            actions.append(rule_action(slot, ROLLOVER, slot.scope_of(group.key), start_ns, group.sum_on(day), day))
        return actions

    def _add_daily(
        self, slot: _RuleSlot, group: DailySum, account: _Account, day: int, amount: float, t: int, out: list[Action]
    ) -> None:
        current = day == (account.day if group.account is not None else self._latest_day)
        if group.add(day, amount, current) == PAUSED:
            out.append(self._daily_paused(slot, group, account, t))

    def _daily_paused(self, slot: _RuleSlot, group: DailySum, account: _Account, t: int) -> Action:
        """Book a new daily pause (so rollover and reset can lift it) and describe it."""
        slot.paused.add(group)
        if group.account is not None:
            account.daily_paused.append((slot, group))
        else:
            self._floating_paused.append((slot, group))
        return rule_action(slot, PAUSE, slot.scope_of(group.key), t, group.total)

    @staticmethod
    def _window_action(slot: _RuleSlot, group: SlidingWindow, code: int, t: int) -> Action:
        if code == PAUSED:
            slot.paused.add(group)
            return rule_action(slot, PAUSE, slot.scope_of(group.key), t, group.count())
        slot.paused.discard(group)
        return rule_action(slot, RESUME, slot.scope_of(group.key), t, group.count_at(t))


def _group_key(group: Any) -> tuple[str, ...]:
    key: tuple[str, ...] = group.key
    return key
