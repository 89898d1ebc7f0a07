"""The cluster: sharded stateless workers over Redis, with leases, fencing and exactly-once
effects, and the gateway client.  Choices made, and why:

- **Shards.** ``crc32(account_id) mod S``; S is stored in ``<prefix>:deployment`` by the first
  process and every later one refuses another S (:mod:`.shards`).  Every key of shard N carries
  the hash tag ``{sN}``, so each script touches one Redis Cluster slot.
- **Input.** One stream per shard, ``{sN}:in``; an entry is the wire JSON of one event
  (``encode_event``) plus its line index, so a worker decodes and dead-letters exactly as
  ``cluster-risk replay`` does.  Ticks and resets go to every shard.  The publisher appends
  a chunk with one ``lua/publish.lua`` call per shard, which carries the publisher's id and a
  per-shard sequence number, so a call resent after a lost reply adds nothing (a repeated
  reset_daily would reset twice); a fill without account goes to the shard of its order's
  account (:mod:`.streams`: routes written after the order's entry).  No consumer groups: a
  shard has one writer at a time (its lease), and its cursor lives with its state (below),
  which a group's pending list cannot give.
- **Exactly once.** The worker applies a shard's batch with ``lua/apply.lua`` plus
  ``lua/fence.lua`` / ``lua/emit.lua``: one script call checks the lease epoch and the cursor
  (the last applied entry id must be the one the batch starts after) before any write, then
  writes the state, the cursor, the actions (``{sN}:actions``) and the dead letters
  (``{sN}:dead``).  A crash anywhere leaves either all of it or none; a retried call (lost
  reply) is recognised by RemoteEngine's batch number and digest and gets the stored result.
- **Batches.** A worker reads every shard it holds (one XREAD on a standalone server,
  blocking 20 ms when the last round found nothing; on a cluster a pipeline of non-blocking
  reads per node, polled after 1 ms when idle, backing off to 20 ms: a blocking read cannot
  span slots), then sends the round's script calls in one pipeline per node (shards are
  independent; each call is atomic).  No waiting under load: a thin input makes small batches at low latency, a heavy
  one bigger and cheaper batches.  Shards are assigned by rendezvous hashing with balanced
  loads (:mod:`.leases`), so a joining worker takes about its share.  Applied input is trimmed.
- **Fencing.** ``{sN}:lease`` holds owner, epoch and expiry (server time); taking a shard bumps
  the epoch (:mod:`.leases`); a batch carrying an older epoch is refused before any write, so a
  worker that was paused past its lease (SIGSTOP, GC, partition) cannot write late.
- **Actions out.** Rendered inside the script (values exist only there) and appended to the
  shard's actions stream; each shard's current pauses are its ``paused:<rule>`` hashes (the
  store's).  Pub/sub on ``<prefix>:actions`` is a latency hint: published by ``emit.lua`` as
  the script ends with fast durability (a gateway need not wait for the rest of the worker's
  pipeline; PUBLISH names no key, so the script stays one-slot), by the worker after WAIT with
  replicated durability; the stream is the record and clients repair any missed hint from it.
- **Durability.** ``fast``: Redis replicates asynchronously.  ``replicated``: the worker sends
  ``WAIT n timeout`` after each apply on the same connection and the publisher after each
  chunk; nothing more happens for that shard until WAIT returns (a timeout is logged and
  counted, not retried).  What a master crash can cost in each mode is in docs/cluster.md
  and deploy/REDIS.md.
- **Gateway.** :class:`.client.RiskClient` (sync; :class:`.client.AsyncRiskClient` is its
  asyncio face): publishes, and keeps the pause cache that answers in memory; fails closed
  after ``fail_after_s`` without Redis.
"""

from cluster_risk.cluster.client import AsyncRiskClient, RiskClient
from cluster_risk.cluster.shards import Deployment, DeploymentError, Keys
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Durability, Worker

__all__ = [
    "AsyncRiskClient",
    "Deployment",
    "DeploymentError",
    "Durability",
    "Keys",
    "Publisher",
    "RiskClient",
    "Worker",
]
