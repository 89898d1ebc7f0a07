"""What an operator does to a running fleet: look at one account (``inspect``), pause or resume
it by hand (the kill switch, with an audit trail), and reset daily sums (``reset-daily``).

Manual pauses.  A manual pause is a pause of the pseudo-rule ``manual`` (no configured rule
may take that name in the cluster) on a scope ``{account}``, ``{account, contract}`` or
``{account, product}``.  It lives in its shard's ``P:{sN}:paused:manual`` hash, which the
apply script never reads or writes, so no automatic resume (a window back under its resume
threshold, a tick, a trading-day rollover, ``reset_daily``) can lift it: only
:meth:`Ops.resume`.  A rule's own pause on the same scope comes and goes independently;
a gateway refuses an order while any pause matches it.

``lua/manual.lua`` writes, in one step, the hash, a ``PAUSE_ORDER``/``RESUME_ORDER`` entry in
the shard's actions stream (what every :class:`~cluster_risk.cluster.client.RiskClient` and
``cluster-risk actions`` follow) and an entry in the shard's audit stream ``P:{sN}:audit``
(``when`` wall-clock ns, ``who``, ``why``, ``what``, ``scope``, ``account``, ``action`` =
the actions entry id).  The audit is per shard so that the write stays in one Redis Cluster
slot; :meth:`Ops.audit` merges the shards by time.

The action of a manual pause::

    {"type": "PAUSE_ORDER", "rule": "manual", "scope": {"account": "A", "contract": "C"},
     "timestamp": <wall clock ns>, "value": 0, "limit": 0,
     "reason": "manual pause by alice@host: <reason>"}

Recovering a shard whose state was lost (``recover``, docs/operations.md "Lost Redis state"):
the deployment's id is written back into the shard's lease hash, the shard leaves
``<prefix>:state_lost``, and an audit record (``what`` = ``recover``) goes to the shard's audit
stream.  The shard then counts from the state Redis holds now (after a FLUSHALL: nothing).

Per-account ``reset_daily`` (an ops extension, not in the contract) travels as a
``reset_account`` event through the account's shard stream (:class:`Publisher`), so the
worker applies it exactly once, in order with the shard's other events.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from redis.exceptions import RedisError

from cluster_risk.cluster.shards import (
    MANUAL,
    Client,
    Deployment,
    DeploymentError,
    Keys,
    Scripts,
    rule_dimensions,
    text,
)
from cluster_risk.cluster.streams import Publisher
from cluster_risk.config import EngineConfig
from cluster_risk.events import ResetDaily
from cluster_risk.keys import scope_key, scope_values, to_bytes
from cluster_risk.state.redis import RedisStore

__all__ = ["ManualResult", "Ops", "manual_field", "manual_scope", "operator"]

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_dumps_raw = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_PAUSE_TEXT = re.compile(r"^since=(\S+) value=(\S+) limit=(\S+)(?: day=(\S+))? account=(.*)$", re.S)
_GLOB = re.compile(r"([*?\[\]\\])")


def operator() -> str:
    """The default ``who`` of an audit record: ``$USER@hostname``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def manual_field(scope: Mapping[str, str]) -> str:
    """The hash field of a manual pause: the account, then dimension name and value pairs,
    each percent-escaped as scope keys are (``A``, ``A:contract:C``, ``A:product:P``)."""
    parts = [scope["account"]]
    for dim, value in scope.items():
        if dim != "account":
            parts += [dim, value]
    return scope_key(parts)


def manual_scope(field: str) -> dict[str, str]:
    values = scope_values(field)
    scope = {"account": values[0]}
    for dim, value in zip(values[1::2], values[2::2], strict=False):
        scope[dim] = value
    return scope


def scope_text(scope: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in scope.items())


@dataclass
class ManualResult:
    """``status``: ``ok`` (done), ``already`` (a pause of that scope is in place: ``current``)
    or ``not_paused`` (nothing to resume); nothing was written unless ``ok``."""

    status: str
    shard: int
    scope: dict[str, str]
    action: dict[str, Any] = field(default_factory=dict)
    action_id: str = ""
    audit_id: str = ""
    current: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "shard": self.shard, "scope": self.scope}
        if self.status == "ok":
            out |= {"action": self.action, "action_id": self.action_id, "audit_id": self.audit_id}
        if self.current:
            out["current"] = self.current
        return out


