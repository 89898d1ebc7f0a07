"""The conformance check of a sharded fleet (shared/conformance/README.md): per (rule, scope),
the sub-sequence of actions equals the in-process engine's; the set of errors is the same;
no action appears twice.  A final tick at the stream's largest timestamp is appended."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from cluster_risk import RiskEngine, build_config
from cluster_risk.replay import replay_events
from tests.helpers import view

__all__ = ["by_scope", "expected", "fleet_output", "with_final_tick"]


def with_final_tick(events: Sequence[Any]) -> list[Any]:
    stamps = [e["timestamp"] for e in events if isinstance(e, dict) and isinstance(e.get("timestamp"), int)]
    return [*events, {"type": "tick", "timestamp": max(stamps)}] if stamps else list(events)


def expected(config: dict[str, Any], events: Sequence[Any]) -> tuple[list[dict[str, Any]], set[tuple[Any, ...]]]:
    """(actions, errors) of the in-process engine on ``events`` (final tick included by the caller)."""
    engine = RiskEngine.from_config(build_config(config))
    actions, errors = [], set()
    for record in replay_events(engine, events):
        if "error" in record:
            errors.add((record["error"], record["field"], record["index"]))
        else:
            actions.append(view(record))
    return actions, errors


def by_scope(actions: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for action in actions:
        out[(action["rule"], json.dumps(action["scope"], sort_keys=True))].append(view(action))
    return dict(out)


Output = tuple[list[dict[str, Any]], set[tuple[Any, ...]], list[str]]


def fleet_output(client: redis.Redis | redis.RedisCluster, prefix: str = "risk") -> Output:
    """Every shard's actions (in stream order per shard), dead-letter errors, and the raw
    action entries' (shard, id) list for duplicate checks."""
    shards = int(client.hget(f"{prefix}:deployment", "shards"))
    actions: list[dict[str, Any]] = []
    errors: set[tuple[Any, ...]] = set()
    ids: list[str] = []
    for shard in range(shards):
        for entry_id, fields in client.xrange(f"{prefix}:{{s{shard}}}:actions"):
            actions.append(json.loads(fields[b"a"]))
            ids.append(f"{shard}/{entry_id.decode()}")
        for _, fields in client.xrange(f"{prefix}:{{s{shard}}}:dead"):
            index = fields[b"index"].decode()
            errors.add((fields[b"error"].decode(), fields[b"field"].decode(), int(index) if index else None))
    return actions, errors, ids
