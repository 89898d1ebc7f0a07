"""RiskClient: what a gateway links in.  It publishes events into the shards' streams and
keeps a local copy of every current pause - the hot cache that answers ``is_paused`` and
``check(order)`` in memory, without a Redis round trip.

The cache starts from a snapshot of each shard (its pause hashes, manual pauses included,
and the id of its last action, read in one atomic step: ``lua/snapshot.lua``) and is kept
current from the shards' actions streams, where manual pauses and resumes (``lua/manual.lua``,
rule ``manual``) come in order with the workers' actions.  Workers publish a hint for each
batch (``shard, previous action id, then id/JSON pairs``); a hint whose previous id is the
one the cache has seen is applied at once, any other, and every ``poll_s``, makes the cache
read the stream from where it is (XRANGE), so a lost hint costs latency, never an action.

Fail closed.  Every successful exchange with Redis (a hint, a poll) stamps the cache; when
the last stamp is older than ``fail_after_s``, every scope counts as paused (``fail_open=True``
keeps answering from the last known pauses instead).  The switch is logged once each way and
shown by :attr:`RiskClient.failing` and the ``cluster_risk_client_fail_closed`` metric.

Redis up but nobody applying fails closed too, per shard.  Every ``health_s`` the follower
checks each shard (``lua/health.lua``, read-only: the lease's owner and expiry, the oldest
entry after the cursor, on the server's clock); a shard goes into :attr:`RiskClient.unhealthy`
with the condition that holds for it - ``no_owner``: no live worker has held its lease for
``owner_grace_s`` (from the gateway's start: at once), ``stale``: its oldest entry not yet
applied was published more than ``stale_after_s`` ago - and its accounts count as paused
(pause ``("shard_<condition>", (("shard", "N"),))``), unless ``fail_open``.  Each change is
logged, and the ``cluster_risk_client_unhealthy_shards{condition}`` gauge counts them.  The
order path only looks the account's shard up in a dict, and only while some shard is listed.
A gateway that reconnects after an outage reloads its snapshot (actions may have been trimmed
meanwhile: ``cluster_risk.cluster.worker.Retention``).

Lost state is one more condition of the same mechanism.  Every ``poll_s`` the client also
reads the deployment's id and the shards listed in ``<prefix>:state_lost`` (:mod:`.shards`):
while a shard is listed, or the record is gone or names another deployment (every shard), it
is unhealthy with :data:`STATE_LOST` (pause ``shard_state_lost``), also shown by
:attr:`RiskClient.lost`.  A record gone is written back (same id, every shard listed lost), as workers do, so that a
worker started later joins the lost deployment instead of creating a new one.
When a shard comes back (``cluster-risk recover``) the cache is reloaded.

:class:`AsyncRiskClient` is the asyncio face of the same client: the cache is shared memory
(``is_paused``/``check`` are plain calls), publishing runs the sync publisher in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from cluster_risk.cluster.ops import manual_scope
from cluster_risk.cluster.shards import MANUAL, Client, Deployment, Keys, Scripts, text
from cluster_risk.cluster.streams import Publisher
from cluster_risk.config import EngineConfig
from cluster_risk.events import Event, Order
from cluster_risk.keys import scope_values
from cluster_risk.rules.base import DailyCapRule, WindowRule

__all__ = ["NO_OWNER", "STALE", "STATE_LOST", "AsyncRiskClient", "PausedSet", "RiskClient", "UnhealthyShards"]

log = logging.getLogger("cluster_risk.cluster.client")

Pause = tuple[str, tuple[tuple[str, str], ...]]  # (rule, ((dimension, value), ...))
UNREACHABLE: Pause = ("redis_unreachable", ())
NO_OWNER = "no_owner"  # conditions of an unhealthy shard (UnhealthyShards)
STALE = "stale"
STATE_LOST = "state_lost"  # the shard's Redis state was lost (cluster_risk.cluster.shards)


class PausedSet:
    """The current pauses, by account (every cluster rule groups by account)."""

    def __init__(self, shards: int) -> None:
        self.by_account: dict[str, set[Pause]] = {}
        self.last = ["0-0"] * shards  # per shard: the last action applied

    def apply(self, action: Mapping[str, Any]) -> None:
        scope = tuple((str(k), str(v)) for k, v in action["scope"].items())
        pause: Pause = (str(action["rule"]), scope)
        account = dict(scope).get("account", "")
        if action["type"] == "PAUSE_ORDER":
            self.by_account.setdefault(account, set()).add(pause)
        elif action["type"] == "RESUME_ORDER":
            self.by_account.get(account, set()).discard(pause)

    def matching(self, account: str, contract: str | None = None, product: str | None = None) -> list[Pause]:
        given = {"account": account, "contract": contract, "product": product}
        return [p for p in self.by_account.get(account, ()) if all(given.get(d) == v for d, v in p[1])]

    def all(self) -> list[Pause]:
        return sorted(p for pauses in self.by_account.values() for p in pauses)


class UnhealthyShards:
    """The shards whose accounts this gateway counts as paused (unless it fails open), each with
    the conditions that hold for it: :data:`NO_OWNER`, :data:`STALE`, or another check's own
    (e.g. a shard whose state was lost).  :meth:`update` sets one condition's shards and leaves
    the others'; the mappings are replaced, never changed in place, so an order's check reads
    them without a lock."""

    def __init__(self) -> None:
        self.by_shard: dict[int, frozenset[str]] = {}
        self.pauses: dict[int, list[Pause]] = {}  # shard -> the pauses its accounts get

    def update(self, condition: str, shards: Iterable[int]) -> tuple[set[int], set[int]]:
        """``condition`` now holds for exactly ``shards``: (shards it entered, shards it left)."""
        now = set(shards)
        before = self.shards(condition)
        merged = {shard: c - {condition} for shard, c in self.by_shard.items()}
        for shard in now:
            merged[shard] = merged.get(shard, frozenset()) | {condition}
        self.by_shard = {shard: c for shard, c in merged.items() if c}
        self.pauses = {
            shard: [(f"shard_{c}", (("shard", str(shard)),)) for c in sorted(conditions)]
            for shard, conditions in self.by_shard.items()
        }
        return now - before, before - now

    def shards(self, condition: str) -> set[int]:
        return {shard for shard, conditions in self.by_shard.items() if condition in conditions}


class RiskClient:
    """Sync gateway client; ``start()`` loads the cache and follows it in a daemon thread.
    ``stale_after_s``, ``owner_grace_s``: the bounds of the per-shard health check (None: that
    check off), run every ``health_s``."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "risk",
        config: EngineConfig | None = None,
        fail_after_s: float = 2.0,
        fail_open: bool = False,
        poll_s: float = 0.2,
        registry: CollectorRegistry | None = None,
        stale_after_s: float | None = 5.0,
        owner_grace_s: float | None = 1.0,
        health_s: float = 0.5,
    ) -> None:
        self.client = client
        self.deployment = deployment = Deployment(client, prefix)
        self.keys: Keys = deployment.ensure(None, create=False)
        if config is not None:
            deployment.check_config(config)
        self.deployment_id = deployment.id
        self._record = deployment.record()  # written back, every shard lost, if it vanishes
        self.lost: frozenset[int] = frozenset()  # shards whose state was lost (all: the record is)
        self.rules: list[dict[str, Any]] = (
            [{"name": r.name, "dimensions": list(r.dimensions)} for r in config.rules if _stateful(r)]
            if config is not None
            else deployment.rules()
        )
        self.products = dict(config.contract_to_product) if config is not None else {}
        self.fail_after_s = fail_after_s
        self.fail_open = fail_open
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self.owner_grace_s = owner_grace_s
        self.health_s = health_s
        self.unhealthy = UnhealthyShards()
        self._refused: dict[int, list[Pause]] = {}  # the shards whose accounts are refused now
        self._unowned_since: dict[int, float] = {}
        self._checked = False
        self.cache = PausedSet(self.keys.shards)
        self.publisher = Publisher(client, prefix=prefix, shards=self.keys.shards)
        self.publisher.store.encode([])  # settle the codec the workers' hints use
        self._scripts = Scripts(client)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ok_at = 0.0
        self.failing = False
        registry = registry or CollectorRegistry()
        self._fail_gauge = Gauge("cluster_risk_client_fail_closed", "1 while failing", registry=registry)
        self._fail_count = Counter("cluster_risk_client_fail_switches", "Switches to failing", registry=registry)
        self._unhealthy_gauge = Gauge(
            "cluster_risk_client_unhealthy_shards",
            "Shards whose accounts count as paused here (unless failing open), by condition",
            ["condition"],
            registry=registry,
        )

    # ------------------------------------------------------------------ gateway API

    def publish(self, event: Event) -> None:
        self.publisher.publish([(None, event)])

    def publish_many(self, events: Sequence[Event]) -> None:
        self.publisher.publish([(None, e) for e in events])

    def is_paused(self, account: str, contract: str | None = None, product: str | None = None) -> bool:
        """Would an order in this scope be refused?  (Pauses of every rule whose dimensions
        are all given and equal; ``product`` defaults to the contract's product.)"""
        return bool(self.pauses(account, contract, product))

    def check(self, order: Order) -> list[Pause]:
        """The pauses that refuse ``order`` (empty: admit it)."""
        return self.pauses(order.account_id, order.contract_id)

    def pauses(self, account: str, contract: str | None = None, product: str | None = None) -> list[Pause]:
        if self._unreachable() and not self.fail_open:
            return [UNREACHABLE]
        if product is None and contract is not None:
            product = self.products.get(contract, contract)
        refused = self._refused
        if refused:  # some shard is unhealthy: is it this account's?
            closed = refused.get(self.keys.shard_of(account))
            if closed:
                with self._lock:
                    return closed + self.cache.matching(account, contract, product)
        with self._lock:
            return self.cache.matching(account, contract, product)

    def _unreachable(self) -> bool:
        down = time.monotonic() - self._ok_at > self.fail_after_s
        if down != self.failing:
            self.failing = down
            self._fail_gauge.set(1 if down else 0)
            if down:
                self._fail_count.inc()
                log.warning(
                    "no answer from Redis for %.1f s: %s",
                    self.fail_after_s,
                    "failing open (last known pauses)" if self.fail_open else "failing closed (every scope paused)",
                )
            else:
                log.warning("Redis reachable again: pauses from the cluster")
        return down

    # ------------------------------------------------------------------ shard health

    def check_health(self) -> None:
        """Check every shard once (``lua/health.lua``, pipelined per server) and update
        :attr:`unhealthy` with :data:`NO_OWNER` and :data:`STALE`."""
        keys = self.keys
        calls: list[tuple[str, list[str], list[Any]]] = [
            ("health.lua", [keys.lease(s), keys.input(s)], []) for s in range(keys.shards)
        ]
        replies = self._scripts.many(calls)
        mono = time.monotonic()
        first = not self._checked
        unowned: set[int] = set()
        stale: set[int] = set()
        for shard, reply in enumerate(replies):
            now, owner, expires, oldest = int(text(reply[0])), text(reply[1]), text(reply[2]), text(reply[3])
            if owner and int(expires or 0) > now:
                self._unowned_since.pop(shard, None)
            elif self.owner_grace_s is not None:
                # Unowned when this gateway first looked: unowned since ever (-inf, exact: no float
                # rounding), closed at once and not reopened by the next check; unowned later:
                # closed once the grace ends.
                since = self._unowned_since.setdefault(shard, -math.inf if first else mono)
                if mono - since >= self.owner_grace_s:
                    unowned.add(shard)
            bound = self.stale_after_s
            if oldest and bound is not None and now - int(oldest.split("-", 1)[0]) > bound * 1000:
                stale.add(shard)
        self._ok_at = time.monotonic()
        self._checked = True
        self.set_unhealthy(NO_OWNER, unowned, f"no live worker holds their lease (for {self.owner_grace_s} s)")
        self.set_unhealthy(STALE, stale, f"an entry waits unapplied for more than {self.stale_after_s} s")

    def set_unhealthy(self, condition: str, shards: Iterable[int], why: str) -> None:
        """``condition`` holds for exactly ``shards`` now: refuse (or, failing open, only
        report) their accounts; each change is logged and counted in the gauge."""
        entered, left = self.unhealthy.update(condition, shards)
        self._unhealthy_gauge.labels(condition=condition).set(len(self.unhealthy.shards(condition)))
        self._refused = {} if self.fail_open else self.unhealthy.pauses
        if entered:
            effect = "failing open: their accounts not paused" if self.fail_open else "failing closed: accounts paused"
            log.warning(
                "shards %s: %s; %s", sorted(entered), why, effect,
                extra={"shards": sorted(entered), "condition": condition},
            )  # fmt: skip
        if left:
            log.warning(
                "shards %s: %s no more", sorted(left), condition, extra={"shards": sorted(left), "condition": condition}
            )

    # ------------------------------------------------------------------ following

    def start(self) -> RiskClient:
        self.check_lost()
        self.resync()
        self.check_health()
        self._thread = threading.Thread(target=self._follow, name="risk-client", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RiskClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resync(self) -> None:
        """Reload every shard's pauses and action position (one atomic read per shard); the
        manual pauses (kill switches, rule ``manual``) come with the rules' pauses."""
        fresh = PausedSet(self.keys.shards)
        for shard in range(self.keys.shards):
            keys = [self.keys.actions(shard)] + [self.keys.paused(shard, r["name"]) for r in self.rules]
            reply = self._scripts("snapshot.lua", [*keys, self.keys.manual(shard)], [])
            pauses: list[Pause] = []
            for rule, flat in zip(self.rules, reply[1:-1], strict=True):
                for field in flat[::2]:
                    values = scope_values(text(field))
                    pauses.append((rule["name"], tuple(zip(rule["dimensions"], values, strict=False))))
            for field in reply[-1][::2]:
                pauses.append((MANUAL, tuple(manual_scope(text(field)).items())))
            fresh.last[shard] = text(reply[0])
            for pause in pauses:
                fresh.by_account.setdefault(dict(pause[1]).get("account", ""), set()).add(pause)
        with self._lock:
            self.cache = fresh
        self._ok_at = time.monotonic()

    def _follow(self) -> None:
        pubsub = None
        next_poll = next_health = 0.0
        lost = False  # the connection failed: reload the snapshot once it is back
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
                    pubsub.subscribe(self.keys.channel)
                    if lost:  # the actions missed may have been trimmed meanwhile
                        self.resync()
                        lost = False
                    self.catch_up(range(self.keys.shards))
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=min(0.05, self.poll_s))
                if message is not None and message.get("type") == "message":
                    self._hint(message["data"])
                if time.monotonic() >= next_poll:
                    self.check_lost()
                    self.catch_up(range(self.keys.shards))
                    next_poll = time.monotonic() + self.poll_s
                if time.monotonic() >= next_health:
                    self.check_health()
                    next_health = time.monotonic() + self.health_s
            except RedisError as exc:
                log.debug("follower: %s", exc)
                lost = True
                if pubsub is not None:
                    _close_quietly(pubsub)
                pubsub = None
                self._stop.wait(min(0.2, self.poll_s))
        if pubsub is not None:
            _close_quietly(pubsub)

    def check_lost(self) -> None:
        """Read the deployment's id and its lost shards; a shard back from lost reloads the cache."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.deployment.key, "id")
        pipe.hkeys(self.keys.state_lost)
        found, listed = pipe.execute()
        if found is None and self.deployment.restore(self._record):  # no worker noticed yet
            self.deployment.mark_lost(self.keys, range(self.keys.shards), "gateway", "deployment record gone")
        if found is None or text(found) != self.deployment_id:
            lost = frozenset(range(self.keys.shards))
        else:
            lost = frozenset(int(text(s)) for s in listed)
        if lost == self.lost:
            return
        back = self.lost - lost
        self.lost = lost
        self.set_unhealthy(STATE_LOST, lost, "state lost (FLUSHALL, restart without persistence?): until `recover`")
        if back:
            log.warning("shard(s) %s recovered: reloading the pauses", sorted(back))
            self.resync()

    def _hint(self, data: bytes) -> None:
        hint = self.publisher.store.decode(data)
        shard, previous, rest = int(hint[0]), text(hint[1]), hint[2:]
        with self._lock:
            in_order = self.cache.last[shard] == previous
            if in_order:
                for entry_id, action in zip(rest[::2], rest[1::2], strict=True):
                    self.cache.apply(json.loads(action))
                    self.cache.last[shard] = text(entry_id)
        self._ok_at = time.monotonic()
        if not in_order:
            self.catch_up([shard])

    def catch_up(self, shards: Iterable[int]) -> None:
        """Read each shard's actions after the cache's position (pipelined, 1,000 at a time)."""
        todo = list(shards)
        while todo:
            pipe = self.client.pipeline(transaction=False)
            for shard in todo:
                pipe.xrange(self.keys.actions(shard), min=f"({self.cache.last[shard]}", count=1000)
            replies = pipe.execute()
            more = []
            with self._lock:
                for shard, entries in zip(todo, replies, strict=True):
                    for entry_id, fields in entries:
                        self.cache.apply(json.loads(fields[b"a"]))
                        self.cache.last[shard] = text(entry_id)
                    if len(entries) == 1000:
                        more.append(shard)
            todo = more
        self._ok_at = time.monotonic()


def _stateful(rule: object) -> bool:
    return isinstance(rule, WindowRule | DailyCapRule)


def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(RedisError):
        pubsub.close()


class AsyncRiskClient:
    """asyncio face of :class:`RiskClient` (same cache; Redis I/O in a thread)."""

    def __init__(self, client: Client, **options: Any) -> None:
        self._options = options
        self._client = client
        self.sync: RiskClient | None = None

    async def start(self) -> AsyncRiskClient:
        self.sync = await asyncio.to_thread(lambda: RiskClient(self._client, **self._options).start())
        return self

    async def close(self) -> None:
        if self.sync is not None:
            await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRiskClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ready(self) -> RiskClient:
        if self.sync is None:
            raise RuntimeError("AsyncRiskClient: call start() first (or use 'async with')")
        return self.sync

    async def publish(self, event: Event) -> None:
        await asyncio.to_thread(self._ready().publish, event)

    async def publish_many(self, events: Sequence[Event]) -> None:
        await asyncio.to_thread(self._ready().publish_many, events)

    def is_paused(self, account: str, contract: str | None = None, product: str | None = None) -> bool:
        return self._ready().is_paused(account, contract, product)

    def check(self, order: Order) -> list[Pause]:
        return self._ready().check(order)
