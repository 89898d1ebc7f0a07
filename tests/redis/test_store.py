"""The store under faults and for operators: idempotent batches, lost replies, script cache
loss, a restart, the key layout with its TTLs, the three topologies."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster_risk import build_config
from cluster_risk.benchmark import SEED_CONFIG, make_workload
from cluster_risk.events import Order, Tick, Trade
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.state.redis import RedisStore, StoreError
from tests.helpers import DAY, T0, EngineFactory, load_case, views
from tests.redis.proxy import CuttingProxy
from tests.redis.servers import RedisCluster3, RedisSentinel, RedisServer

README = Path(__file__).parents[2] / "README.md"
REMOTE = ["fakeredis", "redis", "cluster"]


def run(engine: RemoteEngine, events: list[Any], batch_size: int = 100, start: int = 0) -> list[dict[str, Any]]:
    """Replay ``events`` (which begin at ``start`` in the case) and view the records."""
    out = views(replay_batched(engine, events, batch_size, decoded=True))
    for record in out:
        if "index" in record:
            record["index"] += start
    return out


def snapshot(store: RedisStore) -> dict[str, Any]:
    """Every key of every shard with its content, and whether it has a TTL."""
    client = store.client
    out: dict[str, Any] = {}
    for shard in range(store.num_shards):
        for key in store.shard_keys(shard):
            kind = client.type(key)
            if kind == b"hash":
                content = client.hgetall(key)
            elif kind == b"set":
                content = client.smembers(key)
            else:
                content = client.get(key)
            out[key] = (kind, content, client.pttl(key) > 0)
    return out


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_a_batch_applied_twice_changes_nothing(backend_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_case(3)
    engine = backend_engine(**data["config"])
    assert isinstance(engine, RemoteEngine)
    calls: list[tuple[Any, Any]] = []
    apply, send = engine.store.apply, engine.store.send_apply

    def spy(batches: Any) -> Any:
        wait = send(batches)

        def waited() -> Any:
            result = wait()
            calls.append((dict(batches), result))
            return result

        return waited

    monkeypatch.setattr(engine.store, "send_apply", spy)
    assert run(engine, data["events"], 500) == data["expected"]
    batches, first = calls[-1]
    before = snapshot(engine.store)
    assert apply(batches) == first  # the stored result, as redis-py's retry would get it
    assert snapshot(engine.store) == before
    old = calls[0][0]
    refused = apply(old)  # an older batch: refused, nothing written
    assert {status for status, _ in refused.values()} == {"stale"}
    assert snapshot(engine.store) == before


@pytest.mark.parametrize("hang", [False, True], ids=["cut", "timeout"])
def test_lost_replies_are_retried_without_double_counting(standalone: RedisServer, hang: bool) -> None:
    """A proxy swallows replies after Redis ran the script; redis-py retries the pipeline; the
    script sees the same batch number and digest and returns the stored result."""
    data = load_case(13)
    config = build_config(data["config"])
    events = data["events"]
    standalone.client().flushall()

    def slices(engine: RemoteEngine, before_each: Callable[[], None]) -> list[dict[str, Any]]:
        got = run(engine, events[:100])
        for start in range(100, len(events), 100):
            before_each()
            got += run(engine, events[start : start + 100], start=start)
        return got

    clean = RedisStore.from_url(standalone.url, num_shards=3, prefix="clean")
    assert slices(RemoteEngine.from_config(config, clean), lambda: None) == data["expected"]
    proxy = CuttingProxy(standalone.port)
    store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", num_shards=3, socket_timeout=0.5)
    got = slices(RemoteEngine.from_config(config, store), lambda: proxy.cut_next_replies(1, hang=hang))
    assert proxy.cut_replies == len(range(100, len(events), 100))
    assert got == data["expected"]
    # The same state as the run that lost nothing (same plans, so the same bytes), key by key.
    same = {k.replace("clean:", "risk:"): v for k, v in snapshot(clean).items()}
    assert snapshot(store) == same
    proxy.close()
    store.close()
    clean.close()


def _flush_scripts(store: RedisStore, nodes: RedisCluster3 | None) -> None:
    """Drop every script and function the store loaded (fakeredis has no functions)."""
    functions = store.uses_functions
    for client in [node.client() for node in nodes.nodes] if nodes is not None else [store.client]:
        client.script_flush()
        if functions:
            client.function_flush()


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_script_cache_loss_is_transparent(backend_engine: EngineFactory, request: pytest.FixtureRequest) -> None:
    data = load_case(5)
    engine = backend_engine(**data["config"])
    assert isinstance(engine, RemoteEngine)
    nodes = request.getfixturevalue("cluster") if engine.store.is_cluster else None
    events, got = data["events"], []
    for start in range(0, len(events), 300):
        _flush_scripts(engine.store, nodes)
        got += run(engine, events[start : start + 300], 300, start)
    assert got == data["expected"]


@pytest.mark.redis7
def test_apply_runs_as_a_function_and_a_flush_is_what_happened(standalone: RedisServer) -> None:
    """On Redis 7 apply.lua is an FCALL; after FUNCTION FLUSH and SCRIPT FLUSH the next calls
    were answered "Function not found" / NOSCRIPT (so the reload path really ran), and the
    actions are the in-memory ones."""
    standalone.client().flushall()
    standalone.client().function_flush()
    standalone.client().config_resetstat()
    data = load_case(1)
    store = RedisStore.from_url(standalone.url, num_shards=2)
    engine = RemoteEngine.from_config(build_config(data["config"]), store)
    got = run(engine, data["events"][:10])
    assert store.uses_functions
    store.client.script_flush()
    store.client.function_flush()
    standalone.client().config_resetstat()
    got += run(engine, data["events"][10:], start=10)
    assert got == data["expected"]
    info = standalone.client().info("commandstats")
    assert info["cmdstat_fcall"]["calls"] >= 2
    assert info["cmdstat_function|load"]["calls"] == 1
    assert standalone.client().info("errorstats")["errorstat_ERR"]["count"] >= 1  # "Function not found"
    assert len(standalone.client().function_list(library="cluster_risk_apply_*")) == 1


@pytest.mark.redis7
def test_without_function_load_permission_apply_falls_back_to_evalsha(standalone: RedisServer) -> None:
    """An ACL user that may not FUNCTION LOAD (an older deployment's ACL line) still works:
    apply.lua runs by EVALSHA, with the same actions."""
    admin = standalone.client()
    admin.flushall()
    admin.function_flush()
    admin.acl_setuser(
        "nofunc",
        enabled=True,
        passwords=["+nofunc-pw"],
        keys=["risk:*"],
        commands=["+@all", "-function"],
    )
    try:
        url = standalone.url.replace("redis://", "redis://nofunc:nofunc-pw@")
        data = load_case(1)
        store = RedisStore.from_url(url, num_shards=2)
        engine = RemoteEngine.from_config(build_config(data["config"]), store)
        assert run(engine, data["events"]) == data["expected"]
        assert not store.uses_functions
        assert admin.function_list() == []
        store.close()
    finally:
        admin.acl_deluser("nofunc")


def test_restart_with_aof_keeps_state_and_reloads_scripts(redis_binaries: Any, tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    try:
        data = load_case(7)
        store = RedisStore.from_url(server.url, num_shards=4)
        engine = RemoteEngine.from_config(build_config(data["config"]), store)
        half = len(data["events"]) // 2
        got = run(engine, data["events"][:half])
        server.restart()  # the script cache is gone, the data is back from the AOF
        got += run(engine, data["events"][half:], start=half)
        assert got == data["expected"]
        store.close()
    finally:
        server.stop()


KEY = re.compile(
    r"risk:\{s(\d+)\}:(meta|acct|win:[^:]+|winc:[^:]+|paused:[^:]+|day:\d{4}-\d\d-\d\d:[^:]+|ids:\d{4}-\d\d-\d\d:(?:[ot]\d*|blocks))"
)


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
def test_key_layout_is_documented_and_everything_expires(backend_engine: EngineFactory) -> None:
    data = load_case(6)
    engine = backend_engine(**data["config"])
    assert isinstance(engine, RemoteEngine)
    run(engine, data["events"])
    store, ttl_ms = engine.store, (engine.id_retention_days + 1) * 86_400_000
    keys = [key for shard in range(store.num_shards) for key in store.shard_keys(shard)]
    assert keys
    for key in keys:
        match = KEY.fullmatch(key)
        assert match, key
        assert store.shard_of("x") >= 0 and 0 < store.client.pttl(key) <= ttl_ms, key
    for shard in range(store.num_shards):  # one slot per shard
        slots = {store.client.cluster_keyslot(k) if store.is_cluster else 0 for k in store.shard_keys(shard)}
        assert len(slots) <= 1
    paused = [k for k in keys if ":paused:" in k]
    text = b" ".join(v for k in paused for v in store.client.hgetall(k).values()).decode()
    assert "since=" in text and "account=" in text  # "who is paused, why, since when"


def test_cluster_mode_is_detected(standalone: RedisServer, cluster: RedisCluster3) -> None:
    assert not RedisStore.from_url(standalone.url).is_cluster
    assert RedisStore.from_url(cluster.url).is_cluster
    assert RedisStore.from_url(cluster.url, cluster=True).is_cluster
    with pytest.raises(StoreError, match="cannot connect"):
        RedisStore.from_url("redis://127.0.0.1:1/0")


@pytest.mark.redis7
def test_a_cluster_refuses_a_script_touching_another_slot(cluster: RedisCluster3) -> None:
    """Why every script starts with #!lua: undeclared keys in another slot are an error."""
    client = redis.RedisCluster.from_url(cluster.url)
    script = "#!lua\nreturn redis.call('GET', KEYS[1] .. 'x-in-another-slot')"
    with pytest.raises(redis.ResponseError, match=r"non local key|same slot"):
        client.eval(script, 1, "risk:meta")
    client.close()


def test_sentinel_topology(redis_binaries: Any, tmp_path: Path) -> None:
    sentinel = RedisSentinel(tmp_path)
    try:
        data = load_case(2)
        store = RedisStore.from_url(sentinel.url, num_shards=2)
        assert not store.is_cluster
        assert run(RemoteEngine.from_config(build_config(data["config"]), store), data["events"]) == data["expected"]
        assert sentinel.master.client().exists("risk:{s0}:meta")
        store.close()
    finally:
        sentinel.stop()


def test_servers_keep_big_hashes_out_of_listpacks(standalone: RedisServer) -> None:
    """SERVER_SETTINGS reach the servers we start: a day's sums over 100 accounts are a
    hashtable (a listpack of hundreds of fields is searched linearly on every access)."""
    store = RedisStore.from_url(standalone.url, num_shards=1, prefix="listpack")
    engine = RemoteEngine.from_config(build_config(SEED_CONFIG), store)
    _, events = make_workload(400, 400, 100)
    engine.process_batch(events)
    client = standalone.client()
    (day,) = client.keys("listpack:{s0}:day:*")
    assert client.hlen(day) == 100
    assert client.object("encoding", day) == b"hashtable"
    # small hashes stay compact: a listpack, a ziplist before Redis 7
    assert client.object("encoding", "listpack:{s0}:meta") in (b"listpack", b"ziplist")
    store.close()


def test_servers_take_the_settings_under_the_name_they_know(standalone: RedisServer) -> None:
    """Every server we start took every setting: Redis 7 and Valkey by hash-max-listpack-entries,
    Redis 6.2 (which refuses that name, and refused to start when given it) by
    hash-max-ziplist-entries, the alias the others know too."""
    assert standalone.setting_problems == []
    assert standalone.client().config_get("hash-max-ziplist-entries") == {"hash-max-ziplist-entries": "16"}


def test_keys_that_exist_keep_their_ttl_until_a_new_day(standalone: RedisServer) -> None:
    """A key a batch reads, or writes after seeing it exist, is not PEXPIREd on every batch,
    but on the shard's first batch of a new trading day (and every 256th batch)."""
    store = RedisStore.from_url(standalone.url, num_shards=1, prefix="ttl")
    engine = RemoteEngine.from_config(build_config(SEED_CONFIG), store)
    orders, _ = make_workload(30, 0, 3)
    engine.process_batch(orders[:10])
    client, full = standalone.client(), (engine.id_retention_days + 1) * 86_400_000
    acct, window = "ttl:{s0}:acct", "ttl:{s0}:win:OrderRateLimitRule"
    client.pexpire(acct, 60_000)
    client.pexpire(window, 60_000)
    engine.process_batch(orders[10:20])  # same day: acct is only read, the windows are written
    assert 0 < client.pttl(acct) <= 60_000
    assert 0 < client.pttl(window) <= 60_000
    next_day = [replace(o, timestamp=o.timestamp + 86_400 * 10**9) for o in orders[20:]]
    engine.process_batch(next_day)
    assert client.pttl(acct) > full - 60_000  # refreshed on the new day's first batch
    assert client.pttl(window) > full - 60_000
    store.close()


def test_every_key_a_batch_creates_gets_its_ttl(standalone: RedisServer) -> None:
    """Keys are created mid-day by batches that are not a new day's first (a day's sums at its
    first fill, a window at its rule's first order, a pause registry): each gets its TTL from
    the call that created it."""
    store = RedisStore.from_url(standalone.url, num_shards=1, prefix="ttlnew")
    engine = RemoteEngine.from_config(build_config(SEED_CONFIG), store)
    _, mixed = make_workload(12000, 3000, 20)  # 600 orders an account: the rate limit pauses
    day = 86_400 * 10**9
    engine.process_batch([Tick(mixed[0].timestamp + day)])  # the day's first batch: the meta only
    client = standalone.client()
    assert {k.decode() for k in client.scan_iter("ttlnew:*")} == {"ttlnew:{s0}:meta"}
    for start in range(0, len(mixed), 397):  # none of these is a day's first batch
        engine.process_batch([replace(e, timestamp=e.timestamp + day) for e in mixed[start : start + 397]])
    keys = [k.decode() for k in client.scan_iter("ttlnew:*")]
    assert any(":day:" in k for k in keys) and any(":paused:" in k for k in keys) and any(":ids:" in k for k in keys)
    assert {k: client.pttl(k) for k in keys if client.pttl(k) <= 0} == {}
    store.close()


def test_the_readmes_window_count_command_works_as_printed(standalone: RedisServer) -> None:
    """README, "Inspecting with redis-cli": the window count of ACC002 (shard 3 of 16), by the
    command printed there, run with redis-cli against our own server."""
    line = next(x for x in README.read_text(encoding="utf-8").splitlines() if x.endswith("# its window count"))
    command = shlex.split(line.split("   #")[0])
    assert command[:2] == ["redis-cli", "EVAL"]
    standalone.client().flushall()
    store = RedisStore.from_url(standalone.url, num_shards=16)
    rate = {"type": "OrderRateLimitRule", "threshold": 5, "window_ns": 1_000_000_000}
    engine = RemoteEngine.from_config(build_config({"rules": [rate]}), store)
    t0 = 1_795_142_166_436_200_132
    for n in range(1, 8):
        engine.process_batch([Order(n, "ACC002", "T2303", "BID", 1.0, 1, t0 + n * 50_000_000)])
        port = ["-p", str(standalone.port)]
        out = subprocess.run([command[0], *port, *command[1:]], capture_output=True, text=True, check=True, timeout=60)
        assert out.stdout.strip() == str(n)  # one order per 50 ms: every one is in the window
    store.close()


@pytest.mark.parametrize("backend", ["fakeredis", "redis"], indirect=True)
def test_ids_live_in_blocks_that_go_with_their_day(backend_engine: EngineFactory) -> None:
    """A day's ids are kept in hashes of 1,000 (o1 holds o1000..o1999) listed in a set, a
    batch's ids split among their blocks whether they ascend or not; when the day leaves id
    retention, all of them go."""
    config = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 10_000}], "id_retention_days": 1}
    engine = backend_engine(**config, num_shards=1)
    assert isinstance(engine, RemoteEngine)
    t0, day_ns = T0, DAY

    def orders(*oids: int) -> list[Order]:
        return [Order(oid, "A", "C", "BID", 1.0, 1, t0 + oid) for oid in oids]

    engine.process_batch([*orders(*range(998, 1_003)), Trade(7, 999, 1.0, 1, t0 + 1_004)])
    engine.process_batch(orders(1_995, 1_996, 1_999, 2_000, 2_004, 2_999, 3_000, 4_000, 40_000))  # ascending
    engine.process_batch(orders(40_001, 17, 40_002, 39_000, 3_001))  # not: 17 ... are below the maximum
    day = date.fromordinal(engine.calendar.day_range(t0)[0]).isoformat()
    client = engine.store.client
    blocks = {b"o", b"o1", b"o2", b"o3", b"o4", b"o39", b"o40", b"t"}
    assert client.smembers(f"risk:{{s0}}:ids:{day}:blocks") == blocks
    held = {b: set(client.hkeys(f"risk:{{s0}}:ids:{day}:{b.decode()}")) for b in blocks}
    assert held == {
        b"o": {b"o998", b"o999", b"o17"},
        b"o1": {b"o1000", b"o1001", b"o1002", b"o1995", b"o1996", b"o1999"},
        b"o2": {b"o2000", b"o2004", b"o2999"},
        b"o3": {b"o3000", b"o3001"},
        b"o4": {b"o4000"},
        b"o39": {b"o39000"},
        b"o40": {b"o40000", b"o40001", b"o40002"},
        b"t": {b"t7"},
    }
    assert engine.process_batch(orders(999)) == []  # a duplicate
    assert engine.store.lookup_ids(["o1001", "t7", "o5", "o40002"]) == {
        "o1001": "1:AC",
        "t7": "1",
        "o40002": "1:AC",
    }
    engine.process_batch([Order(50_000, "A", "C", "BID", 1.0, 1, t0 + 2 * day_ns)])  # day + 2: beyond retention
    assert not [k for k in client.scan_iter(match=f"risk:{{s0}}:ids:{day}*")]


