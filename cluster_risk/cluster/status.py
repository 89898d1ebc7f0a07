"""What an operator asks of a running fleet: workers, shard owners and epochs, lag, pauses.

Lag is exact: a shard's input stream counts every entry ever added (``XINFO STREAM``
``entries-added``, Redis 7) and the apply script counts every entry it applied (``applied`` in
the lease hash, written in the same atomic step), so ``added - applied`` is what was published
and not yet applied, whatever was trimmed.

Lost state: ``state_lost`` lists the shards listed in ``<prefix>:state_lost`` by a worker, and
those whose lease hash does not carry the deployment's id (found here, with or without a
worker); ``cluster-risk status`` exits 1 while any is listed.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from cluster_risk.cluster.ops import manual_scope
from cluster_risk.cluster.shards import MANUAL, Client, Deployment, Keys, text
from cluster_risk.remote import scope_values

__all__ = ["fleet_status", "shard_lags", "total_lag"]


def shard_lags(client: Client, keys: Keys) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.execute_command("XINFO", "STREAM", keys.input(shard))
        pipe.hget(keys.lease(shard), "applied")
    replies = pipe.execute(raise_on_error=False)
    lags = []
    for shard in range(keys.shards):
        info, applied = replies[2 * shard], replies[2 * shard + 1]
        if isinstance(info, ResponseError):  # no such stream: nothing published yet
            added = 0
        elif isinstance(info, Exception):
            raise info
        else:
            added = int(_field(info, "entries-added"))
        lags.append(added - (int(text(applied)) if applied else 0))
    return lags


def total_lag(client: Client, keys: Keys) -> int:
    return sum(shard_lags(client, keys))


def _field(info: Any, name: str) -> Any:
    if isinstance(info, dict):
        for k, v in info.items():
            if text(k) == name:
                return v
        return 0
    items = list(info)
    for k, v in zip(items[::2], items[1::2], strict=True):
        if text(k) == name:
            return v
    return 0


def fleet_status(client: Client, prefix: str = "risk") -> dict[str, Any]:
    deployment = Deployment(client, prefix)
    shards = deployment.stored_shards()
    if shards is None:
        return {"deployment": None, "workers": [], "shards": [], "lag": 0, "paused": [], "state_lost": []}
    keys = Keys(prefix, shards)
    deployment_id = deployment.stored_id()
    listed = deployment.lost(keys)
    rules = deployment.rules()
    workers = sorted(text(w) for w in client.zrange(keys.workers, 0, -1))
    lags = shard_lags(client, keys)
    pipe = client.pipeline(transaction=False)
    for shard in range(shards):
        pipe.hgetall(keys.lease(shard))
        for rule in rules:
            pipe.hgetall(keys.paused(shard, rule["name"]))
        pipe.hgetall(keys.manual(shard))
    replies = iter(pipe.execute())
    rows = []
    paused = []
    state_lost = []
    for shard in range(shards):
        lease = {text(k): text(v) for k, v in next(replies).items()}
        if shard in listed or (deployment_id is not None and lease.get("deployment") != deployment_id):
            state_lost.append(shard)
        rows.append(
            {
                "shard": shard,
                "owner": lease.get("owner") or None,
                "epoch": int(lease.get("epoch", 0)),
                "applied": int(lease.get("applied", 0)),
                "lag": lags[shard],
            }
        )
        for rule in rules:
            for field, why in sorted(next(replies).items()):
                scope = dict(zip(rule["dimensions"], scope_values(text(field)), strict=False))
                paused.append({"rule": rule["name"], "scope": scope, "shard": shard, "detail": text(why)})
        for field, why in sorted(next(replies).items()):  # kill switches (cluster_risk.cluster.ops)
            paused.append({"rule": MANUAL, "scope": manual_scope(text(field)), "shard": shard, "detail": text(why)})
    return {
        "deployment": {"prefix": prefix, "shards": shards, "id": deployment_id},
        "workers": workers,
        "shards": rows,
        "lag": sum(lags),
        "paused": paused,
        "state_lost": state_lost,
        "state_lost_detail": {str(shard): listed[shard] for shard in sorted(listed)},
    }
