"""Shards, key names and the deployment record: what every process of a fleet must agree on.

``shard = crc32(account_id) mod S``.  S is fixed per deployment: the first process to start
stores it in ``<prefix>:deployment`` (field ``shards``), and every publisher, worker or client
that comes later with another S refuses to start (:class:`DeploymentError`), since events
would then go to shards no worker reads, or state would be split.  The record also keeps the
rules' names and dimensions (``rules``, written by workers) so a gateway can read the pause
hashes without the engine config.

Keys of shard N (hash tag ``{sN}``: one Redis Cluster slot; the state keys are
:mod:`cluster_risk.state.redis`'s)::

    P:{sN}:in        input stream: entries {e: wire JSON of one event, i: its line index (optional)}
    P:{sN}:lease     lease and cursor: owner, epoch, expires, sid, aid, applied (lua/lease.lua)
    P:{sN}:actions   actions stream: entries {a: action JSON}
    P:{sN}:dead      dead letters: entry, index, error, field, reason, event
    P:{sN}:pub:ID    publisher ID's last sequence number on the shard (a day's TTL; lua/publish.lua)
    P:{sN}:paused:manual  manual pauses (kill switches): field -> JSON (lua/manual.lua)
    P:{sN}:audit     audit stream of manual pauses, resumes and resets: when, who, why, what, scope, account, ...
    P:{rN}:route:D   oid -> account of the orders published on UTC day D (by crc32(oid) mod S)
    P:workers        live workers (lua/heartbeat.lua); P:actions: the pub/sub hint channel
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from functools import partial
from typing import Any

from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from cluster_risk.errors import RiskError
from cluster_risk.remote import scope_key
from cluster_risk.rules.base import BaseRule, DailyCapRule, WindowRule
from cluster_risk.state.functions import LuaOperation
from cluster_risk.state.redis import by_node, load_lua, script_pipeline, takes_shebang

__all__ = ["DEFAULT_SHARDS", "MANUAL", "Deployment", "DeploymentError", "Keys", "Scripts", "text"]

DEFAULT_SHARDS = 16
MANUAL = "manual"  # the rule name of manual pauses; no configured rule may take it in the cluster
Client = Redis | RedisCluster


class DeploymentError(RiskError):
    """This process disagrees with the deployment stored in Redis (e.g. another shard count)."""


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Keys:
    """Key names of one deployment (prefix) and shard count."""

    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards
        self.deployment = f"{prefix}:deployment"
        self.workers = f"{prefix}:workers"
        self.channel = f"{prefix}:actions"

    def shard_of(self, account_id: str) -> int:
        return zlib.crc32(account_id.encode("utf-8", "surrogatepass")) % self.shards

    def route_shard(self, oid: int) -> int:
        return zlib.crc32(str(oid).encode()) % self.shards

    def base(self, shard: int) -> str:
        return f"{self.prefix}:{{s{shard}}}:"

    def meta(self, shard: int) -> str:
        return self.base(shard) + "meta"

    def input(self, shard: int) -> str:
        return self.base(shard) + "in"

    def lease(self, shard: int) -> str:
        return self.base(shard) + "lease"

    def actions(self, shard: int) -> str:
        return self.base(shard) + "actions"

    def dead(self, shard: int) -> str:
        return self.base(shard) + "dead"

    def paused(self, shard: int, rule_name: str) -> str:
        return self.base(shard) + "paused:" + scope_key([rule_name])

    def manual(self, shard: int) -> str:
        """Manual pauses (kill switches) of the shard's accounts (``lua/manual.lua``)."""
        return self.base(shard) + "paused:" + MANUAL

    def audit(self, shard: int) -> str:
        return self.base(shard) + "audit"

    def publisher(self, shard: int, publisher_id: str) -> str:
        """A publisher's last sequence number on the shard (``lua/publish.lua``)."""
        return self.base(shard) + "pub:" + publisher_id

    def route(self, oid: int, day: int) -> str:
        return f"{self.prefix}:{{r{self.route_shard(oid)}}}:route:{day}"


