"""What an operator asks of a running fleet: workers, shard owners and epochs, lag, pauses.

Lag is exact: a shard's input stream counts every entry ever added (``XINFO STREAM``
``entries-added``, Redis 7) and the apply script counts every entry it applied (``applied`` in
the lease hash, written in the same atomic step), so ``added - applied`` is what was published
and not yet applied, whatever was trimmed. (Redis 6.2 has no ``entries-added``: there it is
the entries after the shard's cursor, ``cluster_risk.cluster.gauges.shard_lag``.)
"""

from __future__ import annotations

from typing import Any

from cluster_risk.cluster.gauges import shard_lag
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
    return [shard_lag(client, keys, shard, replies[2 * shard], replies[2 * shard + 1]) for shard in range(keys.shards)]


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
        return {"deployment": None, "workers": [], "shards": [], "lag": 0, "paused": []}
    keys = Keys(prefix, shards)
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
    for shard in range(shards):
        lease = {text(k): text(v) for k, v in next(replies).items()}
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
        "deployment": {"prefix": prefix, "shards": shards},
        "workers": workers,
        "shards": rows,
        "lag": sum(lags),
        "paused": paused,
    }
