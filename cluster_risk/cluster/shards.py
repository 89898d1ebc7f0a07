"""Shards, key names and the deployment record: what every process of a fleet must agree on.

``shard = crc32(account_id) mod S``.  S is fixed per deployment: the first process to start
stores it in ``<prefix>:deployment`` (field ``shards``), and every publisher, worker or client
that comes later with another S refuses to start (:class:`DeploymentError`), since events
would then go to shards no worker reads, or state would be split.  The record also keeps the
rules' names and dimensions (``rules``) so a gateway can read the pause hashes without the
engine config.

Identity and config (docs/operations.md, "Lost Redis state", "Config drift").  The record holds
a random deployment ``id``, written once by the process that creates it, which also writes it
into every shard's lease hash (field ``deployment``, no TTL) before it marks the record
``ready``; ``apply.lua`` refuses a batch whose shard does not carry the worker's id
(``lost``): Redis lost that shard's state (FLUSHALL, a restart without persistence,
eviction).  Only a worker creates a record (a publisher only when told the shard count,
and never while workers are alive), and a running process that finds the record gone or
replaced treats it as state loss.  Lost shards are listed in ``<prefix>:state_lost`` (shard
-> JSON: since, by, detail) until ``cluster-risk recover`` writes the id back (audited).  The
first worker stores its engine config (``config``: canonical JSON; ``fingerprint``: its
SHA-256); a process presenting another config is refused with a diff (:class:`ConfigDrift`),
the stored one is never overwritten.

Keys of shard N (hash tag ``{sN}``: one Redis Cluster slot; the state keys are
:mod:`cluster_risk.state.redis`'s)::

    P:{sN}:in        input stream: entries {e: wire JSON of one event, i: its line index (optional)}
    P:{sN}:lease     lease and cursor: owner, epoch, expires, sid, aid, applied (lua/lease.lua);
                     deployment: the deployment id the shard's state belongs to
    P:{sN}:actions   actions stream: entries {a: action JSON}
    P:{sN}:dead      dead letters: entry, index, error, field, reason, event (its first KiB), length
    P:{sN}:pub:ID    publisher ID's last sequence number on the shard (a day's TTL; lua/publish.lua)
    P:{sN}:paused:manual  manual pauses (kill switches): field -> JSON (lua/manual.lua)
    P:{sN}:audit     audit stream of manual pauses, resumes and resets: when, who, why, what, scope, account, ...
    P:{rN}:route:D   oid -> account of the orders published on UTC day D (by crc32(oid) mod S)
    P:workers        live workers (lua/heartbeat.lua); P:actions: the pub/sub hint channel
    P:state_lost     shards whose state was lost: shard -> JSON {since, by, detail}
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from redis import Redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import ResponseError

from cluster_risk.config import EngineConfig
from cluster_risk.errors import ConfigDrift, DeploymentError
from cluster_risk.keys import MANUAL, Keys, to_bytes, to_text
from cluster_risk.rules.base import BaseRule, DailyCapRule, WindowRule
from cluster_risk.state.functions import LuaOperation
from cluster_risk.state.redis import by_node, load_lua, script_pipeline, takes_shebang

__all__ = [
    "DEFAULT_SHARDS",
    "MANUAL",
    "ConfigDrift",
    "Deployment",
    "DeploymentError",
    "Keys",
    "Scripts",
    "check_eviction",
    "config_document",
    "config_fingerprint",
    "text",
]

DEFAULT_SHARDS = 16
Client = Redis | RedisCluster


def text(value: object) -> str:
    """A Redis reply as text (:func:`cluster_risk.keys.to_text`: lone surrogates come back)."""
    return to_text(value)


_READY_WAIT_S = 10.0  # how long a joining process waits for a record's creator to finish


class Deployment:
    """The stored deployment record; :meth:`ensure` creates or checks it."""

    def __init__(self, client: Client, prefix: str = "risk") -> None:
        self.client = client
        self.prefix = prefix
        self.key = f"{prefix}:deployment"
        self.id: str | None = None  # the deployment id, once ensure() joined or created it

    def stored_shards(self) -> int | None:
        got = self.client.hget(self.key, "shards")
        return None if got is None else int(text(got))

    def stored_id(self) -> str | None:
        got = self.client.hget(self.key, "id")
        return None if got is None else text(got)

    def ensure(self, shards: int | None, *, create: bool = True, wait_s: float = 0.0) -> Keys:
        """Join the deployment, checking S; ``shards=None`` takes the stored value.  With no
        record: ``create`` makes a new one (S or the default; its id written into every
        shard), unless live workers show that a fleet is running (then its record was lost:
        :class:`DeploymentError`); without ``create``, :class:`DeploymentError` once ``wait_s``
        passed without one (workers starting)."""
        if shards is not None and not 1 <= shards <= 1 << 16:
            raise DeploymentError(f"shards: must be in [1, 65536], got {shards}")
        deadline = time.monotonic() + wait_s
        while not create and self.client.exists(self.key) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.client.exists(self.key) == 0:
            if not create:
                raise DeploymentError(
                    f"no deployment under prefix {self.prefix!r}: start the workers first "
                    "(a publisher creates one only when given the shard count)"
                )
            if self._live_workers() and self.client.exists(self.key) == 0:  # (not: created meanwhile)
                raise DeploymentError(
                    f"workers are alive under prefix {self.prefix!r} but its deployment record is gone: "
                    "Redis lost its state (FLUSHALL, restart without persistence, eviction?); "
                    "not recreating it (docs/operations.md, 'Lost Redis state')"
                )
            self.client.hsetnx(self.key, "shards", str(shards or DEFAULT_SHARDS))
        stored = self.stored_shards()
        if stored is None:  # a record with no shard count (written by hand?): take ours
            self.client.hsetnx(self.key, "shards", str(shards or DEFAULT_SHARDS))
            stored = self.stored_shards()
        assert stored is not None
        if shards is not None and stored != shards:
            raise DeploymentError(
                f"this deployment ({self.key}) has {stored} shards, this process was started with {shards}: "
                "the shard count is fixed for a deployment's life (use the stored one, or another prefix)"
            )
        keys = Keys(self.prefix, stored)
        self.id = self._identity(keys)
        return keys

    def _identity(self, keys: Keys) -> str:
        """The record's id: claimed by the first process (which writes it into every shard's
        lease hash, then marks the record ready), else waited for until ready."""
        mine = secrets.token_hex(8)
        if self.client.hsetnx(self.key, "id", mine):
            self._initialise(keys, mine)
            return mine
        deadline = time.monotonic() + _READY_WAIT_S
        while True:
            got = self.client.hmget(self.key, ["id", "ready"])
            if got[0] is not None and got[1] is not None:
                return text(got[0])
            if got[0] is None:
                raise DeploymentError(f"the deployment record {self.key} vanished while this process joined it")
            if time.monotonic() > deadline:  # its creator died while writing the shards' id:
                self._initialise(keys, text(got[0]))  # no worker joined (none joins before ready)
                return text(got[0])
            time.sleep(0.05)

    def _initialise(self, keys: Keys, deployment_id: str) -> None:
        """A new record's id into every shard's lease hash, then the record marked ready."""
        pipe = self.client.pipeline(transaction=False)
        for shard in range(keys.shards):  # HSETNX: a shard holding another id stays lost
            pipe.hsetnx(keys.lease(shard), "deployment", deployment_id)
        pipe.execute()
        self.client.hset(self.key, mapping={"ready": "1", "created": str(time.time_ns())})

    def _live_workers(self) -> bool:
        """Any worker in the live set (lua/heartbeat.lua)?  Its entries outlive a dead fleet
        until the next beat, which only makes this refuse more often, never less."""
        return bool(self.client.zcard(f"{self.prefix}:workers"))

    def store_config(self, config: EngineConfig) -> None:
        """Store the config at the first worker's start (with its rules), else check it:
        another config raises :class:`ConfigDrift` with a readable diff; never overwritten."""
        rules = config.rules
        _no_manual(rules)
        document = config_json(config)
        if self.client.hsetnx(self.key, "config", document):
            self.client.hset(
                self.key,
                mapping={"fingerprint": config_fingerprint(config), "rules": json.dumps(rule_dimensions(rules))},
            )
        self.check_config(config)

    def check_config(self, config: EngineConfig) -> None:
        """Refuse (:class:`ConfigDrift`) a config other than the stored one; nothing stored: fine."""
        got = self.client.hmget(self.key, ["config", "fingerprint"])
        if got[0] is None:
            return
        if got[1] is not None and text(got[1]) == config_fingerprint(config):
            return
        stored = json.loads(text(got[0]))
        presented = config_document(config)
        if stored == presented:
            return
        raise ConfigDrift(
            f"this process's engine config differs from the one deployment {self.prefix!r} stored at its "
            f"first start (fingerprint {text(got[1]) if got[1] else '?'}, this one {config_fingerprint(config)}); "
            f"refusing to join - {config_diff(stored, presented)} "
            "(start it with the deployment's config; changing it is a new deployment, see docs/operations.md)"
        )

    def store_rules(self, rules: Sequence[BaseRule]) -> None:
        """Write the rules' record (what a gateway reads without a config) as given."""
        _no_manual(rules)
        self.client.hset(self.key, "rules", json.dumps(rule_dimensions(rules)))

    def record(self) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.client.hgetall(self.key).items()}

    def restore(self, record: Mapping[str, str]) -> bool:
        """Write back a record that vanished (a running process's copy), unless someone wrote
        one meanwhile; True if this call wrote it.  Its shards are lost: the caller marks them."""
        if not self.client.hsetnx(self.key, "id", record["id"]):
            return False
        fields: dict[str | bytes, str | bytes] = {k: v for k, v in record.items()}
        fields["restored"] = str(time.time_ns())
        self.client.hset(self.key, mapping=fields)  # type: ignore[arg-type]
        return True

    def mark_lost(self, keys: Keys, shards: Sequence[int], by: str, detail: str) -> None:
        """List these shards in ``<prefix>:state_lost`` (the first report of each is kept)."""
        if not shards:
            return
        note = json.dumps({"since": time.time_ns(), "by": by, "detail": detail})
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hsetnx(keys.state_lost, str(shard), note)
        pipe.execute()

    def lost(self, keys: Keys) -> dict[int, dict[str, Any]]:
        """The shards listed as lost, with their report."""
        got = self.client.hgetall(keys.state_lost)
        return {int(text(k)): json.loads(text(v)) for k, v in got.items()}

    def stored_config(self) -> dict[str, Any] | None:
        got = self.client.hget(self.key, "config")
        return None if got is None else dict(json.loads(text(got)))

    def rules(self) -> list[dict[str, Any]]:
        got = self.client.hget(self.key, "rules")
        return [] if got is None else list(json.loads(text(got)))


