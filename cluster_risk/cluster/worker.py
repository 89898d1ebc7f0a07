"""The worker: leases shards, reads their input streams, applies each shard's batch in one
script call (state, cursor, actions, dead letters: ``lua/apply.lua`` with ``fence.lua`` and
``emit.lua``), then publishes a latency hint.  Stateless: everything it knows is in Redis,
so any worker can die at any instruction and another carries on from the shard's cursor.

Failure handling, by what the worker can know:

- the script refused the batch as ``fenced``: another worker took the shard; drop it;
- ``gap`` (the shard's cursor is not where this worker left it: a failover lost applied
  batches), a lost reply that the client's own retry could not recover, a connection error:
  the outcome is unknown, so the worker rereads the shard's cursor and batch number from Redis
  and goes on from there - a batch that was applied is not applied again (the cursor moved,
  or the retried batch number and digest are recognised), one that was not is applied now.

Entries read for a shard are applied only if the shard's cursor is still the one they were
read after (a lease lost and taken back meanwhile means reading again).  Every 64 batches a
shard's input stream is trimmed up to its cursor (``XTRIM MINID ~``: applied entries only).

Only Redis errors are caught (``redis.exceptions.RedisError``, and the store's
:class:`StoreError` that wraps them); anything else is a bug and stops the worker, whose
leases then expire and move on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError, TimeoutError

from cluster_risk.cluster.leases import Leases
from cluster_risk.cluster.render import DeadLetter, Renderer, dead_letter
from cluster_risk.cluster.shards import Client, Deployment, Keys, text
from cluster_risk.config import EngineConfig
from cluster_risk.errors import EventError
from cluster_risk.events import Event, Tick
from cluster_risk.observability import WorkerMetrics
from cluster_risk.remote import RemoteEngine, ShardSender
from cluster_risk.rules.base import Scope
from cluster_risk.state.redis import RedisStore, StoreError, load_lua
from cluster_risk.wire import decode_line

__all__ = ["Durability", "ShardLost", "Worker", "WorkerStats"]

log = logging.getLogger("cluster_risk.cluster.worker")

_TRIM_EVERY = 64  # batches of a shard between two trims of its input stream


class ShardLost(RedisError):
    """The apply script refused a batch (``fenced``, ``gap``, ``stale``, ``conflict``)."""

    def __init__(self, shard: int, status: str, detail: str) -> None:
        super().__init__(f"shard {shard}: batch refused ({status}, {detail})")
        self.shard = shard
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Durability:
    """``replicas=0``: fast (asynchronous replication).  ``replicas=n``: every apply is
    followed by ``WAIT n timeout_ms`` on the same connection, and nothing more is done for the
    shard (no hint, no next batch) until it returns."""

    replicas: int = 0
    timeout_ms: int = 1000


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


class _Batch:
    """A shard's entries decoded: the events, and for each entry its event or dead letter."""

    def __init__(self, entries: Sequence[Any], tick: Tick | None) -> None:
        self.events: list[Event] = []
        self.entries = len(entries)
        self.last = text(entries[-1][0]) if entries else ""
        self._origin: list[tuple[str, str, str]] = []  # per event: entry id, line index, raw
        self._slots: list[DeadLetter | int] = []  # per entry: its dead letter, or its event's index
        for entry_id, fields in entries:
            raw = fields.get(b"e", b"")
            index = text(fields.get(b"i", b""))
            eid = text(entry_id)
            try:
                event = decode_line(raw)
            except EventError as exc:
                self._slots.append(dead_letter(eid, index, exc, raw.decode("utf-8", "replace")))
                continue
            self._slots.append(len(self.events))
            self.events.append(event)
            self._origin.append((eid, index, raw.decode("utf-8", "replace")))
        if tick is not None:
            self.events.append(tick)

    def dead_letters(self, outcomes: Sequence[Any]) -> list[DeadLetter]:
        """Every rejected entry, in stream order: undecodable, or refused by the engine."""
        dead: list[DeadLetter] = []
        for slot in self._slots:
            if isinstance(slot, tuple):
                dead.append(slot)
            elif isinstance(outcomes[slot], EventError):
                eid, index, raw = self._origin[slot]
                dead.append(dead_letter(eid, index, outcomes[slot], raw))
        return dead


