"""Publishing events into the shards' input streams (the gateway side of the pipe).

Each valid event becomes one entry ``{e: wire JSON (encode_event), i: line index}`` of
``P:{sN}:in``, N = the shard of its account; a tick or a reset goes to every shard, in the
order it came (a reset of one account, ``reset_account``, to that account's shard).
Invalid events are returned, never sent.  On one server a chunk costs one ``lua/publish.lua``
call (every shard's events, then the orders' routes); on a Redis Cluster, where a script's keys
share a slot, one call per shard and the routes after them.  A shard's events are joined in
one argument (a Redis command per event cost 4x more CPU here, and an argument per event 1.6x).

Routing a trade without ``account_id``: by the account of its order.  The publisher writes
``oid -> account`` for every order it sends (``P:{rM}:route:<day>``, M = crc32(oid) mod S,
one hash per UTC day of the order, kept id-retention + 2 days) *after* the order's entry is in
its stream, so a fill arriving at another gateway finds the route only once the order is
ahead of it in the same stream.  Lookup order: this publisher's own recent orders (memory),
the route hashes, then the order index of the state (``lookup_ids.lua``).  A trade found
nowhere goes to the shard of its oid; the worker then decides exactly as the engine does
(duplicate, or ``unknown_order`` dead-lettered).

Retries: a pipeline that fails is sent again (after a cluster map refresh) for up to
``retry_s``, and redis-py itself resends a pipeline after a connection error.  Neither adds an
entry twice: every ``publish.lua`` call carries this publisher's id and its next sequence
number for each of its shards (``P:{sN}:pub:<id>``, kept a day), and a shard's part whose
number is not above the last one seen is skipped - so a reset_daily is never applied twice by
a retry.  Calls of one publisher are serialised (a lock), so its numbers reach each shard in
order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from cluster_risk.cluster.shards import Client, Deployment, Keys, text
from cluster_risk.config import EngineConfig
from cluster_risk.errors import EventError
from cluster_risk.events import Event, Order, ResetDaily, Trade
from cluster_risk.keys import index_pair, to_bytes
from cluster_risk.state.redis import RedisStore, StoreError, load_lua, takes_shebang
from cluster_risk.wire import decode_line, encode_event

__all__ = ["Publisher"]

_DAY_NS = 86_400_000_000_000
_SIDES = frozenset(("BID", "ASK"))
_SEQ_TTL_S = 86_400  # a publisher's sequence number per shard is kept this long after its last call
# Events per publish.lua call at most: one call holds Redis for its whole length (~1 ms per
# 1,000 events here), so a big publish goes as several calls, in order.
_CALL_EVENTS = 2_000
_T = TypeVar("_T")
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_route_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # UTF-8 as is, for cjson


class Publisher:
    """Validates, routes and appends events; ``replicas`` > 0 waits for that many replicas
    (``WAIT``) after each chunk, on the connection that wrote it."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "risk",
        shards: int | None = None,
        retention_days: int = 7,
        replicas: int = 0,
        wait_timeout_ms: int = 1000,
        memory: int = 1_000_000,
        retry_s: float = 30.0,
        config: EngineConfig | None = None,
    ) -> None:
        """The deployment must exist (waited for up to ``retry_s``: workers starting), or
        ``shards`` be given (a new one is then created, unless workers are alive: a publisher
        never recreates the record of a running fleet); ``config``, when given, must be the
        deployment's (:class:`ConfigDrift`)."""
        self.client = client
        deployment = Deployment(client, prefix)
        self.keys: Keys = deployment.ensure(shards, create=shards is not None, wait_s=retry_s)
        if config is not None:
            deployment.check_config(config)
        self.retention_days = retention_days
        self.replicas = replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._memory = memory
        self._routes: dict[int, str] = {}  # oid -> account of orders sent here (insertion order)
        self.store = RedisStore(client, prefix=prefix, num_shards=self.keys.shards)
        self.not_replicated = 0
        self.retry_s = retry_s
        self._source = self._sha = ""  # publish.lua in the form the server takes: at first use
        self._shebang: bool | None = None
        self._expiring: set[str] = set()  # route keys this publisher has given their TTL
        # Each publish.lua call carries this publisher's id and a sequence number per shard, so
        # a call sent again (a retry after a lost reply) is recognised and adds nothing.
        self.publisher_id = uuid.uuid4().hex[:16]
        self._seq: dict[int, int] = {}
        self._lock = threading.Lock()
        self._quoted: dict[str, str] = {}  # account / contract id -> its JSON string
        self._shard_of: dict[str, int] = {}  # account -> shard

    # ------------------------------------------------------------------ lines

    def publish_lines(
        self, lines: Iterable[str | bytes], *, rate: float | None = None, chunk: int = 500
    ) -> Iterable[tuple[int, EventError]]:
        """Publish a JSON Lines stream; yields (line index, error) for each rejected line."""
        pending: list[tuple[int, Event]] = []
        started = time.monotonic()
        sent = 0
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                event = decode_line(line)
            except EventError as exc:
                yield index, exc
                continue
            pending.append((index, event))
            if len(pending) >= (min(chunk, max(1, int(rate // 100))) if rate else chunk):
                self.publish(pending)
                sent += len(pending)
                pending = []
                if rate:
                    _pace(started, sent, rate)
        if pending:
            self.publish(pending)

    # ------------------------------------------------------------------ events

    def publish(self, events: Sequence[tuple[int | None, Event]]) -> None:
        """Append already-valid events (with their line index, or None) in order, then the
        orders' routes: one ``lua/publish.lua`` call per 2,000 events on one server; on a Redis
        Cluster one call per shard, then one HSET per route key.
        One call at a time per publisher (a lock): the sequence numbers must reach each shard
        in the order they were given, or a later call would make an earlier one look repeated."""
        with self._lock:
            for start in range(0, len(events), _CALL_EVENTS):
                self._publish(events[start : start + _CALL_EVENTS])

    def _publish(self, events: Sequence[tuple[int | None, Event]]) -> None:
        per_shard: dict[int, tuple[list[str], list[str]]] = {}
        wire = self._wire
        numbered = False
        for (index, event), shards in zip(events, self._route(events), strict=True):
            body = wire(event)
            number = "" if index is None else str(index)
            numbered = numbered or index is not None
            for shard in shards:
                got = per_shard.get(shard)
                if got is None:
                    got = per_shard[shard] = ([], [])
                got[0].append(body)
                got[1].append(number)
        parts = []  # per shard: its two keys and three arguments
        for shard, (bodies, numbers) in per_shard.items():
            self._seq[shard] = seq = self._seq.get(shard, 0) + 1
            keys = (self.keys.input(shard), self.keys.publisher(shard, self.publisher_id))
            parts.append((keys, ("\n".join(bodies), "\n".join(numbers) if numbered else "", seq)))
        routes: dict[str, list[str]] = {}
        for _, e in events:
            if isinstance(e, Order):
                routes.setdefault(self.keys.route(e.oid, e.timestamp // _DAY_NS), []).extend((str(e.oid), e.account_id))
                self._remember(e.oid, e.account_id)
        fresh = [key for key in routes if key not in self._expiring]
        if isinstance(self.client, RedisCluster):  # a script's keys share a slot: one call per shard
            self._send([self._call([part], {}, ()) for part in parts])
            if routes:  # after the entries: a fill finds a route only once its order is ahead of it
                commands = [("HSET", key, *map(to_bytes, pairs)) for key, pairs in routes.items()]
                # NX (Redis 7, as #!lua): on 6.2 each publisher's first write of a key sets its TTL
                nx = ("NX",) if self._takes_shebang() else ()
                self._send(commands + [("EXPIRE", key, self._route_ttl_s, *nx) for key in fresh])
        elif parts or routes:
            self._send([self._call(parts, routes, fresh)])
        self._expiring.update(fresh)  # a route key's TTL is set once (NX), by its first writer

    @property
    def _route_ttl_s(self) -> int:
        """A route hash is kept id-retention + 2 days (a UTC day's hash, read by later fills)."""
        return (self.retention_days + 2) * 86_400

    def _call(
        self,
        parts: Sequence[tuple[tuple[str, str], tuple[str, str, int]]],
        routes: dict[str, list[str]],
        fresh: Collection[str],
    ) -> tuple[Any, ...]:
        """One ``publish.lua`` call: these shards' parts, then these routes."""
        keys = [k for part_keys, _ in parts for k in part_keys] + list(routes)
        args: list[Any] = [len(parts), len(routes)]
        args += [a for _, part_args in parts for a in part_args]
        args += [to_bytes(_route_json(pairs)) for pairs in routes.values()]  # ids: ids.to_bytes
        args += ["1" if key in fresh else "0" for key in routes]
        args += [_SEQ_TTL_S, self._route_ttl_s]
        return ("EVALSHA", self._publish_sha(), len(keys), *keys, *args)

    def _takes_shebang(self) -> bool:
        if self._shebang is None:
            self._shebang = self._retrying(lambda: takes_shebang(self.client))
        return self._shebang

    def _publish_sha(self) -> str:
        if not self._sha:  # without its #!lua line where the server does not read it (Redis 6.2)
            self._source = load_lua("publish.lua", shebang=self._takes_shebang())
            self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        return self._sha

    @property
    def _script(self) -> str:
        """publish.lua as this publisher sends it."""
        self._publish_sha()
        return self._source

    def _route(self, events: Sequence[tuple[int | None, Event]]) -> list[range | list[int]]:
        every = range(self.keys.shards)
        out: list[range | list[int]] = []
        unknown: dict[int, Trade] = {}
        local: dict[int, str] = {}
        for _, event in events:
            if isinstance(event, Order):
                local.setdefault(event.oid, event.account_id)
            elif isinstance(event, Trade) and event.account_id is None:
                unknown[event.oid] = event
        for oid in [oid for oid in unknown if oid in local or oid in self._routes]:
            del unknown[oid]
        found = self._lookup(list(unknown.values())) if unknown else {}
        shard_of = self._shard
        for _, event in events:
            if isinstance(event, Order):
                out.append([shard_of(event.account_id)])
            elif isinstance(event, Trade):
                account = event.account_id or local.get(event.oid) or self._routes.get(event.oid)
                account = account or found.get(event.oid)
                if account is None:  # the worker decides: duplicate or unknown_order
                    out.append([self.keys.route_shard(event.oid)])
                else:
                    out.append([shard_of(account)])
            elif isinstance(event, ResetDaily) and event.account_id is not None:
                out.append([self.keys.shard_of(event.account_id)])  # one account's reset: its shard only
            else:
                out.append(every)
        return out

    def _shard(self, account: str) -> int:
        shard = self._shard_of.get(account)
        if shard is None:
            if len(self._shard_of) > self._memory:
                self._shard_of.clear()
            shard = self._shard_of[account] = self.keys.shard_of(account)
        return shard

    def _wire(self, event: Event) -> str:
        """``encode_event``'s JSON, the same text, written directly for the usual orders and
        trades (ids, volume, time: ints; price: a finite float or int; ids of text)."""
        kind = type(event)
        if kind is Order:
            assert isinstance(event, Order)
            price, direction = event.price, event.direction
            side = direction if type(direction) is str else getattr(direction, "value", direction)
            if (
                type(event.oid) is int
                and type(event.volume) is int
                and type(event.timestamp) is int
                and (type(price) is int or (type(price) is float and price - price == 0.0))
                and type(side) is str
                and side in _SIDES
                and type(event.account_id) is str
                and type(event.contract_id) is str
            ):
                return (
                    f'{{"type":"order","oid":{event.oid},"account_id":{self._quote(event.account_id)},'
                    f'"contract_id":{self._quote(event.contract_id)},"direction":"{side}","price":{price!r},'
                    f'"volume":{event.volume},"timestamp":{event.timestamp}}}'
                )
        elif kind is Trade:
            assert isinstance(event, Trade)
            price, account, contract = event.price, event.account_id, event.contract_id
            if (
                type(event.tid) is int
                and type(event.oid) is int
                and type(event.volume) is int
                and type(event.timestamp) is int
                and (type(price) is int or (type(price) is float and price - price == 0.0))
                and (account is None or type(account) is str)
                and (contract is None or type(contract) is str)
            ):
                tail = "" if account is None else f',"account_id":{self._quote(account)}'
                tail += "" if contract is None else f',"contract_id":{self._quote(contract)}'
                return (
                    f'{{"type":"trade","tid":{event.tid},"oid":{event.oid},"price":{price!r},'
                    f'"volume":{event.volume},"timestamp":{event.timestamp}{tail}}}'
                )
        return _dumps(encode_event(event))

    def _quote(self, value: str) -> str:
        quoted = self._quoted.get(value)
        if quoted is None:
            if len(self._quoted) > self._memory:
                self._quoted.clear()
            quoted = self._quoted[value] = _dumps(value)
        return quoted

    def _lookup(self, trades: list[Trade]) -> dict[int, str]:
        """Accounts of these trades' orders: the route hashes, then the state's order index."""
        calls = []
        for trade in trades:
            day = trade.timestamp // _DAY_NS
            for d in range(day + 1, day - self.retention_days - 2, -1):
                calls.append((trade.oid, ("HGET", self.keys.route(trade.oid, d), str(trade.oid))))
        found: dict[int, str] = {}
        for (oid, _), value in zip(calls, self._send([c for _, c in calls]), strict=True):
            if value is not None and oid not in found:
                found[oid] = text(value)
        missing = [t.oid for t in trades if t.oid not in found]
        if missing:
            indexed = self._retrying(lambda: self.store.lookup_ids([f"o{oid}" for oid in missing]))
            for oid in missing:
                value = indexed.get(f"o{oid}")
                if value is not None:
                    found[oid] = index_pair(value)[0]
        return found

    def _remember(self, oid: int, account: str) -> None:
        self._routes[oid] = account
        if len(self._routes) > self._memory:
            for old in list(self._routes)[: self._memory // 10]:
                del self._routes[old]

    # ------------------------------------------------------------------ sending

    def _send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Pipelined, per server (so WAIT follows the writes on their connection); on a Redis
        error, sent again (after a cluster map refresh) until ``retry_s`` has passed."""
        return self._retrying(lambda: self._send_once(commands))

    def _retrying(self, call: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + self.retry_s
        loaded = 0
        while True:
            try:
                return call()
            except NoScriptError:  # nothing ran for those calls (and the others are not repeated)
                if time.monotonic() > deadline:
                    raise
                with contextlib.suppress(RedisError):
                    self._load_script()
                loaded += 1
                if loaded > 1:  # loaded, and still unknown: a failover under way
                    time.sleep(0.1)
                continue
            except (RedisError, StoreError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                if isinstance(self.client, RedisCluster):
                    with contextlib.suppress(RedisError):
                        self.client.nodes_manager.initialize()

    def _load_script(self) -> None:
        if isinstance(self.client, RedisCluster):
            for node in self.client.get_primaries():  # type: ignore[no-untyped-call]
                self.client.get_redis_connection(node).script_load(self._script)
        else:
            self.client.script_load(self._script)

    def _send_once(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        groups: dict[str, tuple[Any, list[int]]] = {}
        cluster = self.client if isinstance(self.client, RedisCluster) else None
        for i, command in enumerate(commands):
            if cluster is None:
                name, node = "", self.client
            else:
                key = command[3] if command[0] == "EVALSHA" else command[1]  # EVALSHA sha n key ...
                target = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
                name, node = target.name, cluster.get_redis_connection(target)
            groups.setdefault(name, (node, []))[1].append(i)
        replies: list[Any] = [None] * len(commands)
        for node, indices in groups.values():
            pipe = node.pipeline(transaction=False)
            for i in indices:
                pipe.execute_command(*commands[i])
            if self.replicas:
                pipe.execute_command("WAIT", self.replicas, self.wait_timeout_ms)
            got = pipe.execute()
            if self.replicas and int(got[-1]) < self.replicas:
                self.not_replicated += 1
            for i, value in zip(indices, got, strict=False):
                replies[i] = value
        return replies


def _pace(started: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)
