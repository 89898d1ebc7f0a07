"""The worker: leases shards, reads their input streams, applies each shard's batch in one
script call (state, cursor, actions, dead letters: ``lua/apply.lua`` with ``fence.lua`` and
``emit.lua``) that also publishes the batch's latency hint for gateways (with replicated
durability the worker publishes it, after WAIT).  Stateless: everything it knows is in Redis,
so any worker can die at any instruction and another carries on from the shard's cursor.

A round: one ``XREAD`` of every held shard (per Redis node on a cluster, where a read cannot
span slots), the entries of each shard decoded and planned, and every shard's script call
(the shards are independent: each call is atomic on its own).  On one server each call is
sent as soon as its shard is planned, so Redis applies a shard while the worker plans the
next; on a cluster the calls go in one pipeline per node.  When a round found nothing, the
next read blocks briefly (standalone) or the worker polls (cluster: after 1 ms, doubling while
idle up to 20 ms); there is no waiting under load, so a thin input makes small batches at low
latency and a heavy one bigger ones.

Failure handling, by what the worker can know:

- the script refused the batch as ``fenced``: another worker took the shard; drop it;
- ``gap`` (the shard's cursor is not where this worker left it: a failover lost applied
  batches), a lost reply that the client's own retry could not recover, a connection error:
  the outcome is unknown, so the worker rereads the shard's cursor and batch number from Redis
  and goes on from there - a batch that was applied is not applied again (the cursor moved,
  or the retried batch number and digest are recognised), one that was not is applied now;
- ``abort`` (a trade whose order left the index in the same batch): nothing was written; the
  trade is rejected and the shard's batch sent again in the next pipeline of the round;
- ``lost`` (the shard does not carry this deployment's id: Redis lost its state): the shard is
  listed in ``<prefix>:state_lost`` and the worker applies nothing more to it (it keeps serving
  the others) until ``cluster-risk recover`` writes the id back.  Each beat also checks the
  deployment record: gone (FLUSHALL, restart without persistence) -> written back from this
  worker's copy with every shard listed lost; replaced by another deployment -> every shard
  listed lost and the worker stops (:class:`DeploymentError`, exit 2).

Entries read for a shard are applied only if the shard's cursor is still the one they were
read after (a lease lost and taken back meanwhile means reading again).  Streams stay bounded
(:class:`Retention`): about once a second, and when the worker stops, each held shard's input
stream is trimmed below the cursor stored in Redis (``lua/trim.lua``: applied entries only,
less those kept for ``input_s``), its actions and dead letters to their age (and the dead
letters to a length).

Only Redis errors are caught (``redis.exceptions.RedisError``, and the store's
:class:`StoreError` that wraps them); anything else is a bug and stops the worker, whose
leases then expire and move on - except where one entry meets it: decoding an entry or
planning a batch, where the entry is dead-lettered (``internal_error``, traceback logged) and
the worker goes on, since a poison entry would otherwise stop every worker that takes the shard.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, TimeoutError

from cluster_risk.cluster.leases import Leases
from cluster_risk.cluster.render import DeadLetter, Renderer, dead_letter
from cluster_risk.cluster.shards import Client, Deployment, DeploymentError, Keys, Scripts, check_eviction, text
from cluster_risk.cluster.status import total_lag
from cluster_risk.config import EngineConfig
from cluster_risk.errors import INTERNAL_ERROR, EventError, RiskError
from cluster_risk.events import Event, Tick
from cluster_risk.observability import WorkerMetrics
from cluster_risk.remote import KnownIds, RemoteEngine, ShardBatch
from cluster_risk.state.functions import LuaOperation
from cluster_risk.state.redis import RedisStore, StoreError, by_node, load_lua, script_pipeline, takes_shebang
from cluster_risk.wire import decode_entries

__all__ = ["Durability", "Retention", "ShardLost", "Worker", "WorkerStats"]

log = logging.getLogger("cluster_risk.cluster.worker")
# How a Lua error at run time reads: Redis 7 and Valkey (a script or a function), and Redis 6.2
# ("Error running script (call to f_<sha>): @user_script:..."); a refusal the script returns is
# a reply, not an error.
_SCRIPT_FAILED = ("user_script:", "user_function:", "Error running script ")


class ShardLost(RiskError, RedisError):
    """The apply script refused a batch (``lost``, ``fenced``, ``gap``, ``stale``, ``conflict``).

    Also a :class:`redis.RedisError`: the worker's loop handles it where it handles Redis
    failures (the shard is released and retried)."""

    def __init__(self, shard: int, status: str, detail: str) -> None:
        super().__init__(f"shard {shard}: batch refused ({status}, {detail})")
        self.shard = shard
        self.status = status


_ACCOUNT = re.compile(r'"account_id"\s*:\s*"([^"\\]*)"')  # a dead letter's account, when it names one
# b"XREAD", not "XREAD": redis-py looks its reply callback up by the command's name, and the
# callback turns every entry's fields into a dict; the worker reads the raw reply instead.
_XREAD = b"XREAD"
_NONE = object()  # a rejected entry's place in a batch planned again without it
SCRIPT_ERROR = "script_error"  # a dead letter's error when apply.lua failed on that entry alone


@dataclass(frozen=True, kw_only=True)
class Durability:
    """``replicas=0``: fast (asynchronous replication).  ``replicas=n``: every round's script
    calls are followed by ``WAIT n timeout_ms`` on the same connection, and nothing more is
    done for those shards (no hint, no next batch) until it returns."""

    replicas: int = 0
    timeout_ms: int = 1000


@dataclass(frozen=True, kw_only=True)
class Retention:
    """How much of each held shard's streams a worker keeps (docs/operations.md has what each
    costs in memory).  ``input_s``: applied input entries published less than this long ago
    stay (for replay and audit); entries not yet applied are never trimmed.  ``actions_s``,
    ``dead_s``: actions and dead letters older than this go; ``dead_maxlen``: at most this many
    dead letters per shard (0: no cap).  A gateway back from an outage resyncs from its
    snapshot, so trimming actions loses it nothing.  Trimmed every
    ``every_s`` per shard, when the worker stops, and never in an apply script."""

    input_s: float = 0.0
    actions_s: float = 86_400.0
    dead_s: float = 7 * 86_400.0
    dead_maxlen: int = 10_000
    every_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("input_s", "actions_s", "dead_s", "every_s"):
            value = getattr(self, name)
            if not 0 <= value < 1e12:  # seconds; NaN and infinity refused too
                raise ValueError(f"retention {name}: must be a number of seconds >= 0, got {value}")
        if self.dead_maxlen < 0:
            raise ValueError(f"retention dead_maxlen: must be >= 0, got {self.dead_maxlen}")


@dataclass
class WorkerStats:
    entries: int = 0
    batches: int = 0
    actions: int = 0
    dead: int = 0
    refused: int = 0
    again: int = 0  # batches whose reply was lost and whose retry got the stored result
    resyncs: int = 0
    not_replicated: int = 0
    lease_changes: int = 0
    held: list[int] = field(default_factory=list)


def _fields(raw: Any) -> tuple[bytes, str]:
    """An entry's event (``e``) and line index (``i``) from its field list (or dict)."""
    if type(raw) is list:
        n = len(raw)
        if n == 4 and raw[0] == b"e" and raw[2] == b"i":
            return raw[1], text(raw[3])  # any bytes: a poison index must not stop the worker
        if n == 2 and raw[0] == b"e":
            return raw[1], ""
        raw = dict(zip(raw[::2], raw[1::2], strict=False))
    elif not isinstance(raw, dict):
        return b"", ""
    got = {text(k): v for k, v in raw.items()}
    event = got.get("e", b"")
    return (event.encode() if isinstance(event, str) else event), text(got.get("i", ""))


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _reply(conn: Any) -> Any:
    """The next reply on ``conn``; an error reply (a missing script, ...) as its exception."""
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


