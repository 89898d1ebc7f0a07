"""What an operator asks of a running fleet: workers, shard owners and epochs, lag, pauses,
dead letters (``dead``: the count each shard's dead-letter stream holds; ``cluster-risk dead``
prints them).

Lag is what is present in a shard's input stream after its cursor (``sid`` in the lease hash,
the last entry applied).  While nobody deleted an entry (``XINFO STREAM``
``max-deleted-entry-id`` is 0-0: trimming does not set it), it is ``entries-added`` minus
``applied`` (the count the apply script keeps in the same atomic step), O(1) per shard.  Once an
operator has deleted an entry (``XDEL``), that difference would count the deleted one forever,
so the entries after the cursor are counted instead (``XRANGE``, 10,000 at a time): exact, and
``worker --drain`` ends when everything present has been applied.  Redis 6.2 reports no
``entries-added``: there the entries after the cursor are always counted (costs in
proportion to the lag).

Lost state: ``state_lost`` lists the shards listed in ``<prefix>:state_lost`` by a worker, and
those whose lease hash does not carry the deployment's id (found here, with or without a
worker); ``cluster-risk status`` exits 1 while any is listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from cluster_risk.cluster.ops import manual_scope
from cluster_risk.cluster.shards import MANUAL, Client, Deployment, Keys, text
from cluster_risk.keys import scope_values

__all__ = ["fleet_status", "lags_of", "present_after", "shard_lags", "total_lag"]


def shard_lags(client: Client, keys: Keys) -> list[int]:
    """Per shard (0..S-1), the entries in its input stream not yet applied."""
    lags = lags_of(client, keys, range(keys.shards))
    return [lags[shard] for shard in range(keys.shards)]


def lags_of(client: Client, keys: Keys, shards: Iterable[int]) -> dict[int, int]:
    """The lag of each of ``shards`` (one pipeline, then a count for a shard with deletions)."""
    order = sorted(shards)
    pipe = client.pipeline(transaction=False)
    for shard in order:
        pipe.execute_command("XINFO", "STREAM", keys.input(shard))
        pipe.hmget(keys.lease(shard), "applied", "sid")
    replies = pipe.execute(raise_on_error=False)
    lags: dict[int, int] = {}
    for k, shard in enumerate(order):
        info, lease = replies[2 * k], replies[2 * k + 1]
        if isinstance(info, ResponseError):  # no such stream: nothing published yet
            lags[shard] = 0
            continue
        if isinstance(info, Exception):
            raise info
        if isinstance(lease, Exception):
            raise lease
        applied, sid = lease
        added = _field(info, "entries-added")  # None on Redis 6.2
        if added is not None and text(_field(info, "max-deleted-entry-id") or "0-0") == "0-0":
            lags[shard] = int(added) - (int(text(applied)) if applied else 0)
        else:  # an entry was deleted, or the server does not count additions: count what is there
            lags[shard] = present_after(client, keys.input(shard), text(sid) if sid else "0-0")
    return lags


def present_after(client: Client, stream: str, after: str, page: int = 10_000) -> int:
    """The entries of ``stream`` with an id above ``after``."""
    count = 0
    while True:
        got: list[Any] = client.xrange(stream, min=f"({after}", count=page) or []
        count += len(got)
        if len(got) < page:
            return count
        after = text(got[-1][0])


def total_lag(client: Client, keys: Keys) -> int:
    return sum(shard_lags(client, keys))


def _field(info: Any, name: str) -> Any:
    """A field of an ``XINFO STREAM`` reply (a dict, or a flat list from a pipeline); None where
    the server does not report it (Redis 6.2 has no ``entries-added``, ``max-deleted-entry-id``)."""
    pairs = info.items() if isinstance(info, dict) else zip(list(info)[::2], list(info)[1::2], strict=True)
    for key, value in pairs:
        if text(key) == name:
            return value
    return None


def fleet_status(client: Client, prefix: str = "risk") -> dict[str, Any]:
    deployment = Deployment(client, prefix)
    shards = deployment.stored_shards()
    if shards is None:
        return {"deployment": None, "workers": [], "shards": [], "lag": 0, "dead": 0, "paused": [], "state_lost": []}
    keys = Keys(prefix, shards)
    deployment_id = deployment.stored_id()
    listed = deployment.lost(keys)
    rules = deployment.rules()
    workers = sorted(text(w) for w in client.zrange(keys.workers, 0, -1))
    lags = shard_lags(client, keys)
    pipe = client.pipeline(transaction=False)
    for shard in range(shards):
        pipe.hgetall(keys.lease(shard))
        pipe.xlen(keys.dead(shard))
        for rule in rules:
            pipe.hgetall(keys.paused(shard, rule["name"]))
        pipe.hgetall(keys.manual(shard))
    replies = iter(pipe.execute())
    rows = []
    paused = []
    state_lost = []
    for shard in range(shards):
        lease = {text(k): text(v) for k, v in next(replies).items()}
        dead = int(next(replies))
        if shard in listed or (deployment_id is not None and lease.get("deployment") != deployment_id):
            state_lost.append(shard)
        rows.append(
            {
                "shard": shard,
                "owner": lease.get("owner") or None,
                "epoch": int(lease.get("epoch", 0)),
                "applied": int(lease.get("applied", 0)),
                "lag": lags[shard],
                "dead": dead,
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
        "dead": sum(row["dead"] for row in rows),
        "paused": paused,
        "state_lost": state_lost,
        "state_lost_detail": {str(shard): listed[shard] for shard in sorted(listed)},
    }
