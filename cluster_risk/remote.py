"""RemoteEngine: the risk engine with its state in Redis, deciding exactly as
:class:`cluster_risk.engine.RiskEngine` does (SEMANTICS.md).

Who does what.  Python validates every event (:func:`check_order`, :func:`check_trade`),
enriches trades, computes each event's trading day with the :class:`TradingCalendar` (Lua has
no time zones), the bucket index ``t // B`` per window rule, each rule's group (scope key) and
amount, and evaluates stateless rules.  It sends one compact plan per shard to ``lua/apply.lua``
(one EVALSHA per shard per batch, pipelined per node), which applies the shard's events in
order - dedup, order index, per-account day and rollover, windows, daily sums, pauses - and
returns records that Python turns into :class:`Action` s in the contract's order.  Rules never
talk to Redis.

Enrichment (a trade without ``account_id`` or ``contract_id``).  The shard is chosen by
account, so Python must know the account before planning.  It takes it from the first valid
order with that oid earlier in the same batch, else from the order index in Redis:
``lua/lookup_ids.lua`` on every shard (read-only, one pipelined round, only for batches
that need it).  An oid found nowhere is ``unknown_order`` without touching Redis.  The index
is read before the batch, so ``apply.lua`` checks again when it reaches the trade: if the
oid left the index meanwhile (id retention passed earlier in the same batch) the script
aborts before writing anything, Python rejects that trade as ``unknown_order`` and resends
the shard's part without it.  (Batch-local orders win over the index: they differ only if an
oid is reused for another account, which the contract leaves unspecified.)

Exactly once.  Every shard call carries a batch number (the shard's high-water mark + 1,
read once per engine) and a digest of its plan, and applies only on top of the previous
number.  A call that redis-py retries after a lost reply finds its number among the last
four applied with the same digest and gets the stored result: nothing is counted twice and
no action is lost.

Throughput.  :meth:`RemoteEngine.process_stream` keeps one batch in flight on a standalone
server: Python plans batch k+1 while Redis applies batch k (on 2 vCPUs about twice the
events/s of :meth:`~RemoteEngine.process_batch`).  Redis's work per batch grows with the
distinct accounts and groups in it (each group's window state is read and written once per
batch), so fewer accounts per batch is cheaper per event.

Ticks and resets go to every shard, so every shard knows the clock day that new accounts
start from.  Per-account semantics make this the same as one engine; one difference remains:
oids/tids are forgotten per shard (a shard's latest day, not the deployment's), which only
shows when days differ by more than ``id_retention_days`` across shards.

Requirements: every rule groups by ``account`` (events are sharded by it), and a window rule's
``bucket_ns`` is at least 1024 (bucket indices must stay below 2**53 to be exact in Lua).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date
from itertools import islice
from typing import TYPE_CHECKING, Any

from cluster_risk.calendar import TradingCalendar, calendar_for
from cluster_risk.errors import UNKNOWN_TYPE, BatchError, ConfigError, EventError, RiskError
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
from cluster_risk.front import (
    DAILY,
    STATELESS,
    WINDOW,
    CompiledRule,
    DayMemo,
    compile_rules,
    enriched_ids,
    rule_action,
    rule_and_key,
    unknown_order,
    verdict_action,
)
from cluster_risk.keys import index_pair, index_value, scope_key, scope_values, to_text
from cluster_risk.rules.base import BaseRule, DailyCapRule, Scope, WindowRule
from cluster_risk.state.codes import DUPLICATE, RESET_RESUME, ROLLOVER, TICK_RESUME
from cluster_risk.state.memory import SATURATED_SUM
from cluster_risk.state.redis import RedisStore, StoreError
from cluster_risk.wire import decode_event, decode_line

if TYPE_CHECKING:
    from cluster_risk.config import TradingDay

__all__ = ["RemoteEngine", "BatchError", "ShardBatch", "ShardSender", "replay_batched", "scope_key", "scope_values"]

Outcome = list[Action] | EventError
KnownIds = tuple[set[str], dict[str, str]]  # index fields asked, and the values found
ShardSender = Callable[[bytes, Sequence[int], Mapping[int, Scope], Sequence[Outcome]], tuple[str, Any]]
_Item = tuple[int, Event, "_Context | None", str]  # (batch index, event, context, oid to verify)

WRONG_SHARD = "wrong_shard"  # a worker's dead letter: the event's account lives on another shard
_MAX_BUCKET = 1 << 53
_DAY_MS = 86_400_000
_ERA = 1 << 22  # _Account.seen: era * _ERA + day (day ordinals stay below 2^22)


class _Rule(CompiledRule):
    """A compiled rule as the script sees it: stateful ones get ``lua``, their index in the
    script's rules (from 1, in config order)."""

    __slots__ = ("bucket_ns", "lua")

    def __init__(self, index: int, rule: BaseRule) -> None:
        super().__init__(index, rule)
        self.lua = 0
        self.bucket_ns = rule.bucket_ns if isinstance(rule, WindowRule) else 0

    def header(self, escaped_name: str) -> list[Any]:
        rule = self.rule
        by_account = 1 if self.by_account else 0
        if isinstance(rule, WindowRule):
            K = rule.window_ns // rule.bucket_ns  # the contract's name
            return ["w", escaped_name, K, rule.threshold, rule.resume_threshold, 1, by_account]
        assert isinstance(rule, DailyCapRule)
        return ["d", escaped_name, rule.daily_cap, 0, 0, 1 if self.overrides_order_amount else 0, by_account]


class _Account(DayMemo):
    __slots__ = ("id", "local", "seen", "shard", "stamp")

    def __init__(self, account_id: str, shard: int) -> None:
        super().__init__(0)  # the trading-day memo
        self.id = account_id
        self.shard = shard
        self.stamp = -1  # plan the account was last entered in, and its index there
        self.local = 0
        # era * _ERA + a day the account had an event on, in a batch of this engine's that
        # applied during that era (RemoteEngine._era), no event of it a duplicate; -1: none
        self.seen = -1