def _no_manual(rules: Sequence[BaseRule]) -> None:
    for rule in rules:
        if rule.name == MANUAL:
            raise DeploymentError(f"rule name {MANUAL!r} is reserved in the cluster for manual pauses")


def config_document(config: EngineConfig) -> dict[str, Any]:
    """The engine config as one canonical JSON-able document: every rule with every parameter
    (defaults included, so equal configs written differently are equal), the mapping and the
    trading day."""
    start = config.trading_day.start
    return {
        "rules": [_rule_document(r) for r in config.rules],
        "contract_to_product": dict(sorted(config.contract_to_product.items())),
        "trading_day": {"timezone": config.trading_day.timezone, "start": f"{start.hour:02d}:{start.minute:02d}"},
        "id_retention_days": config.id_retention_days,
    }


def _rule_document(rule: BaseRule) -> dict[str, Any]:
    """A rule's parameters with the defaults that depend on others resolved (its name, a
    window's resume threshold), so that writing a default out changes nothing."""
    document: dict[str, Any] = {"type": rule.type_name, **rule.params.model_dump(mode="json"), "name": rule.name}
    if isinstance(rule, WindowRule):
        document["resume_threshold"] = rule.resume_threshold
    return document


def config_json(config: EngineConfig) -> str:
    return json.dumps(config_document(config), sort_keys=True, separators=(",", ":"))