class Ops:
    """The operator's view of one deployment (``prefix``); it must exist (a worker or a
    publisher started it), so that the shard count is the deployment's."""

    def __init__(self, client: Client, prefix: str = "risk") -> None:
        self.client = client
        deployment = Deployment(client, prefix)
        shards = deployment.stored_shards()
        if shards is None:
            raise DeploymentError(f"no deployment under prefix {prefix!r} (start a worker or publish first)")
        self.deployment = deployment
        self.keys = Keys(prefix, shards)
        self.scripts = Scripts(client)

    # ------------------------------------------------------------------ kill switch

    def seen(self, account: str) -> bool:
        """Whether the account's shard holds its account record (written when a worker applies
        any event of the account; it expires with the shard's other state after the id
        retention), i.e. whether a pause of it is likely meant, not a typo."""
        shard = self.keys.shard_of(account)
        return bool(self.client.hexists(self.keys.base(shard) + "acct", account))

    def pause(self, scope: Mapping[str, str], reason: str, who: str, now_ns: int | None = None) -> ManualResult:
        return self._manual("pause", scope, reason, who, now_ns)

    def resume(self, scope: Mapping[str, str], reason: str, who: str, now_ns: int | None = None) -> ManualResult:
        return self._manual("resume", scope, reason, who, now_ns)

    def _manual(self, op: str, scope: Mapping[str, str], reason: str, who: str, now_ns: int | None) -> ManualResult:
        scope = dict(scope)
        now = time.time_ns() if now_ns is None else now_ns
        shard = self.keys.shard_of(scope["account"])
        kind = "PAUSE_ORDER" if op == "pause" else "RESUME_ORDER"
        action = {
            "type": kind,
            "rule": MANUAL,
            "scope": scope,
            "timestamp": now,
            "value": 0,
            "limit": 0,
            "reason": f"manual {op} by {who}: {reason}",
        }
        pause = {"since": now, "who": who, "reason": reason, "scope": scope}
        audit = ["when", str(now), "who", who, "why", reason, "what", op, "scope", _dumps(scope)]
        audit += ["account", scope["account"]]
        keys = [self.keys.manual(shard), self.keys.lease(shard), self.keys.actions(shard), self.keys.audit(shard)]
        args = [op, manual_field(scope), _dumps(pause), _dumps(action), *audit]
        reply = self.scripts("manual.lua", keys, args)
        status = text(reply[0])
        if status == "already":
            return ManualResult(status, shard, scope, current=json.loads(text(reply[1])))
        if status != "ok":
            return ManualResult(status, shard, scope)
        previous, action_id, audit_id = (text(x) for x in reply[1:4])
        self._hint(shard, previous, action_id, _dumps(action))
        return ManualResult(status, shard, scope, action, action_id, audit_id)

    def _hint(self, shard: int, previous: str, action_id: str, action: str) -> None:
        """The same latency hint a worker publishes (best effort: gateways poll the stream)."""
        try:
            store = RedisStore(self.client, prefix=self.keys.prefix, num_shards=self.keys.shards)
            self.client.publish(self.keys.channel, store.encode([shard, previous, action_id, action]))
        except RedisError:
            pass

    def audit(self, account: str | None = None) -> list[dict[str, Any]]:
        """The audit records, by time: of every shard, or those of ``account`` (its manual
        pauses and resumes, its resets, and the resets of every account).  A reset of every
        account is recorded on every shard and shown once, with the shards it reached."""
        shards = range(self.keys.shards) if account is None else [self.keys.shard_of(account)]
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.xrange(self.keys.audit(shard))
        merged: dict[tuple[str, ...], dict[str, Any]] = {}
        for shard, entries in zip(shards, pipe.execute(), strict=True):
            for entry_id, fields in entries:
                got = {text(k): text(v) for k, v in fields.items()}
                if account is not None and got.get("account", "") not in (account, ""):
                    continue
                key = tuple(got.get(f, "") for f in ("when", "who", "why", "what", "scope", "account", "at"))
                record = merged.get(key)
                if record is None:
                    record = {"when": int(got.get("when", 0)), "who": got.get("who", ""), "why": got.get("why", "")}
                    record |= {"what": got.get("what", ""), "scope": json.loads(got.get("scope", "{}"))}
                    record |= {"shards": [], "id": text(entry_id), "action": got.get("action", "")}
                    if "at" in got:
                        record["at"] = int(got["at"])
                    merged[key] = record
                record["shards"].append(shard)
        return sorted(merged.values(), key=lambda r: (r["when"], r["shards"][0], r["id"]))

    # ------------------------------------------------------------------ recover

    def lost_shards(self) -> list[int]:
        """Shards listed lost by a worker, or whose lease hash lacks the deployment's id."""
        deployment_id = self.deployment.stored_id()
        listed = self.deployment.lost(self.keys)
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hget(self.keys.lease(shard), "deployment")
        found = pipe.execute()
        return [
            shard
            for shard in range(self.keys.shards)
            if shard in listed
            or (deployment_id is not None and (found[shard] is None or text(found[shard]) != deployment_id))
        ]

    def recover(self, shards: Sequence[int] | None, reason: str, who: str) -> dict[str, Any]:
        """Start these lost shards (``None``: every lost shard) afresh: the deployment's id
        back in their lease hash, off the lost list, one audit record each.  A shard that is
        not lost is refused (:class:`DeploymentError`), nothing changed."""
        deployment_id = self.deployment.stored_id()
        if deployment_id is None:
            raise DeploymentError(f"the deployment record {self.deployment.key} has no id: start a worker first")
        lost = self.lost_shards()
        if shards is None:
            shards = lost
        for shard in shards:
            if not 0 <= shard < self.keys.shards:
                raise DeploymentError(f"--shard: {shard} is not a shard of this deployment (0..{self.keys.shards - 1})")
            if shard not in lost:
                raise DeploymentError(f"--shard: shard {shard} has not lost its state; nothing changed")
        now = str(time.time_ns())
        record = {"when": now, "who": who, "why": reason, "what": "recover", "scope": "{}", "account": ""}
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hset(self.keys.lease(shard), "deployment", deployment_id)
            pipe.xadd(self.keys.audit(shard), record | {"shard": str(shard)})  # type: ignore[arg-type]
        pipe.execute()
        if shards:  # off the list last: a worker applies again only once the id is back
            self.client.hdel(self.keys.state_lost, *(str(shard) for shard in shards))
        return {"recovered": sorted(shards), "deployment": deployment_id, "who": who, "why": reason, "when": int(now)}

    # ------------------------------------------------------------------ inspect

    def rules(self, config: EngineConfig | None) -> list[dict[str, Any]]:
        """The stateful rules: from ``config``, else as the workers stored them."""
        rules = rule_dimensions(config.rules) if config is not None else self.deployment.rules()
        if config is None and (not rules or any("kind" not in r for r in rules)):
            raise DeploymentError("no worker of this deployment has stored its rules' parameters yet: pass --config")
        return rules

    def inspect(self, account: str, rules: Sequence[Mapping[str, Any]], at_ns: int | None = None) -> dict[str, Any]:
        """Window counts at ``at_ns`` (default now), the account's current day's sums and its
        current pauses (rules' and manual), read by ``lua/inspect.lua`` in one step."""
        at = time.time_ns() if at_ns is None else at_ns
        shard = self.keys.shard_of(account)
        escaped = scope_key([account])
        spec: list[dict[str, Any]] = []
        places = []
        for r in rules:
            dims = list(r["dimensions"])
            place = dims.index("account")
            places.append(place)
            entry: dict[str, Any] = {"kind": "w" if r["kind"] == "window" else "d", "name": scope_key([r["name"]])}
            if dims == ["account"]:
                entry |= {"exact": escaped, "match": ""}
            else:
                parts = ["*"] * len(dims)
                parts[place] = _GLOB.sub(r"\\\1", escaped)
                entry |= {"exact": "", "match": ":".join(parts)}
            if r["kind"] == "window":
                entry |= {"K": r["window_ns"] // r["bucket_ns"], "c": at // r["bucket_ns"]}
            spec.append(entry)
        manual_match = _GLOB.sub(r"\\\1", escaped) + "*"
        # UTF-8 as is (surrogatepass, by Scripts): cjson refuses a lone surrogate's \u escape
        payload = _dumps_raw({"account": account, "rules": spec, "manual": manual_match})
        reply = self.scripts("inspect.lua", [self.keys.meta(shard)], [payload])
        day = int(text(reply[0]))
        out: dict[str, Any] = {
            "account": account,
            "shard": shard,
            "at": at,
            "day": date.fromordinal(day).isoformat() if day > 0 else None,
            "windows": [],
            "sums": [],
            "pauses": [],
        }
        for k, (r, place) in enumerate(zip(rules, places, strict=True)):
            values, paused = _pairs(reply[1 + 2 * k]), _pairs(reply[2 + 2 * k])
            dims = list(r["dimensions"])
            for key, value in values.items():
                scope = _scope(dims, key, place, account)
                if scope is None:
                    continue
                if r["kind"] == "window":
                    row = {"rule": r["name"], "scope": scope, "count": int(value)}
                    out["windows"].append(row | {"threshold": r["threshold"], "resume": r["resume_threshold"]})
                else:
                    row = {"rule": r["name"], "scope": scope, "sum": _number(value), "cap": r["daily_cap"]}
                    out["sums"].append(row)
            for key, detail in paused.items():
                scope = _scope(dims, key, place, account)
                if scope is not None:
                    out["pauses"].append(_rule_pause(r, scope, detail))
        for key, detail in _pairs(reply[-1]).items():
            scope = manual_scope(key)
            if scope["account"] == account:
                pause = json.loads(detail)
                out["pauses"].append(
                    {"rule": MANUAL, "scope": scope, "since": pause.get("since"), "value": None, "limit": None}
                    | {"reason": pause.get("reason", ""), "who": pause.get("who", "")}
                )
        return out

    # ------------------------------------------------------------------ reset

    def reset_daily(
        self, account: str | None, at_ns: int | None = None, who: str = "", reason: str = ""
    ) -> dict[str, Any]:
        """Publish a ``reset_daily`` to every shard, or a ``reset_account`` to the account's
        shard, in order with the events already in the streams (the workers apply it), then
        record it in the audit stream of each shard it went to (``what`` = ``reset_daily``,
        ``at`` = the reset's timestamp).  Not one atomic step: a failure after the publish
        leaves the reset without its audit record (and the command exits 2)."""
        at = time.time_ns() if at_ns is None else at_ns
        publisher = Publisher(self.client, prefix=self.keys.prefix, shards=self.keys.shards, retry_s=0)
        publisher.publish([(None, ResetDaily(at, account))])
        shards = list(range(self.keys.shards)) if account is None else [self.keys.shard_of(account)]
        scope = {} if account is None else {"account": account}
        record = {"when": str(time.time_ns()), "who": who, "why": reason, "what": "reset_daily"}
        record |= {"scope": _dumps(scope), "account": account or "", "at": str(at)}
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.xadd(self.keys.audit(shard), {k: to_bytes(v) for k, v in record.items()})
        pipe.execute()
        return {"published": "reset_daily", "account": account, "timestamp": at, "shards": shards}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A flat field/value reply (HSCAN may repeat a field) as a sorted dict."""
    items = list(flat)
    got = {text(k): text(v) for k, v in zip(items[::2], items[1::2], strict=True)}
    return dict(sorted(got.items()))


def _scope(dims: list[str], key: str, place: int, account: str) -> dict[str, str] | None:
    values = scope_values(key)
    if len(values) != len(dims) or values[place] != account:
        return None
    return dict(zip(dims, values, strict=True))


def _rule_pause(rule: Mapping[str, Any], scope: dict[str, str], detail: str) -> dict[str, Any]:
    found = _PAUSE_TEXT.match(detail)
    if found is None:
        return {"rule": rule["name"], "scope": scope, "since": None, "value": None, "limit": None, "reason": detail}
    since, value, limit, day = found.group(1), _number(found.group(2)), _number(found.group(3)), found.group(4)
    if rule["kind"] == "window":
        reason = f"{value} orders in {rule['window_ns']} ns > threshold {rule['threshold']}"
    else:
        reason = f"daily {rule.get('metric', 'sum')} {value} > cap {rule['daily_cap']}"
    pause: dict[str, Any] = {"rule": rule["name"], "scope": scope, "since": int(since), "value": value}
    pause |= {"limit": _number(found.group(3)) if limit is not None else None, "reason": reason}
    if day:
        pause["day"] = day
    return pause


def _number(value: str) -> int | float:
    return float(value) if any(c in value for c in ".eEnN") else int(value)