class _Batch:
    """A shard's entries decoded: the events, and for each entry its event or dead letter."""

    def __init__(self, entries: Sequence[Any], tick: Tick | None, poison: tuple[str, str] | None = None) -> None:
        """``poison``: (entry id, reason) of an entry apply.lua failed on alone (a dead letter)."""
        self.events: list[Event] = []
        self.entries = len(entries)
        self.last = text(entries[-1][0]) if entries else ""
        self._origin: list[tuple[Any, str, bytes]] = []  # per event: entry id, line index, raw
        self._slots: list[DeadLetter | int] = []  # per entry: its dead letter, or its event's index
        parsed = [_fields(fields) for _, fields in entries]
        decoded = decode_entries([raw for raw, _ in parsed])
        events = self.events
        origin = self._origin
        slots = self._slots
        if poison is not None:  # apply.lua failed on that entry alone: its dead letter
            decoded = [
                EventError(SCRIPT_ERROR, "", poison[1]) if text(entry[0]) == poison[0] else event
                for entry, event in zip(entries, decoded, strict=True)
            ]
        for (entry_id, _), (raw, index), event in zip(entries, parsed, decoded, strict=True):
            if isinstance(event, EventError):
                slots.append(dead_letter(text(entry_id), index, event, raw))
                continue
            slots.append(len(events))
            events.append(event)
            origin.append((entry_id, index, raw))
        if tick is not None:
            events.append(tick)

    def dead_letters(self, outcomes: Sequence[Any]) -> list[DeadLetter]:
        """Every rejected entry, in stream order: undecodable, or refused by the engine."""
        dead: list[DeadLetter] = []
        for slot in self._slots:
            if isinstance(slot, tuple):
                dead.append(slot)
            elif isinstance(outcomes[slot], EventError):
                eid, index, raw = self._origin[slot]
                dead.append(dead_letter(text(eid), index, outcomes[slot], raw))
        return dead


