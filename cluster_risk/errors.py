"""Every error this package raises derives from one root, :class:`RiskError`, and every one but
``ShardLost`` is defined here.

::

    RiskError
    ├── ConfigError          an unusable engine config (names the place: ``rules[1].daily_cap``)
    ├── EventError           a rejected event; carries the contract's ``code`` and ``field``
    │   │                    (codes: invalid_field, unknown_order, unknown_type, invalid_json)
    │   └── BatchError       some events of a batch were rejected; the valid ones were applied
    ├── StoreError           Redis failed or refused a store's batch (names the shard, what to do)
    ├── DeploymentError      this process disagrees with the deployment stored in Redis
    │   └── ConfigDrift      ... about the engine config (not the one the deployment stored)
    └── ShardLost            a worker's apply script refused a batch (lost, fenced, gap, ...);
                             also a ``redis.RedisError``, which the worker's loop catches

``ConfigError`` and ``EventError`` are also ``ValueError`` so that callers who only know the
standard library still catch them.  A rejected event never changes engine state.
``StoreError`` is raised by :mod:`cluster_risk.state.redis`, ``DeploymentError`` and
``ConfigDrift`` by :mod:`cluster_risk.cluster.shards` (those modules re-export them).
``ShardLost`` is defined and raised in :mod:`cluster_risk.cluster.worker`: it is also a
``redis.RedisError``, and this module imports nothing of redis-py, so that ``import
cluster_risk`` (the in-process engine) does not load the Redis client.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = [
    "BatchError",
    "ConfigDrift",
    "ConfigError",
    "DeploymentError",
    "EventError",
    "RiskError",
    "StoreError",
]

_Action = TypeVar("_Action")  # cluster_risk.events.Action (errors imports no other module of the package)

INVALID_FIELD = "invalid_field"
UNKNOWN_ORDER = "unknown_order"
UNKNOWN_TYPE = "unknown_type"
INVALID_JSON = "invalid_json"
INTERNAL_ERROR = "internal_error"  # a worker's dead letter for an entry that met a bug (logged with its traceback)


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

    def __init__(self, errors: list[tuple[int, EventError]], actions: list[Any]) -> None:
        index, first = errors[0]
        super().__init__(first.code, first.field, f"event {index}: {first.detail}")
        self.errors = errors
        self.actions = actions  # cluster_risk.events.Action

    @classmethod
    def collect(cls, outcomes: list[list[_Action] | EventError]) -> list[_Action]:
        """Every action of a batch's outcomes, in order; raise this error if any were rejected."""
        actions: list[_Action] = []
        errors: list[tuple[int, EventError]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, EventError):
                errors.append((index, outcome))
            else:
                actions.extend(outcome)
        if errors:
            raise cls(errors, actions)
        return actions


class StoreError(RiskError):
    """Redis failed or refused a batch; the message says which shard and what to do."""


class DeploymentError(RiskError):
    """This process disagrees with the deployment stored in Redis (e.g. another shard count)."""


class ConfigDrift(DeploymentError):
    """This process's engine config is not the one the deployment stored at its first start."""