@dataclass
class _Cursor:
    epoch: int
    seq: int  # the next batch number (the shard's hwm + 1)
    sid: str  # the last applied input entry id


class Worker:
    """One worker process's loop (``run``); ``stop()`` ends it after the current batch."""

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
        clock: Callable[[], int] = time.time_ns,
        max_events: int | None = None,
        drain: bool = False,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        config.require_account_dimension()
        self.client = client
        deployment = Deployment(client, prefix)
        self.keys: Keys = deployment.ensure(shards)
        deployment.store_rules(config.rules)
        self.store = RedisStore(client, prefix=prefix, num_shards=self.keys.shards)
        self.engine = RemoteEngine.from_config(config, self.store)
        self.renderer = Renderer(config.rules, self.engine.calendar, actions_maxlen)
        self.leases = Leases(client, self.keys, worker_id, lease_ms)
        self.worker_id = worker_id
        self.tick_ms = tick_ms
        self.batch = batch
        self.durability = durability or Durability()
        self.clock = clock
        self.max_events = max_events
        self.drain = drain
        self.stats = WorkerStats()
        self.metrics = metrics
        self.turned_at = time.monotonic()  # the loop's last turn (liveness probe)
        # A round that applied fewer entries than this waits gather_s before reading again:
        # each script call has a fixed cost, so tiny batches under load fall behind.
        self.gather_below = 64
        self.gather_s = 0.002
        self.cursors: dict[int, _Cursor] = {}
        self._stop = threading.Event()
        self._next_beat = 0.0
        self._script = ""
        self._sha = ""
        self._is_cluster = isinstance(client, RedisCluster)

    # ------------------------------------------------------------------ the loop

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> WorkerStats:
        """Work until ``stop()``, ``max_events`` entries applied, or (``drain``) nothing left."""
        self.store.encode([])  # decide the codec (msgpack on a real server)
        shebang = self.store.codec == "m"
        self._script = load_lua("apply.lua", shebang=shebang)
        self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        next_tick = 0.0
        idle = 0
        try:
            while not self._stop.is_set():
                now = self.turned_at = time.monotonic()
                self._maybe_beat()
                if self.tick_ms and now >= next_tick:
                    self._tick_all()
                    next_tick = now + self.tick_ms / 1000
                applied = self._round(block=idle > 0)
                idle = 0 if applied else idle + 1
                if 0 < applied < self.gather_below:
                    self._stop.wait(self.gather_s)  # a trickle: let a bigger batch gather
                if self.max_events is not None and self.stats.entries >= self.max_events:
                    break
                if self.drain and not applied and self.leases.held and self._deployment_lag() == 0:
                    break
        finally:
            self._leave()
        return self.stats

    def _leave(self) -> None:
        try:
            self.leases.leave()
        except RedisError as exc:  # Redis gone: the leases expire on their own
            log.warning("could not release leases: %s", exc)

    def _maybe_beat(self) -> None:
        """Beat when due: called between shard batches too, so a slow round (WAIT timeouts,
        a failover) does not let the leases expire."""
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.leases.beat_ms / 1000
            self._beat()

    def _beat(self) -> None:
        try:
            gained, lost = self.leases.beat()
        except (RedisError, StoreError) as exc:
            log.warning("heartbeat failed: %s", exc)
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
            log.info("shards now %s (gained %s, lost %s)", self.stats.held, sorted(gained), sorted(lost))

    def _cursor(self, shard: int) -> _Cursor | None:
        epoch = self.leases.held.get(shard)
        if epoch is None:
            return None
        cursor = self.cursors.get(shard)
        if cursor is None or cursor.epoch != epoch:
            hwm = self.client.hget(self.keys.meta(shard), "hwm")
            sid = self.client.hget(self.keys.lease(shard), "sid")
            cursor = _Cursor(epoch, int(text(hwm)) + 1 if hwm else 1, text(sid) if sid else "0-0")
            self.cursors[shard] = cursor
        return cursor

    # ------------------------------------------------------------------ reading

    def _round(self, block: bool) -> int:
        """Read every held shard once and apply what came; the number of entries applied."""
        try:
            wanted = {s: c.sid for s in sorted(self.leases.held) if (c := self._cursor(s)) is not None}
            if not wanted:
                self._stop.wait(0.05)
                return 0
            got = self._read(wanted, block)
        except (RedisError, StoreError) as exc:
            self._trouble(None, exc)
            return 0
        applied = 0
        for shard, entries in got.items():
            self._maybe_beat()
            try:
                self._apply(shard, entries, after=wanted[shard])
                applied += len(entries)
            except (RedisError, StoreError) as exc:
                self._trouble(shard, exc)
        return applied

    def _read(self, wanted: Mapping[int, str], block: bool) -> dict[int, list[Any]]:
        keys = {self.keys.input(s): s for s in wanted}
        streams: dict[Any, Any] = {self.keys.input(s): sid for s, sid in wanted.items()}
        if not self._is_cluster:  # one call for every shard, blocking briefly when idle
            reply: Any = self.client.xread(streams, count=self.batch, block=50 if block else None)
            return {keys[text(k)]: entries for k, entries in reply or [] if entries}
        pipe = self.client.pipeline(transaction=False)
        for key, sid in streams.items():
            pipe.xread({key: sid}, count=self.batch)
        out: dict[int, list[Any]] = {}
        for reply in pipe.execute():
            for k, entries in reply or []:
                if entries:
                    out[keys[text(k)]] = entries
        if not out and block:
            self._stop.wait(0.002)  # a cluster has no multi-slot blocking read: poll
        return out

    # ------------------------------------------------------------------ applying

    def _apply(self, shard: int, entries: Sequence[Any], tick: Tick | None = None, after: str | None = None) -> None:
        """Apply ``entries`` (read after input id ``after``) and/or a tick to ``shard``."""
        cursor = self._cursor(shard)
        if cursor is None or (after is not None and cursor.sid != after):
            return  # the shard moved (lost, or reloaded) since these entries were read
        batch = _Batch(entries, tick)
        hint: list[str] = []
        started = time.perf_counter()
        outcomes = self.engine.apply_shard(shard, batch.events, self._sender(shard, cursor, batch, hint))
        if self.metrics is not None:
            actions = [a for outcome in outcomes if not isinstance(outcome, EventError) for a in outcome]
            self.metrics.record_batch(len(entries), time.perf_counter() - started, actions)
        cursor.seq += 1
        if batch.last:
            cursor.sid = batch.last
            if cursor.seq % _TRIM_EVERY == 0:  # applied entries are not needed again
                self.client.xtrim(self.keys.input(shard), minid=batch.last, approximate=True)
        self.stats.entries += len(entries)
        self.stats.batches += 1
        if len(hint) > 1:
            self.stats.actions += (len(hint) - 1) // 2
            self._publish(shard, hint)

    def _sender(self, shard: int, cursor: _Cursor, batch: _Batch, hint: list[str]) -> ShardSender:
        """The script call of one batch for ``RemoteEngine.apply_shard``."""
        keys = [self.keys.meta(shard), self.keys.lease(shard), self.keys.actions(shard), self.keys.dead(shard)]

        def send(blob: bytes, positions: Sequence[int], scopes: Mapping[int, Scope], outcomes: Sequence[Any]) -> Any:
            dead = batch.dead_letters(outcomes)
            extras = self.renderer.extras(cursor.sid, batch.last, batch.entries, batch.events, positions, scopes, dead)
            xblob = self.store.encode(extras)
            digest = hashlib.blake2b(blob + xblob, digest_size=16).hexdigest()
            reply = self._eval(keys, [blob, cursor.seq, digest, self.store.codec, cursor.seq - 1, cursor.epoch, xblob])
            status = text(reply[0])
            if status in ("ok", "again"):
                if status == "ok":
                    hint.extend(text(x) for x in reply[2])
                    self.stats.dead += len(dead)
                else:
                    self.stats.again += 1
                return ("ok", self.store.decode(reply[1]) if reply[1] is not None else [])
            if status == "abort":
                return ("abort", int(reply[1]))
            raise ShardLost(shard, status, text(reply[1]))

        return send

    def _eval(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA apply.lua (loading it on NOSCRIPT), then WAIT on the same connection when
        durability asks for replicas."""
        node = self._node(keys[0])
        for attempt in range(2):
            pipe = node.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            if self.durability.replicas:
                pipe.execute_command("WAIT", self.durability.replicas, self.durability.timeout_ms)
            replies = pipe.execute(raise_on_error=False)
            if isinstance(replies[0], NoScriptError) and attempt == 0:
                node.script_load(self._script)
                continue
            if isinstance(replies[0], Exception):
                raise replies[0]
            if self.durability.replicas and int(replies[1]) < self.durability.replicas:
                self.stats.not_replicated += 1
                log.warning("batch acknowledged by %s of %d replicas", replies[1], self.durability.replicas)
            return replies[0]
        raise NoScriptError("apply.lua could not be loaded")

    def _node(self, key: str) -> Any:
        """A client whose pipeline talks to the one server holding ``key`` (so WAIT follows
        the script on the same connection)."""
        if isinstance(self.client, RedisCluster):
            return self.client.get_redis_connection(self.client.get_node_from_key(key))  # type: ignore[no-untyped-call]
        return self.client

    def _publish(self, shard: int, hint: list[Any]) -> None:
        """The latency hint: shard, previous action id, then id/JSON pairs.  Best effort: the
        stream is the record, a client that misses a hint resyncs from it."""
        try:
            self.client.publish(self.keys.channel, self.store.encode([shard, *hint]))
        except RedisError as exc:
            log.debug("hint not published: %s", exc)

    def _tick_all(self) -> None:
        now = self.clock()
        for shard in sorted(self.leases.held):
            self._maybe_beat()
            try:
                self._apply(shard, [], Tick(now))
            except (RedisError, StoreError) as exc:
                self._trouble(shard, exc)

    def _trouble(self, shard: int | None, exc: RedisError | StoreError) -> None:
        """An unknown or refused outcome: forget the cursor(s), reread them next round."""
        if isinstance(exc, ShardLost):
            self.stats.refused += 1
            if exc.status == "fenced":
                self.leases.drop(exc.shard)
                log.warning("%s: another worker holds it now", exc)
            else:
                log.warning("%s: rereading its cursor", exc)
        else:
            self.stats.resyncs += 1
            if self.metrics is not None:
                self.metrics.redis_errors.inc()
            log.warning("redis error (shard %s): %s", shard, exc)
            if isinstance(exc, RedisConnectionError | TimeoutError | ResponseError) and self._is_cluster:
                self._refresh_cluster()
            self._stop.wait(0.05)
        if shard is None:
            self.cursors.clear()
        else:
            self.cursors.pop(shard, None)

    def _refresh_cluster(self) -> None:
        try:
            self.client.nodes_manager.initialize()  # type: ignore[union-attr]
        except RedisError as exc:
            log.debug("cluster map refresh failed: %s", exc)

    def _deployment_lag(self) -> int:
        from cluster_risk.cluster.status import total_lag

        try:
            return total_lag(self.client, self.keys)
        except RedisError:
            return -1
