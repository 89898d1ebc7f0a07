"""What a worker adds to a shard batch so the apply script can write the batch's actions,
dead letters and cursor in the same atomic step as the state (``lua/fence.lua``,
``lua/emit.lua``).

The script renders each action's JSON itself (the values only exist inside the script), from
constant pieces computed here once per engine: rule name, dimension names and limit as JSON,
the reason's text around the value (:class:`cluster_risk.front.CompiledRule`'s texts; the
rule-independent ones are in lua/codes.lua, generated from cluster_risk/state/codes.py).
Stateless rules need no state, so their verdicts are rendered here and the script keeps them
unless the event turns out to be a duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

from cluster_risk.calendar import TradingCalendar
from cluster_risk.errors import EventError
from cluster_risk.events import Action, Event, Order, Trade
from cluster_risk.front import STATELESS, WINDOW, CompiledRule, verdict_action
from cluster_risk.rules.base import BaseRule, Scope, StatelessRule

__all__ = ["EXCERPT", "DeadLetter", "Renderer"]

_dumps = json.JSONEncoder(separators=(",", ":")).encode

# (stream entry id, line index or "", error code, field, reason, excerpt of the raw event,
#  the raw event's length in bytes)
DeadLetter = tuple[str, str, str, str, str, str, int]
EXCERPT = 1024  # a dead letter keeps this many bytes of the raw entry, and of the reason


def rule_table(rules: Sequence[BaseRule]) -> list[list[Any]]:
    """emit.lua's ``rules[r]`` for the stateful rules, in the script's order (config order)."""
    out: list[list[Any]] = []
    for i, rule in enumerate(rules):
        compiled = CompiledRule(i, rule)
        if compiled.kind == STATELESS:
            continue
        kind = "w" if compiled.kind == WINDOW else "d"
        dims = [_dumps(d) for d in compiled.dimensions]
        texts = [*compiled.pause_text, *compiled.resume_text]  # the reasons, around the value
        out.append([i, kind, _dumps(compiled.name), dims, _dumps(compiled.limit), *texts])
    return out


class Renderer:
    """Builds the extras (ARGV[8] of apply.lua in cluster mode) for one batch; ``rules`` goes in
    apply.lua's constants (ARGV[6]), the same in every call."""

    def __init__(self, rules: Sequence[BaseRule], calendar: TradingCalendar, actions_maxlen: int = 0) -> None:
        self.rules = rule_table(rules)
        self.stateless = [CompiledRule(i, r) for i, r in enumerate(rules) if isinstance(r, StatelessRule)]
        self.calendar = calendar
        self.actions_maxlen = actions_maxlen

    def extras(
        self,
        after: str,
        last: str,
        entries: int,
        events: Sequence[Event],
        positions: Sequence[int],
        scopes: Mapping[int, Scope],
        dead: Iterable[DeadLetter],
    ) -> list[Any]:
        """``positions[k]``: the batch index of the plan's event k+1; ``scopes``: batch index ->
        the (enriched) scope of an order or trade."""
        # per event one text "<timestamp> <start of its trading day> <YYYY-MM-DD>": the script
        # reads it only for the events that emit, so each costs it one string, not a table of three
        per_event: list[str] = []
        verdicts: list[Any] = []
        day_range = self.calendar.day_range
        lo = hi = 0
        tail = ""
        stateless = bool(self.stateless)
        for pos, index in enumerate(positions, 1):
            event = events[index]
            t = event.timestamp
            if not lo <= t < hi:  # a batch's events are mostly of one trading day
                day, lo, hi = day_range(t)
                tail = f" {lo} {date.fromordinal(day).isoformat()}"
            per_event.append(f"{t}{tail}")
            if not stateless:
                continue
            scope = scopes.get(index)
            if scope is not None:
                for i, action in self._verdicts(event, scope):
                    verdicts += (pos, i, _dumps(action.to_dict()))
        # x[4], the rules' texts, goes as a constant (apply.lua's ARGV[6], RemoteEngine.constants)
        return [after, last, entries, 0, per_event, verdicts, list(dead), self.actions_maxlen]

    def _verdicts(self, event: Event, scope: Scope) -> Iterable[tuple[int, Action]]:
        for compiled in self.stateless:
            rule: Any = compiled.rule
            if isinstance(event, Order):
                verdict = rule.evaluate_order(event, scope)
            elif isinstance(event, Trade):
                verdict = rule.evaluate_trade(event, scope)
            else:
                continue
            if verdict is not None:
                yield compiled.index, verdict_action(compiled, scope, verdict, event.timestamp)


def dead_letter(entry_id: str, index: str, error: EventError, raw: bytes) -> DeadLetter:
    """A rejected entry's dead letter: the raw entry's first :data:`EXCERPT` bytes, cut at a
    character boundary (as text; bytes that are not UTF-8 as U+FFFD), and its length in bytes,
    so a poison entry of megabytes costs the dead-letter stream about a kilobyte; the reason is
    cut as well (it may quote a value)."""
    reason = error.detail or error.code
    if len(reason) > EXCERPT:
        reason = reason[:EXCERPT] + "..."
    cut = EXCERPT
    if len(raw) > cut:
        while cut > EXCERPT - 3 and raw[cut] & 0xC0 == 0x80:  # not inside a character
            cut -= 1
    excerpt = raw[:cut].decode("utf-8", "replace")
    return (entry_id, index, error.code, error.field, reason, excerpt, len(raw))