@pytest.mark.parametrize("backend", ["fakeredis", "redis"], indirect=True)
def test_every_id_block_is_listed_and_expires_though_only_its_first_write_says_so(
    backend_engine: EngineFactory,
) -> None:
    """A block is listed in its day's set and given its TTL by the call that writes it first
    (the meta field blocks remembers it), not by every call: blocks written in later calls,
    left and written again (an id below the maximum), or shared by both kinds' calls all end
    up listed, with a TTL, and all go with their day."""
    config = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1000}], "id_retention_days": 1}
    engine = backend_engine(**config, num_shards=1)
    assert isinstance(engine, RemoteEngine)
    t0, day_ns = T0, DAY
    batches = [
        [Order(998, "A", "C", "BID", 1.0, 1, t0 + 1)],  # block o, first write
        [Order(999, "A", "C", "BID", 1.0, 1, t0 + 2), Trade(3, 999, 1.0, 1, t0 + 3)],  # o again; t
        [Order(1_000, "A", "C", "BID", 1.0, 1, t0 + 4)],  # o1
        [Order(5, "A", "C", "BID", 1.0, 1, t0 + 5), Trade(2_000, 1_000, 1.0, 1, t0 + 6)],  # back to o; t2
        [Order(1_001, "A", "C", "BID", 1.0, 1, t0 + 7)],  # o1 again, after o
    ]
    for batch in batches:
        engine.process_batch(batch)
    day = date.fromordinal(engine.calendar.day_range(t0)[0]).isoformat()
    client = engine.store.client
    listed = f"risk:{{s0}}:ids:{day}:blocks"
    assert client.smembers(listed) == {b"o", b"o1", b"t", b"t2"}
    for block in ("o", "o1", "t", "t2", "blocks"):
        assert client.pttl(f"risk:{{s0}}:ids:{day}:{block}") > 0, block
    assert set(client.hkeys(f"risk:{{s0}}:ids:{day}:o")) == {b"o5", b"o998", b"o999"}
    assert client.hget("risk:{s0}:meta", "blocks") == f"-1 {day}:o1 {day}:t2 ".encode()
    engine.process_batch([Order(2_001, "A", "C", "BID", 1.0, 1, t0 + 2 * day_ns)])  # day + 2: beyond retention
    assert not [k for k in client.scan_iter(match=f"risk:{{s0}}:ids:{day}*")]
