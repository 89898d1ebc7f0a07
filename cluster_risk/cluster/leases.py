"""Shard leases: which live worker applies which shard, and the epoch that fences the others.

Every worker heartbeats into ``P:workers`` (``lua/heartbeat.lua``, server time) and gets back
the sorted list of live workers; :func:`assign` maps the shards to them (rendezvous hashing
with balanced loads), computed alike by every worker.  A worker takes the leases of its
shards (``lua/lease.lua``: taking bumps the shard's epoch), renews them on each beat (one
pipeline), and releases those the assignment moved away, so a joining worker gets its share
within two beats.  A worker that dies stops renewing: after the
lease time its heartbeat has expired and its leases are free, and the workers the new
assignment names take them.  Safety does not depend on timing: ``apply.lua`` refuses any
batch whose epoch is not the shard's current one (``lua/fence.lua``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from cluster_risk.cluster.shards import Client, Keys, Scripts, text
from cluster_risk.keys import to_bytes

__all__ = ["Leases", "assign"]

log = logging.getLogger("cluster_risk.cluster.leases")


def assign(live: Sequence[str], shards: int) -> dict[str, list[int]]:
    """Rendezvous hashing with balanced loads, the same on every worker: shard k goes to the
    live worker with the highest ``score(worker, k)`` that still has room (every worker gets
    ``shards // n`` or one more).  When a worker joins or leaves, a shard moves only if its
    own ranking or the room changes: close to the minimum (16 shards, 3 -> 4 workers: 5 move,
    against 10 by ``k mod n``)."""
    out: dict[str, list[int]] = {w: [] for w in live}
    if not live:
        return out
    base, extra = divmod(shards, len(live))
    for k in range(shards):
        for worker in sorted(live, key=lambda w: _score(w, k), reverse=True):
            n = len(out[worker])
            if n < base or (n == base and extra > 0):
                extra -= n == base
                out[worker].append(k)
                break
    return out


def _score(worker: str, shard: int) -> int:
    # unambiguous although a worker id may hold U+001F: the shard after the last one is digits
    # only; to_bytes: an --id from argv may hold a lone surrogate (surrogateescape)
    return int.from_bytes(hashlib.blake2b(to_bytes(f"{worker}\x1f{shard}"), digest_size=8).digest(), "big")


class Leases:
    """One worker's view: ``held`` maps each shard it holds to its epoch."""

    def __init__(self, client: Client, keys: Keys, worker_id: str, lease_ms: int = 2000) -> None:
        if lease_ms < 100:
            raise ValueError("lease_ms: must be at least 100")
        self.keys = keys
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.scripts = Scripts(client)
        self.held: dict[int, int] = {}
        self.live: list[str] = []

    @property
    def beat_ms(self) -> int:
        """How often to beat: a quarter of the lease, so two missed beats still keep it."""
        return max(25, self.lease_ms // 4)

    def beat(self) -> tuple[set[int], set[int]]:
        """Heartbeat, renew, release what moved away, take what is ours and free.
        Returns (shards gained, shards lost or given up) since the last beat."""
        reply = self.scripts("heartbeat.lua", [self.keys.workers], [self.worker_id, self.lease_ms, "0"])
        self.live = [text(w) for w in reply[1:]]
        mine = set(assign(self.live, self.keys.shards).get(self.worker_id, []))
        gained: set[int] = set()
        lost: set[int] = set()
        # Renewals and releases in one pipeline, then the takes in another: a beat costs two
        # round trips (per Redis node), not one per shard, so it barely delays the loop.
        held = sorted(self.held.items())
        calls = [
            ("lease.lua", [self.keys.lease(shard)], [self.worker_id, self.lease_ms, epoch])
            if shard in mine
            else ("release.lua", [self.keys.lease(shard)], [self.worker_id, epoch])
            for shard, epoch in held
        ]
        replies = self.scripts.many(calls) if calls else []
        for (shard, _), (name, _, _), got in zip(held, calls, replies, strict=True):
            if name == "release.lua":
                lost.add(shard)
            elif text(got[0]) != "kept":
                log.warning("lease on shard %d lost (epoch now %s)", shard, text(got[1]), extra={"shard": shard})
                lost.add(shard)
        for shard in lost:
            self.held.pop(shard, None)
        wanted = sorted(mine - self.held.keys())
        calls = [("lease.lua", [self.keys.lease(shard)], [self.worker_id, self.lease_ms, "0"]) for shard in wanted]
        for shard, got in zip(wanted, self.scripts.many(calls) if calls else [], strict=True):
            if text(got[0]) == "taken":
                self.held[shard] = int(got[1])
                gained.add(shard)
        return gained, lost

    def drop(self, shard: int) -> None:
        """Forget a shard whose batch was refused as fenced (another worker took it)."""
        self.held.pop(shard, None)

    def leave(self) -> None:
        """Release every lease and leave the live set: the others take over at their next beat."""
        for shard, epoch in sorted(self.held.items()):
            self.scripts("release.lua", [self.keys.lease(shard)], [self.worker_id, epoch])
        self.held.clear()
        self.scripts("heartbeat.lua", [self.keys.workers], [self.worker_id, self.lease_ms, "1"])