class _Group:
    """One scope key: the group of every stateful rule whose scope gives that key (the plan
    sends it once; the script tells the rules apart), shared by every context that falls in it.
    Like an account, it memoises its index in the plan being built (``stamp``, ``local``),
    so entering a context costs no dict look-up per rule."""

    __slots__ = ("key", "local", "stamp")

    def __init__(self, key: str) -> None:
        self.key = key
        self.stamp = -1
        self.local = 0


class _Context:
    """Per (account, contract): each stateful rule's group (in rule order), and its pair's
    index in the current plan."""

    __slots__ = ("account", "groups", "local_pair", "pair", "paired", "scope", "stamp")

    def __init__(self, account: _Account, scope: Scope, groups: list[_Group], paired: bool) -> None:
        self.account = account
        self.scope = scope
        self.pair = index_value(scope.account, scope.contract)
        self.groups = groups
        self.paired = paired  # False: every rule groups by account, so its pair lists no group
        self.stamp = -1
        self.local_pair = 0


class _Plan:
    """One shard's part of a batch, in the script's format (indices from 1)."""

    __slots__ = (
        "accounts",
        "day",
        "events",
        "groups",
        "hint",
        "members",
        "pairs",
        "positions",
        "runs",
        "t0",
        "unknown",
    )

    def __init__(self, hint: int = -1) -> None:
        self.accounts: list[str] = []
        self.members: list[_Account] = []  # the accounts, as objects
        # apply.lua's hint (RemoteEngine._new_plan): era * _ERA + the hint day (-1: no hint), and
        # the accounts (indices) not known to have had an event on that day
        self.hint = hint
        self.unknown: list[int] = []
        self.pairs: list[Any] = []  # flat: account, index value, then a group per rule
        self.groups: list[str] = []  # scope keys
        self.events: list[Any] = []  # flat
        self.positions: list[int] = []  # batch index of each event
        self.t0 = -1  # event times travel as t - t0 (exact in Lua's doubles)
        self.day = -1  # the trading day of the last order or trade (an entry (5, day) when it changes)
        self.runs = 0  # the (5, day) entries


class _Batch:
    """A batch on its way: its items and plans, the calls sent per shard, and a function
    that waits for the replies."""

    __slots__ = ("calls", "items", "outcomes", "plans", "wait")

    def __init__(
        self,
        items: list[_Item],
        outcomes: list[Outcome],
        plans: dict[int, _Plan],
        calls: dict[int, tuple[int, bytes, str, bytes]],
        wait: Callable[[], dict[int, tuple[str, Any]]],
    ) -> None:
        self.items = items
        self.outcomes = outcomes
        self.plans = plans
        self.calls = calls
        self.wait = wait


class ShardBatch:
    """One shard's part of a batch, planned (:meth:`RemoteEngine.plan_shard`): ``blob`` is
    apply.lua's ARGV[1]; ``outcomes`` holds every rejection found so far."""

    __slots__ = ("blob", "items", "outcomes", "plan", "shard")

    def __init__(self, shard: int, items: list[_Item], outcomes: list[Outcome]) -> None:
        self.shard = shard
        self.items = items
        self.outcomes = outcomes
        self.plan = _Plan()
        self.blob = b""

    @property
    def positions(self) -> list[int]:
        """The batch index of the plan's event k+1, at k."""
        return self.plan.positions

    def scopes(self) -> dict[int, Scope]:
        """Batch index -> the (enriched) scope of each order and trade in the plan."""
        return {item[0]: item[2].scope for item in self.items if item[2] is not None}