def config_fingerprint(config: EngineConfig) -> str:
    """SHA-256 of the canonical JSON of the config (:func:`config_document`), hex."""
    return hashlib.sha256(config_json(config).encode()).hexdigest()


def config_diff(stored: Any, presented: Any, limit: int = 20) -> str:
    """``path: stored X, this process Y`` for every leaf that differs, ``; ``-joined."""
    a, b = _leaves(stored), _leaves(presented)
    lines = []
    for path in sorted(a.keys() | b.keys()):
        if a.get(path, _ABSENT) != b.get(path, _ABSENT):
            lines.append(f"{path}: stored {_shown(a.get(path, _ABSENT))}, this process {_shown(b.get(path, _ABSENT))}")
    more = f"; ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


_ABSENT = object()


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _leaves(v, f"{path}.{k}" if path else str(k))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out |= _leaves(v, f"{path}[{i}]")
        return out if value else {path: []}
    return {path: value}


def check_eviction(client: Client) -> None:
    """Refuse (:class:`DeploymentError`) a Redis that may evict keys: every primary's
    ``maxmemory_policy`` (``INFO memory``, which the documented worker ACL allows, unlike
    ``CONFIG``) must be ``noeviction``.  A Redis that does not say (``INFO`` refused or without
    the field) is refused too: the operator confirms the policy and passes ``--allow-eviction``."""
    if isinstance(client, RedisCluster):
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]  # type: ignore[no-untyped-call]
    else:
        nodes = [client]
    for node in nodes:
        try:
            policy = node.info("memory").get("maxmemory_policy")
        except ResponseError as exc:
            policy, why = None, f"INFO refused: {exc}"
        else:
            why = "INFO memory has no maxmemory_policy"
        if policy is None:
            raise DeploymentError(
                f"cannot read Redis's maxmemory-policy ({why}); a worker needs noeviction (an evicted key "
                "is silently lost state): confirm it with your provider and pass --allow-eviction"
            )
        if text(policy) != "noeviction":
            raise DeploymentError(
                f"Redis's maxmemory-policy is {text(policy)!r}, not 'noeviction': an evicted key is silently "
                "lost state (counts from zero); set maxmemory-policy noeviction "
                "(--allow-eviction skips this check, for tests)"
            )


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
    """The cluster's own scripts (lease, release, heartbeat, snapshot, health, trim), loaded once per client."""

    NAMES = ("lease.lua", "release.lua", "heartbeat.lua", "snapshot.lua", "health.lua", "trim.lua")

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
        return self._script(name)(keys=list(keys), args=_encoded(args))

    def _load(self, node: Any, calls: Sequence[tuple[str, Any, Any]], missing: list[int]) -> None:
        for name in {calls[k][0] for k in missing}:
            node.script_load(self._script(name).script)

    def many(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """(script, keys, args) calls in one pipeline per server, replies in order; a call
        answered NOSCRIPT (it ran nothing) is sent again after loading.  A failed call raises."""
        replies: list[Any] = [None] * len(calls)
        for node, indices in by_node(self.client, [keys[0] for _, keys, _ in calls]):
            group = [calls[i] for i in indices]
            evals = [(self._operation(name), (len(keys), *keys, *_encoded(args))) for name, keys, args in group]
            got = script_pipeline(node, evals, partial(self._load, node, group))
            for i, reply in zip(indices, got, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


def _encoded(args: Sequence[Any]) -> list[Any]:
    """Script arguments with text as :func:`cluster_risk.keys.to_bytes` (ids may hold lone
    surrogates, which redis-py's own encoding refuses)."""
    return [to_bytes(a) if isinstance(a, str) else a for a in args]