def _tune_gc() -> None:
    """Every batch allocates thousands of short-lived objects; with the default thresholds the
    collector ran every 700 of them and often walked the engine's long-lived state (then the
    largest share of a worker's CPU).  The objects of start-up are frozen, and collections are rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], 20_000), 20, 100)


@dataclass
class _Cursor:
    epoch: int
    seq: int  # the next batch number (the shard's hwm + 1)
    sid: str  # the last applied input entry id


class _Job:
    """One shard's batch in a round: decoded, planned, and its script call's arguments."""

    __slots__ = ("args", "batch", "cursor", "dead", "keys", "planned", "shard")

    def __init__(self, shard: int, cursor: _Cursor, batch: _Batch, planned: ShardBatch, keys: list[str]) -> None:
        self.shard = shard
        self.cursor = cursor
        self.batch = batch
        self.planned = planned
        self.keys = keys
        self.args: list[Any] = []
        self.dead: list[DeadLetter] = []


class Worker:
    """One worker process's loop (``run``); ``stop()`` ends it after the current round."""

    def __init__(
        self,
        config: EngineConfig,
        client: Client,
        *,
        worker_id: str,
        prefix: str = "risk",
        shards: int | None = None,
        tick_ms: int = 1000,
        batch: int = 1000,
        lease_ms: int = 2000,
        durability: Durability | None = None,
        actions_maxlen: int = 0,
        retention: Retention | None = None,
        clock: Callable[[], int] = time.time_ns,
        max_events: int | None = None,
        drain: bool = False,
        metrics: WorkerMetrics | None = None,
        tune_gc: bool = False,
        allow_eviction: bool = False,
    ) -> None:
        """``tune_gc``: the process is the worker's own (``cluster-risk worker``): freeze the
        objects of start-up and let the collector run less often (process-wide settings).
        ``allow_eviction``: skip the check that Redis never evicts keys (tests only)."""
        config.require_account_dimension()
        self.client = client
        if not allow_eviction:
            check_eviction(client)
        self.deployment = deployment = Deployment(client, prefix)
        self.keys: Keys = deployment.ensure(shards)
        deployment.store_config(config)
        assert deployment.id is not None  # set by ensure
        self.deployment_id: str = deployment.id
        self._record = deployment.record()  # written back if it vanishes (a FLUSHALL)
        self.lost: set[int] = set()  # shards whose state was lost: nothing is applied to them
        self.store = RedisStore(client, prefix=prefix, num_shards=self.keys.shards)
        self.engine = RemoteEngine.from_config(config, self.store)
        self.renderer = Renderer(config.rules, self.engine.calendar, actions_maxlen)
        self.leases = Leases(client, self.keys, worker_id, lease_ms)
        self.worker_id = worker_id
        self.tick_ms = tick_ms
        self.batch = batch
        self.durability = durability or Durability()
        self.retention = retention or Retention()
        self._trim_at: dict[int, float] = {}  # shard -> when its streams are trimmed next
        self._scripts = Scripts(client)
        self.clock = clock
        self.max_events = max_events
        self.drain = drain
        self.stats = WorkerStats()
        self.metrics = metrics
        self.tune_gc = tune_gc
        self.turned_at = time.monotonic()  # the loop's last turn (liveness probe)
        self.block_ms = 20  # an idle round's XREAD blocks this long (standalone)
        self.poll_s = 0.001  # an idle round's wait on a cluster (no multi-slot blocking read)
        self.cursors: dict[int, _Cursor] = {}
        # a script error (apply.lua failed at run time, so not Redis's fault): per shard, the
        # last entry of the batch it failed on (its entries are then applied one at a time), and
        # an entry whose batch of one failed (it becomes a dead letter): see _isolate
        self._narrow: dict[int, str] = {}
        self._poison: dict[int, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._next_beat = 0.0
        self._script: LuaOperation | None = None
        self._constants: bytes | None = None  # apply.lua's ARGV[6]
        self._is_cluster = isinstance(client, RedisCluster)

    # ------------------------------------------------------------------ the loop

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> WorkerStats:
        """Work until ``stop()``, ``max_events`` entries applied, or (``drain``) nothing left."""
        self.store.encode([])  # decide the codec (msgpack on a real server)
        if self.tune_gc:
            _tune_gc()
        shebang = takes_shebang(self.store.client)  # not on Redis 6.2 (nor fakeredis): EVALSHA there
        self._script = LuaOperation("apply.lua", load_lua("apply.lua", shebang=shebang), functions=shebang)
        next_tick = 0.0
        idle = 0
        try:
            while not self._stop.is_set():
                now = self.turned_at = time.monotonic()
                self._maybe_beat()
                if self.tick_ms and now >= next_tick:
                    self._tick_all()
                    next_tick = now + self.tick_ms / 1000
                applied = self._round(idle)
                self._trim()
                idle = 0 if applied else idle + 1
                if self.max_events is not None and self.stats.entries >= self.max_events:
                    break
                if self.drain and not applied and self.leases.held and self._deployment_lag() == 0:
                    break
        finally:
            self._trim(final=True)
            self._leave()
        return self.stats

    def _trim(self, final: bool = False) -> None:
        """Trim the held shards' streams that are due (all of them when ``final``):
        ``lua/trim.lua`` per shard, pipelined per server; a failure is logged and the trim
        tried again later."""
        retention, now = self.retention, time.monotonic()
        due = [s for s in sorted(self.leases.held) if final or now >= self._trim_at.get(s, 0.0)]
        if not due:
            return
        args = [int(retention.input_s * 1000), int(retention.actions_s * 1000), int(retention.dead_s * 1000)]
        keys = self.keys
        calls = [
            ("trim.lua", [keys.lease(s), keys.input(s), keys.actions(s), keys.dead(s)], [*args, retention.dead_maxlen])
            for s in due
        ]
        for shard in due:
            self._trim_at[shard] = now + retention.every_s
        try:
            self._scripts.many(calls)
        except (RedisError, StoreError) as exc:
            log.warning("trimming streams failed (tried again later): %s", exc)

    def _leave(self) -> None:
        try:
            self.leases.leave()
        except RedisError as exc:  # Redis gone: the leases expire on their own
            log.warning("could not release leases: %s", exc)

    def _maybe_beat(self) -> None:
        """Beat when due: called between node pipelines too, so a slow round (WAIT timeouts,
        a failover) does not let the leases expire."""
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.leases.beat_ms / 1000
            self._check_deployment()
            self._beat()

    def _check_deployment(self) -> None:
        """The deployment record and the lost shards, once per beat: a record gone is written
        back from this worker's copy with every shard listed lost; a record of another
        deployment stops the worker (every shard listed lost first)."""
        try:
            found = self.deployment.stored_id()
            every = list(range(self.keys.shards))
            if found is None:
                restored = self.deployment.restore(self._record)
                self.deployment.mark_lost(self.keys, every, self.worker_id, "deployment record gone")
                log.error(
                    "the deployment record %s is gone (FLUSHALL, or Redis restarted without persistence?): "
                    "%s, every shard listed as lost until `cluster-risk recover`",
                    self.deployment.key, "written back" if restored else "written back by another worker",
                )  # fmt: skip
            elif found != self.deployment_id:
                self.deployment.mark_lost(self.keys, every, self.worker_id, f"deployment record replaced by {found}")
                raise DeploymentError(
                    f"the deployment record {self.deployment.key} now names deployment {found}, this worker joined "
                    f"{self.deployment_id}: Redis lost its state; every shard listed as lost, stopping"
                )
            lost = set(self.deployment.lost(self.keys))
        except (RedisError, StoreError) as exc:
            log.warning("deployment check failed: %s", exc)
            return
        for shard in lost - self.lost:
            self.cursors.pop(shard, None)
            log.error("shard %d: state lost, applying nothing to it until `cluster-risk recover`", shard,
                      extra={"shard": shard})  # fmt: skip
        for shard in self.lost - lost:
            self.cursors.pop(shard, None)  # recovered: reread its cursor
            log.warning("shard %d recovered: applying again", shard, extra={"shard": shard})
        self.lost = lost
        if self.metrics is not None:
            self.metrics.state_lost.set(len(lost))

    def _beat(self) -> None:
        try:
            gained, lost = self.leases.beat()
        except (RedisError, StoreError) as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.inc()
            log.warning("heartbeat failed: %s", exc, extra={"shards": sorted(self.leases.held)})
            if self._is_cluster:  # the leases are renewed per node: a slot may have moved
                self._refresh_cluster()
            return
        for shard in lost:
            self.cursors.pop(shard, None)
        for shard in gained:
            self.cursors.pop(shard, None)  # loaded from Redis before its first batch
        if gained or lost:
            if self.metrics is not None:
                self.metrics.lease_changes.labels(change="gained").inc(len(gained))
                self.metrics.lease_changes.labels(change="lost").inc(len(lost))
            self.stats.lease_changes += len(gained) + len(lost)
            self.stats.held = sorted(self.leases.held)
            log.info(
                "shards now %s (gained %s, lost %s)", self.stats.held, sorted(gained), sorted(lost),
                extra={"shards": self.stats.held, "gained": sorted(gained), "lost": sorted(lost)},
            )  # fmt: skip

    def _cursor(self, shard: int) -> _Cursor | None:
        epoch = self.leases.held.get(shard)
        if epoch is None:
            return None
        cursor = self.cursors.get(shard)
        if cursor is None or cursor.epoch != epoch:
            self._load_cursors([shard])
            cursor = self.cursors[shard]
        return cursor

    def _load_cursors(self, shards: Sequence[int]) -> None:
        """Read the cursors (batch number, last applied entry) of these held shards."""
        if self._is_cluster:
            replies = []
            for shard in shards:
                replies += [self.client.hget(self.keys.meta(shard), "hwm")]
                replies += [self.client.hget(self.keys.lease(shard), "sid")]
        else:
            pipe = self.client.pipeline(transaction=False)
            for shard in shards:
                pipe.hget(self.keys.meta(shard), "hwm")
                pipe.hget(self.keys.lease(shard), "sid")
            replies = pipe.execute()
        for k, shard in enumerate(shards):
            hwm, sid = replies[2 * k], replies[2 * k + 1]
            epoch = self.leases.held[shard]
            self.cursors[shard] = _Cursor(epoch, int(text(hwm)) + 1 if hwm else 1, text(sid) if sid else "0-0")

    # ------------------------------------------------------------------ reading

    def _round(self, idle: int = 0) -> int:
        """Read every held shard once and apply what came; the number of entries applied."""
        try:
            held = {s: epoch for s, epoch in self.leases.held.items() if s not in self.lost}
            stale = [s for s, epoch in held.items() if (c := self.cursors.get(s)) is None or c.epoch != epoch]
            if stale:
                self._load_cursors(sorted(stale))
            wanted = {s: self.cursors[s].sid for s in sorted(held)}
            if not wanted:
                self._stop.wait(0.05)
                return 0
            got = self._read(wanted, idle)
        except (RedisError, StoreError) as exc:
            self._trouble(None, exc)
            return 0
        batches = {}
        for shard, entries in got.items():
            if self.cursors[shard].sid == wanted[shard]:  # else: moved since these were read
                batches[shard] = self._batch(shard, entries)
        try:  # fills without account: their orders' index entries, all shards in one round
            lookups = {shard: self.engine.lookup_fields(batch.events) for shard, batch in batches.items()}
            known = self.engine.lookup_ids(lookups) if any(lookups.values()) else {}
        except (RedisError, StoreError) as exc:
            self._trouble(None, exc)
            return 0
        if not self._is_cluster:
            return self._run_streamed(batches, known)
        jobs = []
        for shard, batch in batches.items():
            job = self._job(shard, batch, known.get(shard))
            if job is not None:
                jobs.append(job)
        return self._run(jobs, raise_refusals=False)

    def _run_streamed(self, batches: Mapping[int, _Batch], known: Mapping[int, KnownIds]) -> int:
        """The round on one server: each shard's script call is sent as soon as it is planned,
        on one connection, and the replies are read after the last; Redis applies a shard
        while the worker plans the next, so a round lasts about the longer of the two, not
        their sum.  A Redis error on the way sends the round's calls again as one pipeline
        (an applied batch answers "again"), as redis-py's retry of a pipeline would."""
        script = self._script
        assert script is not None  # set by run()
        jobs: list[_Job] = []
        replies: list[Any] | None = None
        one_server: Any = self.client  # a Redis, not a RedisCluster: it has a connection pool
        pool = one_server.connection_pool
        conn = pool.get_connection()
        read = False  # every reply read: the connection can go back to the pool as it is
        try:
            for shard, batch in batches.items():
                job = self._job(shard, batch, known.get(shard))
                if job is not None:
                    jobs.append(job)
                    call = script.command(len(job.keys), *job.keys, *job.args[:9])
                    conn.send_packed_command(conn.pack_command(*call))
            replicas = self.durability.replicas
            if replicas and jobs:
                conn.send_packed_command(conn.pack_command("WAIT", replicas, self.durability.timeout_ms))
            replies = [_reply(conn) for _ in jobs]
            if replicas and jobs:
                self._acked(_reply(conn))
            read = True
        except RedisError as exc:
            log.debug("streamed round failed (%s): sending its calls again", exc)
            replies = None
        finally:
            if not read:
                conn.disconnect()  # replies may still be on their way
            pool.release(conn)
        return self._run(jobs, raise_refusals=False, sent=replies)

    def _read(self, wanted: Mapping[int, str], idle: int) -> dict[int, list[Any]]:
        """Every wanted shard's entries after its id; ``idle``: rounds in a row that found
        nothing (the read then blocks, or on a cluster waits, before the next round)."""
        shard_of = {self.keys.input(s): s for s in wanted}
        count = (b"COUNT", self.batch)
        if not self._is_cluster:  # one call for every shard, blocking briefly when idle
            blocking = (b"BLOCK", self.block_ms) if idle else ()
            names = list(shard_of)
            client: Any = self.client
            reply = client.execute_command(_XREAD, *count, *blocking, b"STREAMS", *names, *wanted.values())
            return self._streams(reply, shard_of)
        out: dict[int, list[Any]] = {}
        for node, keys in self._by_node(list(shard_of)).items():  # a read cannot span slots
            pipe = node.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command(_XREAD, *count, b"STREAMS", key, wanted[shard_of[key]])
            for reply in pipe.execute():
                out.update(self._streams(reply, shard_of))
        if not out and idle:  # a cluster has no multi-slot blocking read: poll, 1 ms after
            self._stop.wait(min(self.poll_s * 2 ** min(idle - 1, 5), 0.02))  # work, up to 20 ms
        return out

    @staticmethod
    def _streams(reply: Any, shard_of: Mapping[str, int]) -> dict[int, list[Any]]:
        """XREAD's raw reply (a map in RESP3, pairs in RESP2) -> shard -> entries."""
        if not reply:
            return {}
        pairs = reply.items() if isinstance(reply, dict) else reply
        return {shard_of[text(k)]: entries for k, entries in pairs if entries}

    def _by_node(self, keys: Sequence[str]) -> dict[Any, list[str]]:
        """Keys grouped by the client of the server that holds them."""
        return {node: [keys[i] for i in indices] for node, indices in by_node(self.client, keys)}

    # ------------------------------------------------------------------ applying

    def _apply(self, shard: int, entries: Sequence[Any], tick: Tick | None = None, after: str | None = None) -> None:
        """Apply ``entries`` (read after input id ``after``) and/or a tick to ``shard`` on its
        own; a refusal raises :class:`ShardLost`."""
        cursor = self._cursor(shard)
        if cursor is None or (after is not None and cursor.sid != after):
            return  # the shard moved (lost, or reloaded) since these entries were read
        job = self._job(shard, _Batch(entries, tick), None)
        if job is not None:
            self._run([job], raise_refusals=True)

    def _job(self, shard: int, batch: _Batch, known: KnownIds | None) -> _Job | None:
        cursor = self._cursor(shard)
        if cursor is None or shard in self.lost:
            return None  # lost meanwhile (its lease, or its state)
        planned = self._plan(shard, batch, known)
        keys = [self.keys.meta(shard), self.keys.lease(shard), self.keys.actions(shard), self.keys.dead(shard)]
        job = _Job(shard, cursor, batch, planned, keys)
        self._arguments(job)
        return job

    def _batch(self, shard: int, entries: Sequence[Any]) -> _Batch:
        """A round's batch of the shard: one entry at a time while a script error is being
        narrowed down to its entry (which is then dead-lettered: _isolate)."""
        first = _stream_id(text(entries[0][0]))
        until = self._narrow.get(shard)
        if until is not None:
            if first > _stream_id(until):
                del self._narrow[shard]
            else:
                entries = entries[:1]
        poison = self._poison.get(shard)
        if poison is not None and first > _stream_id(poison[0]):
            del self._poison[shard]
            poison = None
        return _Batch(entries, None, poison)

    def _isolate(self, job: _Job, exc: RedisError | StoreError) -> None:
        """apply.lua failed at run time on this batch: an entry the script cannot take (a bug)
        would fail it again and again, and the shard would stall.  Its entries are applied one
        at a time from now on; an entry that fails alone is dead-lettered (``script_error``)."""
        message = str(exc)
        if not message.startswith(_SCRIPT_FAILED) or not job.batch.entries:
            return
        shard, batch = job.shard, job.batch
        if batch.entries > 1:
            self._narrow[shard] = batch.last
            log.error("shard %d: apply.lua failed (%s): applying its entries one by one", shard, message)
        else:
            self._poison[shard] = (batch.last, message[:500])
            log.error("shard %d: apply.lua failed on entry %s (%s): dead-lettering it", shard, batch.last, message)

    def _plan(self, shard: int, batch: _Batch, known: KnownIds | None) -> ShardBatch:
        """The engine's plan of the batch.  An exception that is not Redis's comes from a bug
        that some entry meets: each event is planned alone to find which, those are
        dead-lettered (``internal_error``, the exception as reason) and the rest is planned,
        so one entry never stops the worker (that would stop every worker that takes the shard)."""
        try:
            return self.engine.plan_shard(shard, batch.events, checked=True, known=known)
        except (RedisError, StoreError):
            raise
        except Exception:
            log.exception("planning a batch of shard %d failed: looking for the entry", shard, extra={"shard": shard})
            bad: dict[int, EventError] = {}
            for i, event in enumerate(batch.events):
                try:
                    self.engine.plan_shard(shard, [event], checked=True, known=known)
                except (RedisError, StoreError):
                    raise
                except Exception as exc:
                    bad[i] = EventError(INTERNAL_ERROR, "", f"{type(exc).__name__}: {exc}"[:500])
            if not bad:
                raise  # no single entry's doing
            events: list[Any] = [_NONE if i in bad else e for i, e in enumerate(batch.events)]
            planned = self.engine.plan_shard(shard, events, checked=True, known=known)
            for i, error in bad.items():
                planned.outcomes[i] = error  # (_NONE was rejected as unknown_type)
            return planned

    def _arguments(self, job: _Job) -> None:
        """apply.lua's ARGV for the job's (current) plan."""
        batch, planned, cursor = job.batch, job.planned, job.cursor
        dead = job.dead = batch.dead_letters(planned.outcomes)
        scopes = planned.scopes() if self.renderer.stateless else {}
        extras = self.renderer.extras(
            cursor.sid, batch.last, batch.entries, batch.events, planned.positions, scopes, dead
        )
        if not self.durability.replicas:  # the script publishes the hint (after WAIT, the worker does)
            extras += [self.keys.channel, job.shard]
        xblob = self.store.encode(extras)
        blob = planned.blob
        digest = hashlib.blake2b(blob + xblob, digest_size=16).hexdigest()
        constants = self._constants
        if constants is None:  # the same bytes in every call: apply.lua decodes them once per server
            constants = self._constants = self.engine.constants((self.renderer.rules,))
        seq = cursor.seq
        job.args = [blob, seq, digest, self.store.codec, seq - 1, constants, cursor.epoch, xblob, self.deployment_id]
        job.args.append(len(dead))

    def _run(self, jobs: list[_Job], raise_refusals: bool, sent: list[Any] | None = None) -> int:
        """Send the jobs' script calls (one pipeline per node), settle the replies, publish
        the hints; returns the number of entries applied.  ``sent``: the jobs (on one server)
        were sent already and these are their replies (the calls that found no script are
        loaded and sent again)."""
        applied = 0
        hints: list[bytes] = []
        while jobs:
            again: list[_Job] = []
            started = time.perf_counter()
            for node, group in self._jobs_by_node(jobs).items():
                if not raise_refusals:  # in the loop (not a lone _apply): keep the leases alive
                    self._maybe_beat()
                try:
                    got = self._eval(node, group, sent)
                except (RedisError, StoreError) as exc:
                    if raise_refusals:
                        raise
                    self._trouble(None if len(group) > 1 else group[0].shard, exc)
                    continue
                for job, reply in zip(group, got, strict=True):
                    try:
                        status = self._settle(job, reply, hints, again)
                    except (RedisError, StoreError) as exc:
                        if raise_refusals:
                            raise
                        self._isolate(job, exc)
                        self._trouble(job.shard, exc)
                        continue
                    if status:
                        applied += job.batch.entries
                        if self.metrics is not None:
                            self.metrics.events_applied.inc(job.batch.entries)
                            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            jobs, sent = again, None
        if hints:
            self._publish(hints)
        return applied

    def _jobs_by_node(self, jobs: Sequence[_Job]) -> dict[Any, list[_Job]]:
        return {node: [jobs[i] for i in indices] for node, indices in by_node(self.client, [j.keys[0] for j in jobs])}

    def _settle(self, job: _Job, reply: Any, hints: list[bytes], again: list[_Job]) -> bool:
        """One script reply: True when the batch is applied (now or before)."""
        if isinstance(reply, Exception):
            raise reply
        status = text(reply[0])
        if status == "abort":  # nothing written: reject that trade, send the rest again
            self.engine.drop_aborted(job.planned, int(reply[1]))
            self._arguments(job)
            again.append(job)
            return False
        if status not in ("ok", "again"):
            raise ShardLost(job.shard, status, text(reply[1]))
        shard, cursor, batch = job.shard, job.cursor, job.batch
        if status == "ok":
            hint = reply[2]
            self.stats.dead += job.args[9]
            for entry_id, _, code, field, reason, raw, _ in job.dead:
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(reason=code).inc()
                account = _ACCOUNT.search(raw)
                log.warning(
                    "dead-lettered entry %s: %s %s (%s)", entry_id, code, field, reason,
                    extra={"shard": shard, "account": account and account.group(1), "entry": entry_id},
                )  # fmt: skip
            if len(hint) > 1:
                self.stats.actions += (len(hint) - 1) // 2
                if self.durability.replicas:
                    hints.append(self.store.encode([shard, *(text(x) for x in hint)]))
                for action in hint[2::2]:
                    parsed = json.loads(action)
                    if self.metrics is not None:
                        self.metrics.actions.labels(type=parsed["type"], rule=parsed["rule"]).inc()
                    scope = parsed["scope"]
                    log.info(
                        "%s %s %s", parsed["type"], parsed["rule"], scope,
                        extra={"shard": shard, "account": scope.get("account"), "reason": parsed.get("reason")},
                    )  # fmt: skip
        else:
            self.stats.again += 1
        cursor.seq += 1
        if batch.last:
            cursor.sid = batch.last
        self.stats.entries += batch.entries
        self.stats.batches += 1
        return True

    def _eval(self, node: Any, jobs: Sequence[_Job], sent: Sequence[Any] | None = None) -> list[Any]:
        """apply.lua (FCALL, or EVALSHA without Functions) for each job in one pipeline, loading
        it where the node lacks it and sending those again (such a call ran nothing), then WAIT
        on the same connection when durability asks for replicas.  ``sent``: the calls went out
        already (:meth:`_run_streamed`) and these are their replies.  Per job its reply, or the
        error it got."""
        script = self._script
        assert script is not None  # set by run()
        calls = [(script, (len(job.keys), *job.keys, *job.args[:9])) for job in jobs]
        replicas = self.durability.replicas
        wait = ("WAIT", replicas, self.durability.timeout_ms) if replicas else ()
        return script_pipeline(node, calls, lambda _: script.load(node), wait, self._acked, sent)

    def _acked(self, acked: Any) -> None:
        """WAIT's reply after a pipeline of batches: how many replicas have them."""
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.durability.replicas:
            self.stats.not_replicated += 1
            log.warning("batches acknowledged by %s of %d replicas", acked, self.durability.replicas)

    def _publish(self, hints: Sequence[bytes]) -> None:
        """The latency hints: shard, previous action id, then id/JSON pairs.  Best effort: the
        stream is the record, a client that misses a hint resyncs from it."""
        try:
            if len(hints) == 1 or self._is_cluster:
                for hint in hints:
                    self.client.publish(self.keys.channel, hint)
                return
            pipe = self.client.pipeline(transaction=False)
            for hint in hints:
                pipe.publish(self.keys.channel, hint)
            pipe.execute()
        except RedisError as exc:
            log.debug("hint not published: %s", exc)

    def _tick_all(self) -> None:
        now = self.clock()
        jobs = []
        for shard in sorted(self.leases.held.keys() - self.lost):
            try:
                job = self._job(shard, _Batch([], Tick(now)), None)
            except (RedisError, StoreError) as exc:
                self._trouble(shard, exc)
                continue
            if job is not None:
                jobs.append(job)
        self._run(jobs, raise_refusals=False)

    def _trouble(self, shard: int | None, exc: RedisError | StoreError) -> None:
        """An unknown or refused outcome: forget the cursor(s), reread them next round."""
        if isinstance(exc, ShardLost):
            self.stats.refused += 1
            if exc.status == "fenced":
                self.leases.drop(exc.shard)
                log.warning("%s: another worker holds it now", exc, extra={"shard": exc.shard})
            elif exc.status == "lost":
                self._state_lost(exc)
            else:
                log.warning("%s: rereading its cursor", exc, extra={"shard": exc.shard})
        else:
            self.stats.resyncs += 1
            if self.metrics is not None:
                self.metrics.redis_errors.inc()
            log.warning("redis error (shard %s): %s", shard, exc, extra={"shard": shard})
            if isinstance(exc, RedisConnectionError | TimeoutError | ResponseError) and self._is_cluster:
                self._refresh_cluster()
            self._stop.wait(0.05)
        if shard is None:
            self.cursors.clear()
        else:
            self.cursors.pop(shard, None)

    def _state_lost(self, exc: ShardLost) -> None:
        """The shard does not carry this deployment's id: list it as lost, apply nothing more."""
        self.lost.add(exc.shard)
        log.error(
            "%s: the shard's state was lost (FLUSHALL, restart without persistence, eviction?): applying "
            "nothing to it until `cluster-risk recover`", exc, extra={"shard": exc.shard},
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.state_lost.set(len(self.lost))
        try:
            self.deployment.mark_lost(self.keys, [exc.shard], self.worker_id, str(exc))
        except RedisError as error:  # listed at the next refusal
            log.warning("could not list shard %d as lost: %s", exc.shard, error)

    def _refresh_cluster(self) -> None:
        try:
            self.client.nodes_manager.initialize()  # type: ignore[union-attr]
        except RedisError as exc:
            log.debug("cluster map refresh failed: %s", exc)

    def _deployment_lag(self) -> int:
        try:
            return total_lag(self.client, self.keys)
        except RedisError:
            return -1