class RemoteEngine:
    """The risk engine over a :class:`RedisStore`: same API and results as ``RiskEngine``,
    plus :meth:`process_batch` / :meth:`apply_batch` (one script call per shard)."""

    def __init__(
        self,
        rules: Sequence[BaseRule],
        contract_to_product: Mapping[str, str] | None = None,
        trading_day: TradingDay | TradingCalendar | None = None,
        *,
        store: RedisStore,
        id_retention_days: int = 7,
    ) -> None:
        if id_retention_days < 1:
            raise ConfigError("id_retention_days: must be at least 1 (the contract keeps the previous day)")
        self.rules: tuple[BaseRule, ...] = tuple(rules)
        self.contract_to_product = dict(contract_to_product or {})
        self.calendar = calendar_for(trading_day)
        self.store = store
        self.id_retention_days = id_retention_days
        self._stateful: list[_Rule] = []
        self._stateless: list[_Rule] = []
        for compiled in compile_rules(self.rules, _Rule):
            self._add_rule(compiled)
        self._header = [r.header(scope_key([r.rule.name])) for r in self._stateful]
        self._by_account = all(r.by_account for r in self._stateful)
        self._constants: bytes | None = None  # constants(), encoded on first use (the codec is the server's)
        self._rule_index = {rule.name: i for i, rule in enumerate(self.rules)}
        self._ttl_ms = (store.ttl_s * 1000) if store.ttl_s is not None else (id_retention_days + 1) * _DAY_MS
        self._accounts: dict[str, _Account] = {}
        self._contexts: dict[tuple[str, str], _Context] = {}
        # scope key -> group: rules with the same scope share its plan entry (the script tells
        # them apart by rule), so the seed's two account rules send each account's key once
        self._groups: dict[str, _Group] = {}
        # The rules an order / a trade feeds, in the order the plan lists their values
        # (apply.lua's header); the same for every context.
        self._order_rules = [r for r in self._stateful if r.kind == WINDOW or r.overrides_order_amount]
        self._trade_rules = [r.rule for r in self._stateful if isinstance(r.rule, DailyCapRule)]
        # When the only order rule is a window counting every order (the usual case), an
        # order's one value is its bucket: planned inline, without per-rule dispatch.
        plain = [r.bucket_ns for r in self._order_rules if r.kind == WINDOW and r.counts_every_order]
        self._order_bucket = plain[0] if len(plain) == len(self._order_rules) == 1 else None
        self._next: dict[int, int] | None = None  # per shard: the number of its next batch
        # apply.lua's account hints (_hints): what this engine's applied batches showed, valid
        # within one era; a new era starts whenever the high-water marks are read again
        self._era = 0
        self._latest: dict[int, int] = {}  # per shard: the latest day of those batches
        self._known: KnownIds | None = None  # look-ups done beforehand (plan_shard)
        self._stamp = 0

    def _add_rule(self, compiled: _Rule) -> None:
        i, rule = compiled.index, compiled.rule
        if "account" not in rule.dimensions:
            raise ConfigError(
                f"rules[{i}].dimensions: must include 'account' with a Redis store "
                f"(events are sharded by account); rule {rule.name!r} has {list(rule.dimensions)}"
            )
        if isinstance(rule, WindowRule) and rule.bucket_ns < 1024:
            raise ConfigError(
                f"rules[{i}].bucket_ns: must be at least 1024 with a Redis store "
                f"(bucket indices must be exact in Lua's doubles); got {rule.bucket_ns}"
            )
        if compiled.kind == STATELESS:
            self._stateless.append(compiled)
        else:
            self._stateful.append(compiled)
            compiled.lua = len(self._stateful)

    @classmethod
    def from_config(cls, config: Any, store: RedisStore) -> RemoteEngine:
        """Build from :func:`cluster_risk.config.build_config`'s result."""
        return cls(
            config.rules,
            config.contract_to_product,
            config.trading_day,
            store=store,
            id_retention_days=config.id_retention_days,
        )

    # ------------------------------------------------------------------ the engine API

    def process(self, event: Event) -> list[Action]:
        """Any event: order, trade, tick or reset (one script call)."""
        return _raise(self.apply_batch([event])[0])

    def process_order(self, order: Order) -> list[Action]:
        return self.process(order)

    def process_trade(self, trade: Trade) -> list[Action]:
        return self.process(trade)

    def tick(self, now_ns: int | None = None) -> list[Action]:
        """Time-driven checks at ``now_ns`` (default: the wall clock), on every shard."""
        return self.process(Tick(time.time_ns() if now_ns is None else now_ns))

    def reset_daily(self, now_ns: int | None = None, account: str | None = None) -> list[Action]:
        """Manual daily reset at ``now_ns`` (default: the wall clock), on every shard; with
        ``account`` only that account, on its shard (``RiskEngine.reset_daily``)."""
        return self.process(ResetDaily(time.time_ns() if now_ns is None else now_ns, account))

    def process_many(self, events: Iterable[Event]) -> list[Action]:
        """Every event in order, one script call each, all actions concatenated (errors propagate)."""
        out: list[Action] = []
        for event in events:
            out.extend(self.process(event))
        return out

    def process_batch(self, events: Sequence[Event]) -> list[Action]:
        """Apply ``events`` with one script call per shard; all actions, in event order.

        Rejected events change nothing and do not stop the batch (a stream cannot stop at one
        bad event); if there were any, :class:`BatchError` is raised after the batch, carrying
        the errors with their indices and every action of the batch."""
        return BatchError.collect(self.apply_batch(events))

    def apply_batch(self, events: Sequence[Event]) -> list[Outcome]:
        """Per event, its actions or the :class:`EventError` that rejected it (dead-letter it)."""
        return self._finish(self._send(events))

    def process_stream(self, events: Iterable[Event], batch_size: int = 1000) -> Iterator[Outcome]:
        """Every event's outcome, in order, ``batch_size`` events per batch, with one batch
        in flight: the next batch is planned and sent while Redis applies the previous one
        (on a standalone server or Sentinel master; elsewhere batch by batch)."""
        if batch_size < 1:
            raise ValueError("batch_size: must be at least 1")
        pending: _Batch | None = None
        ready: list[list[Outcome]] = []

        def finish_pending() -> None:
            nonlocal pending
            if pending is not None:
                ready.append(self._finish(pending))
                pending = None

        try:
            for chunk in _chunks(events, batch_size):
                current = self._send(chunk, before_lookup=finish_pending)  # a lookup must see it
                finish_pending()
                pending = current
                for outcomes in ready:
                    yield from outcomes
                ready.clear()
            if pending is not None:
                last, pending = pending, None
                yield from self._finish(last)
        finally:
            if pending is not None:  # the caller stopped early: still collect what Redis did
                self._finish(pending)

    def apply_shard(self, shard: int, events: Sequence[Event], send: ShardSender) -> list[Outcome]:
        """Apply ``events`` (orders and trades of ``shard``'s accounts, ticks, resets) through
        the caller's own script call - a cluster worker adds its lease, cursor and output
        streams.  ``send(plan, positions, scopes, outcomes)`` must run ``apply.lua`` on the
        shard with ``plan`` as ARGV[1] and :meth:`constants` as ARGV[6] and return
        ``("ok", records)`` or ``("abort", pos)``; ``positions[k]`` is the batch index of the
        plan's event k+1, ``scopes`` maps the batch index of each order and trade to its
        (enriched) scope, ``outcomes`` already holds the :class:`EventError` of every event
        rejected so far.  An abort rejects that trade (``unknown_order``) and calls ``send``
        again with the rest; ``send`` is called even when nothing is left, so the caller can
        record the batch (dead letters, cursor).
        An order or trade whose account is on another shard is rejected (``wrong_shard``), so
        a misrouted entry is dead-lettered instead of stopping the worker.
        Returns the outcome of every event.  (:meth:`plan_shard`, :meth:`drop_aborted` and
        :meth:`shard_outcomes` are the same steps for a caller that sends many shards' plans
        at once.)"""
        batch = self.plan_shard(shard, events)
        while True:
            status, payload = send(batch.blob, batch.plan.positions, batch.scopes(), batch.outcomes)
            if status == "ok":
                break
            if status != "abort":
                raise StoreError(f"shard {shard}: apply.lua answered {status!r} ({payload})")
            self.drop_aborted(batch, payload)
        return self.shard_outcomes(batch, payload)

    def plan_shard(
        self, shard: int, events: Sequence[Event], *, checked: bool = False, known: KnownIds | None = None
    ) -> ShardBatch:
        """Validate, enrich and plan ``events`` for ``shard`` (see :meth:`apply_shard`); send
        ``batch.blob`` as ARGV[1] of apply.lua.  ``checked=True``: the orders and trades have
        already passed ``check_order`` / ``check_trade`` (e.g. decoded by ``decode_event``).
        ``known``: the index look-ups of these events, done beforehand (:meth:`lookup_ids`);
        without it (or when it lacks a field) every shard is asked here."""
        outcomes: list[Outcome] = [[] for _ in events]
        self._known = known
        try:
            items = self._prepare(events, outcomes, lambda: None, checked)
        finally:
            self._known = None
        wrong = False
        for item in items:  # misrouted, or enriched from another shard's order: dead-letter it
            account_id = item[2].account.id if item[2] is not None else _reset_account(item[1])
            if account_id is None:
                continue
            home = item[2].account.shard if item[2] is not None else self.store.shard_of(account_id)
            if home != shard:
                detail = f"account {account_id!r} is on shard {home}, not {shard}"
                outcomes[item[0]] = EventError(WRONG_SHARD, "account_id", detail)
                wrong = True
        if wrong:
            items = [item for item in items if not isinstance(outcomes[item[0]], EventError)]
        batch = ShardBatch(shard, items, outcomes)
        self._replan(batch)
        return batch

    def _replan(self, batch: ShardBatch) -> None:
        batch.plan = self._plan(batch.items, {batch.shard}).get(batch.shard) or _Plan()
        batch.blob = self._blob(batch.plan)

    def drop_aborted(self, batch: ShardBatch, pos: int) -> None:
        """apply.lua answered ``("abort", pos)``: reject that trade (``unknown_order``) and
        plan the rest again (nothing was written)."""
        index = batch.plan.positions[pos - 1]
        trade = next(item[1] for item in batch.items if item[0] == index)
        assert isinstance(trade, Trade)
        batch.outcomes[index] = unknown_order(trade)
        batch.items = [item for item in batch.items if item[0] != index]
        self._replan(batch)

    def shard_outcomes(self, batch: ShardBatch, records: Sequence[list[Any]]) -> list[Outcome]:
        """The outcome of every event of ``batch`` from apply.lua's records."""
        positions = batch.plan.positions
        by_index: dict[int, list[list[Any]]] = {}
        for record in records:
            by_index.setdefault(positions[record[0] - 1], []).append(record)
        return self._outcomes(batch.items, batch.outcomes, by_index)

    @staticmethod
    def lookup_fields(events: Sequence[Event]) -> list[str]:
        """The index fields (``o<oid>``, ``t<tid>``, in pairs) that planning ``events`` would
        look up: trades without account or contract whose order is not earlier among them."""
        local: set[int] = set()
        out: list[str] = []
        for event in events:
            if isinstance(event, Order):
                local.add(event.oid)
            elif (
                isinstance(event, Trade)
                and (event.account_id is None or event.contract_id is None)
                and event.oid not in local
            ):
                out += (f"o{event.oid}", f"t{event.tid}")
        return out

    def lookup_ids(self, wanted: Mapping[int, Sequence[str]]) -> dict[int, KnownIds]:
        """The look-ups of many shards' batches (``shard -> lookup_fields``) in one pipelined
        round on their own shards, where a fill's order is when the publisher routed it by its
        order; a pair whose order is not there is then asked of every shard, as
        :meth:`plan_shard` would (the order may be on another shard, its tid seen anywhere)."""
        calls = [(shard, list(fields)) for shard, fields in wanted.items() if fields]
        out: dict[int, KnownIds] = {}
        missed: list[tuple[dict[str, str], list[str]]] = []  # per shard: its values, pairs to ask everywhere
        replies = self.store.lookup_ids_on(calls)
        for (shard, fields), reply in zip(calls, replies, strict=True):
            values = {f: _str(v) for f, v in zip(fields, reply, strict=True) if v}
            out[shard] = (set(fields), values)
            pairs = [f for k in range(0, len(fields) - 1, 2) if fields[k] not in values for f in fields[k : k + 2]]
            if pairs:
                missed.append((values, pairs))
        if missed:
            everywhere = self.store.lookup_ids(sorted({f for _, pairs in missed for f in pairs}))
            for values, pairs in missed:
                for f in pairs:
                    values.pop(f, None)
                    if f in everywhere:
                        values[f] = everywhere[f]
        return out

    # ------------------------------------------------------------------ inspection

    def paused_scopes(self) -> list[tuple[str, dict[str, str]]]:
        """Every (rule name, scope) paused now, in rule order then scope order (read from
        every shard's ``paused:<rule>`` hash)."""
        out: list[tuple[str, dict[str, str]]] = []
        for r in self._stateful:
            rule = r.rule
            hash_name = scope_key([rule.name])
            keys: set[tuple[str, ...]] = set()
            for shard in range(self.store.num_shards):
                for field in self.store.client.hkeys(self.store.key(shard, f"paused:{hash_name}")):
                    keys.add(scope_values(_str(field)))
            out += [(rule.name, dict(zip(rule.dimensions, key, strict=True))) for key in sorted(keys)]
        out.sort(key=lambda item: self._rule_index[item[0]])
        return out

    def window_count(self, rule: str, scope: Mapping[str, str]) -> int:
        """A window rule's count for ``scope`` at the group's own high-water time (read
        from its shard by ``lua/inspect.lua``)."""
        compiled, key = rule_and_key(self._stateful, rule, scope)
        if compiled.kind != WINDOW:
            raise KeyError(f"rule {rule!r} is not a window rule")
        _, value = self._inspect(compiled, key)
        return 0 if value is None else int(_str(value))

    def daily_sum(self, rule: str, scope: Mapping[str, str], day: date | None = None) -> float:
        """A daily rule's sum for ``scope`` on ``day`` (default: that scope's current day:
        the account's, or the shard's clock day when later), read from its shard."""
        compiled, key = rule_and_key(self._stateful, rule, scope)
        if compiled.kind != DAILY:
            raise KeyError(f"rule {rule!r} is not a daily rule")
        if day is None:
            _, value = self._inspect(compiled, key)
        else:
            shard = self.store.shard_of(scope["account"])
            hash_key = self.store.key(shard, f"day:{day.isoformat()}:{scope_key([compiled.name])}")
            value = self.store.client.hget(hash_key, scope_key(key))
        return 0.0 if value is None else float(_number(_str(value)))

    def memory_entries(self) -> dict[str, int]:
        """Sizes of what this process keeps for the state in Redis (memos that grow with the
        accounts, pairs and groups it has seen; the state itself is in Redis)."""
        return {"accounts": len(self._accounts), "contexts": len(self._contexts), "groups": len(self._groups)}

    def _inspect(self, rule: _Rule, key: tuple[str, ...]) -> tuple[int, object]:
        """The scope's current day and its value for ``rule`` (None: none), by inspect.lua."""
        account = key[rule.dimensions.index("account")]
        spec: dict[str, Any] = {"kind": "w" if rule.kind == WINDOW else "d", "name": scope_key([rule.name])}
        spec |= {"exact": scope_key(key), "match": ""}  # no "c": a window counts at its own latest bucket
        if isinstance(rule.rule, WindowRule):
            spec["K"] = rule.rule.window_ns // rule.rule.bucket_ns
        reply = self.store.inspect(self.store.shard_of(account), {"account": account, "rules": [spec], "manual": ""})
        values = reply[1]
        return int(_str(reply[0])), (values[1] if len(values) >= 2 else None)

    # ------------------------------------------------------------------ validate and enrich

    def _prepare(
        self,
        events: Sequence[Event],
        outcomes: list[Outcome],
        before_lookup: Callable[[], object],
        checked: bool = False,
    ) -> list[_Item]:
        items: list[_Item] = []
        local: dict[int, _Context] = {}  # oid -> context of this batch's first valid order with it
        unresolved: list[tuple[int, int, Trade]] = []  # (position in items, index, trade) needing the index
        contexts = self._contexts
        append = items.append
        for index, event in enumerate(events):
            try:
                if isinstance(event, Order):
                    # One combined test per event; check_order (the definition) runs only when
                    # it fails, to name the culprit (or to pass what the test is too strict for).
                    if not checked and not order_ok(event):
                        check_order(event)
                    ctx = contexts.get((event.account_id, event.contract_id))
                    if ctx is None:
                        ctx = self._context(event.account_id, event.contract_id)
                    local.setdefault(event.oid, ctx)
                    append((index, event, ctx, ""))
                elif isinstance(event, Trade):
                    if not checked and not trade_ok(event):
                        check_trade(event)
                    item = self._trade_item(index, event, local)
                    if item is None:
                        unresolved.append((len(items), index, event))
                        item = (index, event, None, "")
                    append(item)
                elif isinstance(event, Tick | ResetDaily):
                    _check_clock(event)
                    append((index, event, None, ""))
                else:
                    raise EventError(UNKNOWN_TYPE, "type", f"not an event: {type(event).__name__}")
            except EventError as exc:
                outcomes[index] = exc
        if unresolved:
            before_lookup()
            items = self._resolve(items, unresolved, outcomes)
        return items

    def _trade_item(self, index: int, trade: Trade, local: Mapping[int, _Context]) -> _Item | None:
        """The trade's item if its account and contract are known without the order index:
        its own fields, else the batch's earlier order (None: ask the index)."""
        if trade.account_id is not None and trade.contract_id is not None:
            return (index, trade, self._context(trade.account_id, trade.contract_id), "")
        order_ctx = local.get(trade.oid)
        if order_ctx is None:
            return None
        if trade.account_id is None and trade.contract_id is None:
            # what _enriched gives, without its look-ups: the order's own context, on the
            # order's shard, so the script re-checks the oid
            return (index, trade, order_ctx, f"o{trade.oid}")
        return self._enriched(index, trade, (order_ctx.scope.account, order_ctx.scope.contract))

    def _resolve(
        self, items: list[_Item], unresolved: list[tuple[int, int, Trade]], outcomes: list[Outcome]
    ) -> list[_Item]:
        """Enrich from the order index of every shard.  Dedup comes first (SEMANTICS.md): a
        seen tid whose order was forgotten is a duplicate, not an unknown order."""
        fields = sorted(
            {f"o{trade.oid}" for _, _, trade in unresolved} | {f"t{trade.tid}" for _, _, trade in unresolved}
        )
        known = self._known
        found = known[1] if known is not None and known[0].issuperset(fields) else self.store.lookup_ids(fields)
        for k, index, trade in unresolved:
            indexed = found.get(f"o{trade.oid}")
            if indexed is not None:
                account, contract = index_pair(indexed)
                items[k] = self._enriched(index, trade, (account, contract))
            elif f"t{trade.tid}" in found:
                outcomes[index] = []  # a duplicate: changes nothing, emits nothing
                items[k] = (index, trade, None, "dup")
            else:
                outcomes[index] = unknown_order(trade)
        return [item for item in items if item[3] != "dup" and not isinstance(outcomes[item[0]], EventError)]

    def _enriched(self, index: int, trade: Trade, indexed: tuple[str, str]) -> _Item:
        """Explicit fields win over the index; the script re-checks the oid if it is in the
        trade's own shard (SEMANTICS.md: enrichment)."""
        ctx = self._context(*enriched_ids(trade, indexed))
        same_shard = self.store.shard_of(indexed[0]) == ctx.account.shard
        return (index, trade, ctx, f"o{trade.oid}" if same_shard else "")

    def _context(self, account_id: str, contract: str) -> _Context:
        ctx = self._contexts.get((account_id, contract))
        if ctx is not None:
            return ctx
        account = self._accounts.get(account_id)
        if account is None:
            account = _Account(account_id, self.store.shard_of(account_id))
            self._accounts[account_id] = account
        scope = Scope(account_id, contract, self.contract_to_product.get(contract, contract))
        groups = [self._group(scope_key(r.rule.scope_key(scope))) for r in self._stateful]
        # When every rule groups by account, the plan's pairs list no groups: the account's own
        # (entered with it, so at the same index in the groups list as it is in the accounts list)
        ctx = _Context(account, scope, groups[:1] if self._by_account else groups, not self._by_account)
        self._contexts[(account_id, contract)] = ctx
        return ctx

    def _group(self, key: str) -> _Group:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        return group

    # ------------------------------------------------------------------ plan and apply

    def _send(self, events: Sequence[Event], before_lookup: Callable[[], object] = lambda: None) -> _Batch:
        """Validate, enrich, plan and start applying ``events`` (see :meth:`_finish`)."""
        outcomes: list[Outcome] = [[] for _ in events]
        items = self._prepare(events, outcomes, before_lookup)
        if self._next is None:
            self._next = {shard: hwm + 1 for shard, hwm in self.store.high_water_marks().items()}
            self._era += 1
            self._latest = {}
        plans = self._plan(items, None)
        calls = {}
        for shard, plan in plans.items():
            calls[shard] = self._encode(plan, self._next[shard])
            self._next[shard] += 1
        return _Batch(items, outcomes, plans, calls, self.store.send_apply(calls))

    def _encode(self, plan: _Plan, seq: int) -> tuple[int, bytes, str, bytes]:
        blob = self._blob(plan)
        return seq, blob, hashlib.blake2b(blob, digest_size=16).hexdigest(), self.constants()

    def _blob(self, plan: _Plan) -> bytes:
        """ARGV[1] of apply.lua (its header documents the layout)."""
        # the groups list is most often the accounts list (rules that group by account only):
        # then 0, so the script does not decode each account's text twice
        groups = 0 if plan.groups == plan.accounts else plan.groups
        tables = (plan.accounts, plan.pairs, groups, plan.events)
        hints = [plan.hint % _ERA, plan.unknown] if plan.hint >= 0 else []
        return self.store.encode([1, 0, *tables, self.id_retention_days, self._ttl_ms, str(plan.t0), *hints])

    def _new_plan(self, shard: int) -> _Plan:
        """A plan that carries apply.lua's hint: the latest day this engine's applied batches
        reached on the shard; the plan lists its accounts not known to have had an event on
        it (_enter). The script skips reading the others' day records while that day is still
        the shard's latest."""
        day = self._latest.get(shard)
        return _Plan(-1 if day is None else self._era * _ERA + day)

    def _confirm(self, batch: _Batch, shard: int, records: Sequence[list[Any]]) -> None:
        """The shard's part of ``batch`` applied: when its orders and trades were all on one
        day, each of its accounts had an event on that day (_new_plan), unless the script
        called one of its events a duplicate (it skipped it)."""
        plan = batch.plans[shard]
        if plan.runs != 1:  # nothing, or several days: no account's day is sure (rare)
            return
        seen = self._era * _ERA + plan.day
        for account in plan.members:
            account.seen = seen
        self._latest[shard] = max(self._latest.get(shard, -1), plan.day)
        duplicates = {plan.positions[record[0] - 1] for record in records if record[1] == 1}
        if duplicates:
            for item in batch.items:
                if item[0] in duplicates and item[2] is not None:
                    item[2].account.seen = -1

    def constants(self, extra: Sequence[Any] = ()) -> bytes:
        """ARGV[6] of apply.lua: the rules, then ``extra`` (a worker's texts for its actions).
        Send the same bytes in every call (apply.lua decodes a blob once per server): keep
        the result rather than calling this per batch with ``extra``."""
        if extra:
            return self.store.encode([self._header, *extra])
        if self._constants is None:
            self._constants = self.store.encode([self._header])
        return self._constants

    def _finish(self, batch: _Batch) -> list[Outcome]:
        """Wait for the batch's replies and turn them into outcomes (one per event)."""
        outcomes = batch.outcomes
        records: dict[int, list[list[Any]]] = {}
        try:
            replies = batch.wait()
            for shard, reply in replies.items():
                applied = self._settle(batch, shard, reply)
                self._confirm(batch, shard, applied)
                for record in applied:
                    records.setdefault(batch.plans[shard].positions[record[0] - 1], []).append(record)
        except RiskError:
            self._next = None  # unsure what applied: read the high-water marks again next time
            raise
        return self._outcomes(batch.items, outcomes, records)

    def _outcomes(
        self, items: Sequence[_Item], outcomes: list[Outcome], records: Mapping[int, list[list[Any]]]
    ) -> list[Outcome]:
        judged = bool(self._stateless)  # stateless rules may act on any order or trade
        for item in items:
            index = item[0]
            if (index in records or judged or item[2] is None) and not isinstance(outcomes[index], EventError):
                outcomes[index] = self._actions(item, records.get(index, ()))
        return outcomes

    def _settle(self, batch: _Batch, shard: int, reply: tuple[str, Any]) -> list[list[Any]]:
        """The shard's records, after resolving what stopped its part: an order that left the
        index mid-batch (reject that trade, resend the rest) or ``stale`` because an earlier
        part of this sender's was applied only after this one ran (resend once)."""
        status, payload = reply
        resent = False
        while status != "ok":
            seq = batch.calls[shard][0]
            if status == "abort":
                index = batch.plans[shard].positions[payload - 1]
                trade = next(item[1] for item in batch.items if item[0] == index)
                assert isinstance(trade, Trade)
                batch.outcomes[index] = unknown_order(trade)
                batch.items = [item for item in batch.items if item[0] != index]
                batch.plans[shard] = self._plan(batch.items, {shard}).get(shard, _Plan())
                batch.calls[shard] = self._encode(batch.plans[shard], seq)
            elif status == "stale" and not resent:
                resent = True
            else:
                raise StoreError(_stale(shard, seq, payload))
            status, payload = self.store.apply({shard: batch.calls[shard]})[shard]
        records: list[list[Any]] = payload
        return records

    def _plan(self, items: list[_Item], only: set[int] | None) -> dict[int, _Plan]:
        """Each shard's plan of ``items`` (only the shards in ``only``, when given).  Most of
        the client's CPU per event is here: what the loop reads is bound to locals, and the
        plan's lists are bound once per run of events on the same shard."""
        self._stamp += 1
        stamp = self._stamp
        plans: dict[int, _Plan] = {}
        day_range = self.calendar.day_range
        bucket_ns = self._order_bucket
        below = -_MAX_BUCKET
        trade_rules = self._trade_rules
        shard = -1  # the shard whose plan is bound below
        plan = _Plan()
        events, positions, t0, day = plan.events, plan.positions, plan.t0, plan.day
        for index, event, ctx, verify in items:
            if ctx is None:  # tick or reset
                self._plan_clock(plans, index, event, only)
                continue
            account = ctx.account
            if account.shard != shard:
                if only is not None and account.shard not in only:
                    continue
                shard = account.shard
                plan.day = day
                plan = plans.get(shard) or plans.setdefault(shard, self._new_plan(shard))
                events, positions, t0, day = plan.events, plan.positions, plan.t0, plan.day
            if ctx.stamp != stamp:
                _enter(plan, ctx, stamp)
            # The event's values, appended to the plan's flat event list.
            t = event.timestamp
            if not account.lo <= t < account.hi:
                account.set_range(*day_range(t))
            if t0 < 0:
                t0 = plan.t0 = t  # event times travel as t - t0 (exact in Lua's doubles)
            if account.day != day:  # the day goes once per run of events on it, not per event
                day = account.day
                events += (5, day)
                plan.runs += 1
            rel = t - t0
            ts: int | str = rel if below < rel < _MAX_BUCKET else str(t)
            if isinstance(event, Order):
                if bucket_ns is not None:
                    events += (1, f"o{event.oid}", ctx.local_pair, ts, t // bucket_ns)
                else:
                    events += (1, f"o{event.oid}", ctx.local_pair, ts)
                    self._order_values(events, event)
            else:
                assert isinstance(event, Trade)
                events += (2, f"t{event.tid}", ctx.local_pair, ts, verify)
                for rule in trade_rules:
                    _add_amount(events, rule.trade_amount(event, ctx.scope.contract))
            positions.append(index)
        plan.day = day
        return plans

    def _plan_clock(self, plans: dict[int, _Plan], index: int, event: Event, only: set[int] | None) -> None:
        """A tick or reset goes to every shard (a reset of one account: to its shard)."""
        entry = self._clock_entry(event)
        account_id = _reset_account(event)
        if account_id is not None:
            shards: Iterable[int] = [self.store.shard_of(account_id)]
        else:
            shards = range(self.store.num_shards) if only is None else sorted(only)
        for shard in shards:
            if only is not None and shard not in only:
                continue
            plan = plans.get(shard) or plans.setdefault(shard, self._new_plan(shard))
            plan.events += entry
            plan.positions.append(index)

    def _order_values(self, events: list[Any], order: Order) -> None:
        """An order's value per order rule, unless the only one is a plain window counter."""
        t = order.timestamp
        for r in self._order_rules:
            if r.kind == DAILY:
                _add_amount(events, r.rule.order_amount(order))  # type: ignore[attr-defined]
            elif r.counts_every_order or r.rule.counts_order(order):  # type: ignore[attr-defined]
                events.append(t // r.bucket_ns)
            else:
                events.append(-1)

    def _clock_entry(self, event: Event) -> list[Any]:
        t = event.timestamp
        day = self.calendar.day_range(t)[0]
        if isinstance(event, Tick):
            return [3, day, *(t // r.bucket_ns if r.kind == WINDOW else 0 for r in self._stateful)]
        account_id = _reset_account(event)
        if account_id is None:
            return [4, day]
        # one account (ops extension): {day, account, escaped account, its place in each rule's scope}
        places = [r.rule.dimensions.index("account") + 1 for r in self._stateful]
        return [4, [day, account_id, scope_key([account_id]), places]]

    # ------------------------------------------------------------------ records -> actions

    def _actions(self, item: _Item, records: Sequence[list[Any]]) -> list[Action]:
        _, event, ctx, _ = item
        t = event.timestamp
        if ctx is None:  # tick / reset: records of every shard, each kind sorted
            day, lo, _ = self.calendar.day_range(t)
            last = TICK_RESUME if isinstance(event, Tick) else RESET_RESUME
            rolled = [self._action(r, ROLLOVER, t, lo, day) for r in self._sorted(records, ROLLOVER)]
            return rolled + [self._action(r, last, t, lo, day) for r in self._sorted(records, last)]
        if any(record[1] == DUPLICATE for record in records):
            return []  # a duplicate changes nothing and emits nothing
        out: list[Action] = []
        if any(record[1] == ROLLOVER for record in records):
            day, lo, _ = self.calendar.day_range(t)
            out = [self._action(r, ROLLOVER, t, lo, day) for r in self._sorted(records, ROLLOVER)]
        own = [(self._stateful[r[2] - 1].index, self._action(r, r[1], t, 0, 0)) for r in records if r[1] != ROLLOVER]
        for compiled in self._stateless:
            rule: Any = compiled.rule
            if isinstance(event, Order):
                verdict = rule.evaluate_order(event, ctx.scope)
            else:
                assert isinstance(event, Trade)
                verdict = rule.evaluate_trade(event, ctx.scope)
            if verdict is not None:
                own.append((compiled.index, verdict_action(compiled, ctx.scope, verdict, t)))
        own.sort(key=lambda pair: pair[0])
        out.extend(action for _, action in own)
        return out

    def _sorted(self, records: Iterable[list[Any]], code: int) -> list[list[Any]]:
        """Records of one kind in the contract's order: rule order, then scopes by their values."""
        chosen = [r for r in records if r[1] == code]
        chosen.sort(key=lambda r: (self._stateful[r[2] - 1].index, scope_values(_str(r[3]))))
        return chosen

    def _action(self, record: list[Any], code: int, t: int, day_start: int, day: int) -> Action:
        rule = self._stateful[record[2] - 1]
        scope = rule.scope_of(scope_values(_str(record[3])))
        value = int(record[4]) if rule.kind == WINDOW else _number(_str(record[4]))
        if code == ROLLOVER:
            return rule_action(rule, ROLLOVER, scope, day_start, value, day)
        if code == RESET_RESUME:
            return rule_action(rule, RESET_RESUME, scope, t, 0)
        return rule_action(rule, code, scope, t, value)


def _check_clock(event: Tick | ResetDaily) -> None:
    check_timestamp(event.timestamp)
    account = _reset_account(event)
    if account is not None and (not isinstance(account, str) or not account):
        raise EventError("invalid_field", "account_id", "must be a non-empty string")


def _reset_account(event: Event) -> str | None:
    """The account of a one-account reset (an ops extension), else None."""
    return event.account_id if isinstance(event, ResetDaily) else None


def _enter(plan: _Plan, ctx: _Context, stamp: int) -> None:
    """First use of ``ctx`` in this plan: its account, pair and groups get plan indices."""
    ctx.stamp = stamp
    account = ctx.account
    if account.stamp != stamp:
        account.stamp = stamp
        accounts = plan.accounts
        accounts.append(account.id)
        plan.members.append(account)
        account.local = len(accounts)
        if account.seen != plan.hint and plan.hint >= 0:
            plan.unknown.append(account.local)
    pairs = plan.pairs
    start = len(pairs)
    pairs.append(account.local)
    pairs.append(ctx.pair)
    groups = plan.groups
    for group in ctx.groups:
        if group.stamp != stamp:
            group.stamp = stamp
            groups.append(group.key)
            group.local = len(groups)
        if ctx.paired:
            pairs.append(group.local)
    ctx.local_pair = len(pairs) // (len(pairs) - start)


def _chunks(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    it = iter(events)  # read lazily, size at a time (islice: no per-event Python loop)
    while True:
        chunk = list(islice(it, size))
        if chunk:
            yield chunk
        if len(chunk) < size:  # exhausted: never ask the iterator again
            return


def _add_amount(events: list[Any], amount: float | None) -> None:
    """A daily rule's value: the amount and its kind (0 int, 1 float, 2 none)."""
    if amount is None:
        events += (0, 2)
    elif type(amount) is float:
        events += (amount, 1)
    else:  # an int past 2**53 saturates the sum anyway (memory.saturated); msgpack takes < 2**64
        events += (amount if amount <= SATURATED_SUM else SATURATED_SUM, 0)


def _number(text: str) -> float:
    return float(text) if any(c in text for c in ".eEnN") else int(text)


def _str(value: object) -> str:
    return to_text(value)


def _stale(shard: int, seq: int, hwm: int) -> str:
    why = (
        "a batch with this number was applied but its reply was lost; resend that batch to get its actions"
        if hwm == seq
        else "another writer is applying batches to this shard"
    )
    return f"shard {shard}: batch {seq} refused, the shard has applied up to batch {hwm}: {why}"


def _raise(outcome: Outcome) -> list[Action]:
    if isinstance(outcome, EventError):
        raise outcome
    return outcome


def replay_batched(
    engine: RemoteEngine, lines: Iterable[str | bytes | object], batch_size: int = 1000, *, decoded: bool = False
) -> Iterator[dict[str, Any]]:
    """:func:`cluster_risk.replay.replay_lines` through :meth:`RemoteEngine.process_stream`:
    the same records in the same order, ``batch_size`` events per batch, one batch in flight.
    ``decoded=True`` takes already-decoded JSON values (conformance vectors) instead of lines."""
    read: deque[tuple[int, EventError | None]] = deque()  # every line read: its index, its error

    def events() -> Iterator[Event]:
        for index, line in enumerate(lines):
            if not decoded and isinstance(line, str | bytes) and not line.strip():
                continue
            try:
                event = decode_event(line) if decoded else decode_line(line)  # type: ignore[arg-type]
            except EventError as exc:
                read.append((index, exc))
                continue
            read.append((index, None))
            yield event

    def errors_first() -> Iterator[dict[str, Any]]:
        while read and read[0][1] is not None:
            index, error = read.popleft()
            assert error is not None
            yield error.to_dict(index)

    for outcome in engine.process_stream(events(), batch_size):
        yield from errors_first()
        index, _ = read.popleft()  # the event this outcome is for
        if isinstance(outcome, EventError):
            yield outcome.to_dict(index)
        else:
            for action in outcome:
                yield action.to_dict()
    yield from errors_first()
