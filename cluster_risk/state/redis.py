"""RedisStore: the risk state in Redis, changed only by the Lua scripts in ``lua/``.

The store knows keys, scripts and connections; the decisions are the scripts' (the Lua twins
of :mod:`cluster_risk.state.memory`) and the planning is :mod:`cluster_risk.remote`'s.

Key layout, scope encoding and shards: :mod:`cluster_risk.keys` (the one definition).  Every key
gets a TTL of ``ttl_s`` (default: id retention + 1 days) when it is written, and keys only read are
refreshed on a shard's first batch of each new latest day and every 256th batch; a shard
idle that long forgets everything, old trading days and id generations expire on their own,
and old window buckets are dropped by the script itself (event time, exact).

Scripts: ``apply.lua`` (one shard's part of a batch) and ``lookup_ids.lua`` (read-only
order index probe) are assembled at load time: each ``--@include x.lua`` line is replaced by
that library file minus its ``#!lua`` line, so every primitive lives in its own file and each
call is still one script.  ``apply.lua`` runs as a Redis Function (FCALL; its libraries
are defined once per server, not on every call: ``functions.py``), falling back to EVALSHA
where the server has no Functions; ``lookup_ids.lua`` runs by EVALSHA.  Calls go in pipelines
grouped per node, and a script or function is loaded again when a server answers NOSCRIPT or
"Function not found" (``SCRIPT FLUSH``, ``FUNCTION FLUSH``, a restart without persistence, a
failover to a replica that never saw it).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import msgpack  # type: ignore[import-untyped]
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel

from cluster_risk.errors import StoreError
from cluster_risk.keys import UNICODE_ERRORS, shard_base, shard_of, to_text
from cluster_risk.settings import mask_url
from cluster_risk.state.functions import LuaOperation, is_missing
from cluster_risk.state.server_settings import SERVER_SETTINGS

__all__ = ["SERVER_SETTINGS", "RedisStore", "StoreError", "by_node", "load_lua", "script_pipeline", "takes_shebang"]

_INCLUDE = "--@include "

# SERVER_SETTINGS (re-exported): the settings the state's layout needs for speed, applied by
# capability to the servers the project starts (cluster_risk.state.server_settings).


def _lua_text(name: str, folder: Path | None = None) -> str:
    """``lua/<name>``: from ``folder`` when given, else from the installed package
    (``cluster_risk/lua`` in the wheel, a namespace package: read through
    ``importlib.resources``), or from a source checkout."""
    root: Traversable | Path
    if folder is not None:
        root = folder
    else:
        try:
            root = resources.files("cluster_risk.lua")
        except ModuleNotFoundError:
            root = Path(__file__).resolve().parents[2] / "lua"
    return root.joinpath(name).read_text(encoding="utf-8")


def load_lua(name: str, *, shebang: bool = True, shims: Sequence[str] = (), folder: Path | None = None) -> str:
    """The script ``lua/<name>`` with its ``--@include`` lines expanded (libraries lose their
    ``#!lua`` line).  For Lua emulators (fakeredis): ``shebang=False`` drops the script's own
    first line, which they do not understand, and ``shims`` names libraries to put first that
    stand in for Redis built-ins they lack (``struct_shim.lua``).  ``folder``: read the
    scripts from there instead (another version's ``lua/``, for an A/B benchmark)."""

    def library(file: str) -> str:
        return _lua_text(file, folder).split("\n", 1)[1]

    lines = _lua_text(name, folder).splitlines(keepends=True)
    if not lines[0].startswith("#!lua"):
        raise StoreError(f"lua/{name}: the first line must be #!lua")
    includes = [line.strip() for line in lines if line.startswith(_INCLUDE)]
    if includes and includes[0] != _INCLUDE + "builtins.lua":
        # the libraries use string, struct, ... as locals that builtins.lua declares
        raise StoreError(f"lua/{name}: its first include must be builtins.lua (the libraries need its locals)")
    out = lines[:1] if shebang else []
    out += [library(shim) for shim in shims]
    for line in lines[1:]:
        out.append(library(line[len(_INCLUDE) :].strip()) if line.startswith(_INCLUDE) else line)
    return "".join(out)


Client = Redis | RedisCluster

_SHEBANG: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def takes_shebang(client: Client) -> bool:
    """Whether the server reads a script's ``#!lua`` line (Redis 7+, Valkey), so the scripts keep
    it (a cluster then refuses any key a script did not declare); Redis 6.2 and fakeredis take
    it for Lua and refuse the script, so there they go without (``load_lua(shebang=False)``).
    Asked once per client; a Redis error propagates (the caller's retry)."""
    known = _SHEBANG.get(client)
    if known is None:
        try:
            client.eval("#!lua\nreturn 1", 0)
            known = True
        except ResponseError as exc:
            if "near '#'" not in str(exc):
                raise
            known = False
        _SHEBANG[client] = known
    return known


def by_node(client: Client, keys: Sequence[str]) -> list[tuple[Any, list[int]]]:
    """The indices of ``keys`` grouped by the connection of the server holding them (one group,
    the client itself, on a standalone server): a pipeline or a read cannot span nodes."""
    if not isinstance(client, RedisCluster):
        return [(client, list(range(len(keys))))]
    cluster: Any = client  # redis-py's cluster node look-ups are untyped
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, key in enumerate(keys):
        node = cluster.get_node_from_key(key)
        groups.setdefault(node.name, (cluster.get_redis_connection(node), []))[1].append(i)
    return list(groups.values())


def script_pipeline(
    conn: Any,
    calls: Sequence[tuple[LuaOperation, Sequence[Any]]],
    load: Callable[[list[int]], None],
    trailer: Sequence[Any] = (),
    on_trailer: Callable[[Any], None] | None = None,
    sent: Sequence[Any] | None = None,
) -> list[Any]:
    """Send each ``(script, numkeys + keys + args)`` call (FCALL or EVALSHA) in one pipeline on
    ``conn``; the calls answered NOSCRIPT or "Function not found" ran nothing, so
    ``load(their indices)`` loads them and they are sent once more, in the form now loaded
    (an FCALL becomes an EVALSHA where the server refused the function).  ``trailer``: a
    command sent after the calls in each pipeline (``WAIT``), its reply given to
    ``on_trailer``.  ``sent``: the calls went out already and these are their replies (only
    the missing ones are sent).  Per call its reply, or the error it got."""

    def send(indices: Sequence[int]) -> list[Any]:
        pipe = conn.pipeline(transaction=False)
        for i in indices:
            script, args = calls[i]
            # execute_command: ClusterPipeline blocks its evalsha() helper, not the command
            pipe.execute_command(*script.command(*args))
        if trailer:
            pipe.execute_command(*trailer)
        got: list[Any] = pipe.execute(raise_on_error=False)
        if trailer:
            last = got.pop()
            if on_trailer is not None:
                on_trailer(last)
        return got

    replies = list(sent) if sent is not None else send(range(len(calls)))
    missing = [i for i, reply in enumerate(replies) if is_missing(reply)]
    if missing:
        load(missing)
        for i, reply in zip(missing, send(missing), strict=True):
            replies[i] = reply
    return replies


class RedisStore:
    """Connections, keys and scripts of the Redis state (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "risk",
        num_shards: int = 16,
        ttl_s: int | None = None,
        lua_folder: Path | None = None,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}:"):
            raise ValueError("prefix: must be non-empty, without '{', '}' or ':'")
        if not 1 <= num_shards <= 1 << 16:
            raise ValueError("num_shards: must be in [1, 65536]")
        self.client = client
        self.prefix = prefix
        self.num_shards = num_shards
        self.ttl_s = ttl_s
        self.lua_folder = lua_folder  # None: the package's own lua/ (see load_lua)
        self.is_cluster = isinstance(client, RedisCluster)
        self._meta = [shard_base(prefix, n) + "meta" for n in range(num_shards)]
        self._scripts: dict[str, LuaOperation] = {}
        self._stream = _Stream(client)
        self.codec = ""  # "m" msgpack or "j" JSON; decided by _probe() on first use

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        prefix: str = "risk",
        num_shards: int = 16,
        ttl_s: int | None = None,
        lua_folder: Path | None = None,
        **options: Any,
    ) -> RedisStore:
        """``redis://``, ``rediss://`` or ``unix://`` (standalone or cluster: asked from the
        server's ``INFO cluster`` unless ``cluster`` says), or
        ``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>]``.
        ``options`` go to the redis-py client.  Defaults: ``socket_timeout`` 10 s, and a
        ``retry`` of 3 attempts on connection errors and timeouts (redis-py's ``from_url``
        retries nothing by default): a retried batch is recognised by the script, so
        retrying is safe, and it is what recovers a lost reply.  ``lua_folder``: the scripts
        from there, not from this package (another version's ``lua/``, for an A/B benchmark)."""
        options.setdefault("socket_timeout", 10.0)
        options.setdefault("socket_connect_timeout", 5.0)
        options.setdefault("retry", Retry(ExponentialBackoff(cap=1.0, base=0.02), 3))
        parts = urlsplit(url)
        client: Client
        if parts.scheme in ("redis+sentinel", "sentinel"):
            client = _sentinel_master(parts, options)
        else:
            if cluster is None:
                probe = Redis.from_url(url, **options)
                try:
                    cluster = str(probe.info("cluster").get("cluster_enabled", 0)) == "1"
                except RedisError as exc:
                    raise StoreError(f"{_masked(url)}: cannot connect ({exc})") from exc
                finally:
                    probe.close()
            client = RedisCluster.from_url(url, **options) if cluster else Redis.from_url(url, **options)
        return cls(client, prefix=prefix, num_shards=num_shards, ttl_s=ttl_s, lua_folder=lua_folder)

    # ------------------------------------------------------------------ keys

    def shard_of(self, account_id: str) -> int:
        """:func:`cluster_risk.keys.shard_of` with this store's shard count."""
        return shard_of(account_id, self.num_shards)

    def meta_key(self, shard: int) -> str:
        return self._meta[shard]

    def key(self, shard: int, suffix: str) -> str:
        """A key of the shard: ``key(3, "paused:OrderRateLimitRule")`` (the layout above)."""
        return shard_base(self.prefix, shard) + suffix

    def shard_keys(self, shard: int) -> list[str]:
        """Every key the shard holds now (SCAN on its pattern; for ops and tests)."""
        pattern = shard_base(self.prefix, shard) + "*"
        if isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(self.meta_key(shard))  # type: ignore[no-untyped-call, unused-ignore]
            found = self.client.scan_iter(match=pattern, count=1000, target_nodes=node)
        else:
            found = self.client.scan_iter(match=pattern, count=1000)
        return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in found)

    # ------------------------------------------------------------------ scripts

    def _probe(self) -> None:
        """Decide the codec and script form once: real Redis has cmsgpack and struct and reads
        the ``#!lua`` line; fakeredis has none of them (JSON, a struct shim, no shebang)."""
        probe = "return {type(cmsgpack), type(struct)}"
        try:
            kinds = self.client.eval("#!lua\n" + probe, 0)
            shebang = True
        except ResponseError as exc:
            if "near '#'" not in str(exc):
                raise StoreError(f"Redis refused a script: {exc}") from exc
            kinds = self.client.eval(probe, 0)
            shebang = False
        except RedisError as exc:
            raise StoreError(f"Redis is unreachable: {exc}") from exc
        has_msgpack, has_struct = (_text(kind) == "table" for kind in kinds)
        self.codec = "m" if has_msgpack else "j"
        shims = () if has_struct else ("struct_shim.lua",)
        for name, functions in (("apply.lua", shebang), ("lookup_ids.lua", False), ("inspect.lua", False)):
            source = load_lua(name, shebang=shebang, shims=shims, folder=self.lua_folder)
            self._scripts[name] = LuaOperation(name, source, functions=functions)
        self.load_scripts()

    def load_scripts(self) -> None:
        """Load every script or function on every primary: done before pipelines, since a
        pipeline cannot reload one half-way."""
        cluster: Any = self.client  # redis-py's cluster node look-ups are untyped
        nodes = (
            [cluster.get_redis_connection(node) for node in cluster.get_primaries()]
            if self.is_cluster
            else [self.client]
        )
        try:
            for script in self._scripts.values():
                for node in nodes:
                    script.load(node)
        except ResponseError as exc:
            raise StoreError(f"Redis refused a script: {exc}") from exc

    @property
    def uses_functions(self) -> bool:
        """Whether apply.lua runs as a Redis Function (FCALL) rather than by EVALSHA."""
        self._ready()
        return self._scripts["apply.lua"].functions

    def _ready(self) -> None:
        if not self.codec:
            self._probe()

    def encode(self, plan: Sequence[Any]) -> bytes:
        self._ready()
        if self.codec == "m":
            try:  # the fast path (msgpack's error handler costs ~1.8x); the same bytes when it passes
                return cast(bytes, msgpack.packb(plan, use_bin_type=True))
            except UnicodeEncodeError:  # a lone surrogate in some id (cluster_risk/keys.py)
                return cast(bytes, msgpack.packb(plan, use_bin_type=True, unicode_errors=UNICODE_ERRORS))

        return json.dumps(plan, separators=(",", ":")).encode()

    def decode(self, blob: bytes) -> list[Any]:
        if self.codec == "m":
            try:
                return cast(list[Any], msgpack.unpackb(blob, raw=False))
            except UnicodeDecodeError:  # a lone surrogate in some id (cluster_risk/keys.py)
                return cast(list[Any], msgpack.unpackb(blob, raw=False, unicode_errors=UNICODE_ERRORS))

        out = json.loads(blob)
        return out if isinstance(out, list) else []  # cjson encodes an empty table as {}

    def _run(self, name: str, calls: Sequence[tuple[int, Sequence[str | bytes | int]]]) -> list[Any]:
        """Call ``name`` once per (shard, args), pipelined (per node in a cluster); a reply
        saying the script is missing (nothing ran) loads the scripts and sends those calls again."""
        self._ready()
        script = self._scripts[name]
        commands = [(script, (1, self.meta_key(shard), *args)) for shard, args in calls]
        try:
            replies = script_pipeline(self.client, commands, lambda _: self.load_scripts())
        except RedisError as exc:
            raise StoreError(f"Redis failed during {name}: {exc}") from exc
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception):
                raise StoreError(f"shard {calls[i][0]}: {name} failed: {reply}")
        return replies

    # ------------------------------------------------------------------ operations

    def high_water_marks(self) -> dict[int, int]:
        """Each shard's last applied batch number (0 for a fresh shard)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self._meta:
            pipe.hget(key, "hwm")
        try:
            got = pipe.execute()
        except RedisError as exc:
            raise StoreError(f"Redis is unreachable: {exc}") from exc
        return {n: int(v) if v is not None else 0 for n, v in enumerate(got)}

    def apply(self, batches: Mapping[int, tuple[int, bytes, str, bytes]]) -> dict[int, tuple[str, Any]]:
        """Run ``apply.lua`` for each ``shard -> (seq, plan, digest, constants)`` on top of batch
        seq - 1 (``constants``: ``RemoteEngine.constants()``).
        Returns per shard ``("ok", records)`` (also for a retry of an applied batch),
        ``("abort", pos)`` or ``("stale", hwm)``; nothing is written for the last two."""
        calls = self._apply_calls(batches)
        return self._results(calls, self._run("apply.lua", calls))

    def send_apply(
        self, batches: Mapping[int, tuple[int, bytes, str, bytes]]
    ) -> Callable[[], dict[int, tuple[str, Any]]]:
        """Start :meth:`apply` and return a function that waits for its result.

        On a standalone server (or a Sentinel master) the calls go out on one dedicated
        connection without waiting, so the caller plans its next batch while Redis runs this
        one; Redis runs a connection's commands in order.  Anything unusual on the way back
        (a broken connection, a missing script) is settled by :meth:`apply`, which is safe because a
        batch that did run is recognised.  Other topologies run at once."""
        if type(self.client) is not Redis:
            result = self.apply(batches)
            return lambda: result
        self._ready()
        calls = self._apply_calls(batches)
        script = self._scripts["apply.lua"]
        stream = self._stream
        try:
            if stream.conn is None:
                stream.conn = self.client.connection_pool.get_connection()
            conn = stream.conn
            conn.send_packed_command(
                conn.pack_commands([script.command(1, self.meta_key(shard), *args) for shard, args in calls])
            )
        except RedisError:
            stream.drop()
            return lambda: self.apply(batches)
        generation = stream.generation

        def wait() -> dict[int, tuple[str, Any]]:
            if generation != stream.generation:  # the connection broke under an earlier batch
                return self.apply(batches)
            replies: list[Any] = []
            try:
                for _ in calls:
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:  # a missing script and the like: that call did not run
                        replies.append(exc)
            except RedisError:
                stream.drop()
                return self.apply(batches)
            failed = {
                shard: batches[shard]
                for (shard, _), reply in zip(calls, replies, strict=True)
                if isinstance(reply, Exception)
            }
            ran = [(call, reply) for call, reply in zip(calls, replies, strict=True) if call[0] not in failed]
            out = self._results([call for call, _ in ran], [reply for _, reply in ran])
            if failed:
                out.update(self.apply(failed))
            return out

        return wait

    def _apply_calls(self, batches: Mapping[int, tuple[int, bytes, str, bytes]]) -> list[tuple[int, Sequence[Any]]]:
        return [
            (shard, (plan, seq, digest, self.codec, seq - 1, constants))
            for shard, (seq, plan, digest, constants) in batches.items()
        ]

    def _results(
        self, calls: Sequence[tuple[int, Sequence[Any]]], replies: Sequence[Any]
    ) -> dict[int, tuple[str, Any]]:
        out: dict[int, tuple[str, Any]] = {}
        for (shard, _), reply in zip(calls, replies, strict=True):
            status = _text(reply[0])
            if status in ("ok", "again"):
                if reply[1] is None:
                    raise StoreError(f"shard {shard}: batch was applied but its stored result expired")
                out[shard] = ("ok", self.decode(reply[1]))
            else:
                out[shard] = (status, int(reply[1]))
        return out

    def lookup_ids_on(self, calls: Sequence[tuple[int, Sequence[str]]]) -> list[Any]:
        """``lookup_ids.lua`` on each ``(shard, fields)``, pipelined per node: per call, the
        value of each field on that shard (None when it does not know it)."""
        return self._run("lookup_ids.lua", calls) if calls else []

    def lookup_ids(self, fields: Sequence[str]) -> dict[str, str]:
        """``o<oid>`` -> ``<len(account)>:<account><contract>`` (:func:`cluster_risk.keys.index_pair`)
        and ``t<tid>`` -> ``1`` for the ids some shard knows (every shard is asked: the shard
        follows the account, unknown here)."""
        found: dict[str, str] = {}
        for reply in self._run("lookup_ids.lua", [(shard, fields) for shard in range(self.num_shards)]):
            for field, value in zip(fields, reply, strict=True):
                if value and field not in found:
                    found[field] = _text(value)
        return found

    def inspect(self, shard: int, spec: Mapping[str, Any]) -> list[Any]:
        """``lua/inspect.lua`` on ``shard`` (read only; ``spec`` is its ARGV[1]): the account's
        current day, then per rule its scopes' values and pauses, then its manual pauses."""
        # UTF-8 as is: cjson refuses a lone surrogate's \u escape (cluster_risk/keys.py)
        payload = json.dumps(spec, ensure_ascii=False, separators=(",", ":")).encode("utf-8", UNICODE_ERRORS)
        reply: list[Any] = self._run("inspect.lua", [(shard, [payload])])[0]
        return reply

    def close(self) -> None:
        self._stream.drop()
        self.client.close()

    def __repr__(self) -> str:
        kind = "cluster" if self.is_cluster else "standalone"
        return f"RedisStore({kind}, prefix={self.prefix!r}, num_shards={self.num_shards})"


class _Stream:
    """The connection :meth:`RedisStore.send_apply` writes to without waiting; ``generation``
    moves on when it is dropped, so replies that will never come are not waited for."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.conn: Any = None
        self.generation = 0

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()
            if isinstance(self.client, Redis):
                self.client.connection_pool.release(self.conn)
            self.conn = None
        self.generation += 1


def _text(value: object) -> str:
    return to_text(value)


def _masked(url: str) -> str:
    return mask_url(url)


def _sentinel_master(parts: Any, options: dict[str, Any]) -> Redis:
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if host else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL: name the service, e.g. redis+sentinel://host:26379/mymaster")
    if parts.password is not None:
        options.setdefault("password", unquote(parts.password))
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(hosts, **{k: v for k, v in options.items() if k.startswith("socket_")})  # type: ignore[no-untyped-call, unused-ignore]
    return cast(Redis, sentinel.master_for(path[0], db=db, **options))  # type: ignore[no-untyped-call, unused-ignore]
