"""Replay a JSON Lines event stream through an engine, yielding the contract's output records.

Each input line gives, in order, its actions (``Action.to_dict()``) or, when rejected, one
error record ``{"error", "field", "index", "reason"}`` where ``index`` is the line number
from 0.  A rejected line changes no state; the replay goes on (the dead-letter behaviour of
a stream).  Blank lines are skipped but still counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from cluster_risk.errors import EventError
from cluster_risk.events import Action, Event
from cluster_risk.wire import decode_event, decode_line

__all__ = ["replay_lines", "replay_events", "Processor"]


class Processor(Protocol):
    def process(self, event: Event) -> list[Action]: ...


def replay_lines(engine: Processor, lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    for index, line in enumerate(lines):
        if line.strip():
            yield from _outcome(engine, index, decode_line, line)


def replay_events(engine: Processor, events: Iterable[object]) -> Iterator[dict[str, Any]]:
    """Like :func:`replay_lines` for already-decoded JSON values (e.g. conformance vectors)."""
    for index, obj in enumerate(events):
        yield from _outcome(engine, index, decode_event, obj)


def _outcome(engine: Processor, index: int, decode: Callable[[Any], Event], raw: object) -> Iterator[dict[str, Any]]:
    try:
        actions = engine.process(decode(raw))
    except EventError as exc:
        yield exc.to_dict(index)
        return
    for action in actions:
        yield action.to_dict()