class Deployment:
    """The stored deployment record; :meth:`ensure` creates or checks it."""

    def __init__(self, client: Client, prefix: str = "risk") -> None:
        self.client = client
        self.prefix = prefix

    def stored_shards(self) -> int | None:
        got = self.client.hget(f"{self.prefix}:deployment", "shards")
        return None if got is None else int(text(got))

    def ensure(self, shards: int | None) -> Keys:
        """Store S on first start, else check it; ``shards=None`` takes the stored value
        (or the default for a new deployment)."""
        key = f"{self.prefix}:deployment"
        if shards is not None and not 1 <= shards <= 1 << 16:
            raise DeploymentError(f"shards: must be in [1, 65536], got {shards}")
        if shards is not None:
            self.client.hsetnx(key, "shards", str(shards))
        stored = self.stored_shards()
        if stored is None:
            self.client.hsetnx(key, "shards", str(DEFAULT_SHARDS))
            stored = self.stored_shards()
        assert stored is not None
        if shards is not None and stored != shards:
            raise DeploymentError(
                f"this deployment ({key}) has {stored} shards, this process was started with {shards}: "
                "the shard count is fixed for a deployment's life (use the stored one, or another prefix)"
            )
        return Keys(self.prefix, stored)

    def store_rules(self, rules: Sequence[BaseRule]) -> None:
        for rule in rules:
            if rule.name == MANUAL:
                raise DeploymentError(f"rule name {MANUAL!r} is reserved in the cluster for manual pauses")
        self.client.hset(f"{self.prefix}:deployment", "rules", json.dumps(rule_dimensions(rules)))

    def rules(self) -> list[dict[str, Any]]:
        got = self.client.hget(f"{self.prefix}:deployment", "rules")
        return [] if got is None else list(json.loads(text(got)))


def rule_dimensions(rules: Sequence[BaseRule]) -> list[dict[str, Any]]:
    """The stateful rules (the ones with pause hashes) with their dimensions, config order, and
    what ``cluster-risk inspect`` needs to read their state without the engine config (kind,
    window and threshold, or cap and metric)."""
    out: list[dict[str, Any]] = []
    for r in rules:
        record: dict[str, Any] = {"name": r.name, "dimensions": list(r.dimensions)}
        if isinstance(r, WindowRule):
            record |= {"kind": "window", "window_ns": r.window_ns, "bucket_ns": r.bucket_ns}
            record |= {"threshold": r.threshold, "resume_threshold": r.resume_threshold}
        elif isinstance(r, DailyCapRule):
            record |= {"kind": "daily", "daily_cap": r.daily_cap, "metric": getattr(r, "metric", "sum")}
        else:
            continue
        out.append(record)
    return out


class Scripts:
    """The cluster's own scripts (lease, release, heartbeat, snapshot), loaded once per client."""

    NAMES = ("lease.lua", "release.lua", "heartbeat.lua", "snapshot.lua")

    def __init__(self, client: Client) -> None:
        self.client = client
        self._scripts: dict[str, Script] = {}
        self._operations: dict[str, LuaOperation] = {}  # the same scripts, for pipelines

    def _script(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(
                load_lua(name, shebang=takes_shebang(self.client))
            )
        return script

    def _operation(self, name: str) -> LuaOperation:
        operation = self._operations.get(name)
        if operation is None:
            source = load_lua(name, shebang=takes_shebang(self.client))
            operation = self._operations[name] = LuaOperation(name, source, functions=False)
        return operation

    def __call__(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._script(name)(keys=list(keys), args=list(args))

    def _load(self, node: Any, calls: Sequence[tuple[str, Any, Any]], missing: list[int]) -> None:
        for name in {calls[k][0] for k in missing}:
            node.script_load(self._script(name).script)

    def many(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """(script, keys, args) calls in one pipeline per server, replies in order; a call
        answered NOSCRIPT (it ran nothing) is sent again after loading.  A failed call raises."""
        replies: list[Any] = [None] * len(calls)
        for node, indices in by_node(self.client, [keys[0] for _, keys, _ in calls]):
            group = [calls[i] for i in indices]
            evals = [(self._operation(name), (len(keys), *keys, *args)) for name, keys, args in group]
            got = script_pipeline(node, evals, partial(self._load, node, group))
            for i, reply in zip(indices, got, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
