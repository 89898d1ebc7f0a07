"""``python -m cluster_risk.benchmark redis --compare-lua DIR``: this package's Lua against
another version's ``lua/`` directory, as a ratio measured in one run.

Two private ``redis-server`` processes, one per version, in one process and one spell: the
seed workload goes through a :class:`~cluster_risk.remote.RemoteEngine` on each, batch by
batch, alternating which goes first, so both sides meet the machine's drift alike (this
machine's speed moves by 20% within minutes; separate runs compare spells, not code).  Each
server's CPU (``INFO cpu``) is read around each round: per round, Redis CPU per event on each
side and their ratio B/A (A: this package, B: ``DIR``).  Both sides must make the same
decisions: the round stops with an error if their actions differ.

The Python side is this package's for both, so only Lua changes can be compared this way.
The two servers run side by side and evict each other from the shared CPU cache a little,
which weighs memory-bound changes somewhat more than a lone server would.
"""

from __future__ import annotations

import gc
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from redis import Redis

from cluster_risk.benchmark import SEED_CONFIG, make_workload
from cluster_risk.config import build_config
from cluster_risk.redis_benchmark import private_redis, server_cpu
from cluster_risk.remote import RemoteEngine
from cluster_risk.state.redis import RedisStore

__all__ = ["compare_run", "print_comparison"]


def _round(
    stores: list[RedisStore], config: Any, events: list[Any], batch_size: int, clients: list[Redis], first: int
) -> dict[str, float]:
    engines = [RemoteEngine.from_config(config, store) for store in stores]
    for engine in engines:
        engine.process_batch(events[:1])  # scripts loaded, high-water marks read
    gc.collect()
    before = [server_cpu(c) for c in clients]
    order = [first, 1 - first]
    for i in range(1, len(events), batch_size):
        chunk = events[i : i + batch_size]
        actions: list[list[Any]] = [[], []]
        for side in order:
            actions[side] = engines[side].process_batch(chunk)
        if actions[0] != actions[1]:
            raise SystemExit(f"--compare-lua: the two versions decided differently in events {i}..")
        order.reverse()
    a, b = ((server_cpu(c) - t) / (len(events) - 1) * 1e6 for c, t in zip(clients, before, strict=True))
    return {"a_us": round(a, 2), "b_us": round(b, 2), "b_over_a": round(b / a, 3)}


def compare_run(
    lua_folder: Path, *, orders: int, trades: int, accounts: int, batch_size: int, rounds: int
) -> dict[str, Any]:
    """Per round: Redis CPU per event with this package's Lua (A) and with ``lua_folder``'s (B)."""
    if not (lua_folder / "apply.lua").is_file():
        raise SystemExit(f"--compare-lua: {lua_folder} has no apply.lua")
    _, events = make_workload(orders, trades, accounts)
    config = build_config(SEED_CONFIG)
    rows = []
    with ExitStack() as stack:
        urls = [stack.enter_context(private_redis()) for _ in range(2)]
        clients = [Redis.from_url(url) for url in urls]
        for n in range(rounds):
            stores = []
            for url, client, folder in zip(urls, clients, (None, lua_folder), strict=True):
                client.flushdb()
                stores.append(RedisStore.from_url(url, num_shards=1, lua_folder=folder))
            try:
                rows.append(_round(stores, config, events, batch_size, clients, first=n % 2))
            finally:
                for store in stores:
                    store.close()
        for client in clients:
            client.close()
    return {
        "workload": {"orders": orders, "trades": len(events) - orders, "accounts": accounts},
        "batch_size": batch_size,
        "b_lua": str(lua_folder),
        "rounds": rows,
        "median_b_over_a": round(statistics.median(row["b_over_a"] for row in rows), 3),
    }


def print_comparison(result: dict[str, Any]) -> None:
    w = result["workload"]
    print(
        f"workload: {w['orders']:,} orders + {w['trades']:,} trades over {w['accounts']:,} accounts; "
        f"batches of {result['batch_size']:,}, alternating; A: this package's lua/, B: {result['b_lua']}"
    )
    for n, row in enumerate(result["rounds"]):
        print(f"round {n}: Redis CPU A {row['a_us']} us/event, B {row['b_us']} us/event, B/A {row['b_over_a']}")
    print(f"median B/A {result['median_b_over_a']}")
