"""Every error this package raises derives from one root, :class:`RiskError`.

::

    RiskError
    ├── ConfigError          an unusable engine config (names the place: ``rules[1].daily_cap``)
    └── EventError           a rejected event; carries the contract's ``code`` and ``field``
        │                    (codes: invalid_field, unknown_order, unknown_type, invalid_json)
        └── BatchError       some events of a batch were rejected; the valid ones were applied

``ConfigError`` and ``EventError`` are also ``ValueError`` so that callers who only know the
standard library still catch them.  A rejected event never changes engine state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster_risk.events import Action

__all__ = ["BatchError", "ConfigError", "EventError", "RiskError"]

INVALID_FIELD = "invalid_field"
UNKNOWN_ORDER = "unknown_order"
UNKNOWN_TYPE = "unknown_type"
INVALID_JSON = "invalid_json"


class RiskError(Exception):
    """Root of every error raised by cluster_risk."""


class ConfigError(RiskError, ValueError):
    """The engine configuration is unusable; the message names the offending place."""


class EventError(RiskError, ValueError):
    """An event was rejected: ``code`` is the contract's error code, ``field`` the culprit."""

    def __init__(self, code: str, field: str, detail: str = "") -> None:
        self.code = code
        self.field = field
        self.detail = detail
        where = f" {field!r}" if field else ""
        super().__init__(f"{code}{where}: {detail}" if detail else f"{code}{where}")

    def to_dict(self, index: int | None = None) -> dict[str, object]:
        """The contract's error record (``index`` is the event's position in a stream)."""
        out: dict[str, object] = {"error": self.code, "field": self.field}
        if index is not None:
            out["index"] = index
        if self.detail:
            out["reason"] = self.detail
        return out


def invalid(field: str, detail: str) -> EventError:
    return EventError(INVALID_FIELD, field, detail)


class BatchError(EventError):
    """Some events of a batch were rejected; the valid ones were applied.

    ``errors`` lists ``(index, EventError)``; ``actions`` holds every action of the batch.
    The code and field are those of the first rejected event."""

    def __init__(self, errors: list[tuple[int, EventError]], actions: list[Action]) -> None:
        index, first = errors[0]
        super().__init__(first.code, first.field, f"event {index}: {first.detail}")
        self.errors = errors
        self.actions = actions

    @classmethod
    def collect(cls, outcomes: list[list[Action] | EventError]) -> list[Action]:
        """Every action of a batch's outcomes, in order; raise this error if any were rejected."""
        actions: list[Action] = []
        errors: list[tuple[int, EventError]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, EventError):
                errors.append((index, outcome))
            else:
                actions.extend(outcome)
        if errors:
            raise cls(errors, actions)
        return actions
