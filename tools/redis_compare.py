"""``python tools/redis_compare.py DIR``: this checkout's Lua against another version's ``lua/``
directory, as a ratio measured in one run.  A lab tool: not shipped in the wheel.

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

import argparse
import gc
import json
import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from redis import Redis

from cluster_risk.benchmark.redis_store import private_redis, server_cpu
from cluster_risk.benchmark.workload import SEED_CONFIG, make_workload
from cluster_risk.config import build_config
from cluster_risk.remote import RemoteEngine
from cluster_risk.state.redis import RedisStore

__all__ = ["compare_run", "main", "print_comparison"]


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
            raise SystemExit(f"redis_compare: the two versions decided differently in events {i}..")
        order.reverse()
    a, b = ((server_cpu(c) - t) / (len(events) - 1) * 1e6 for c, t in zip(clients, before, strict=True))
    return {"a_us": round(a, 2), "b_us": round(b, 2), "b_over_a": round(b / a, 3)}


def compare_run(
    lua_folder: Path, *, orders: int, trades: int, accounts: int, batch_size: int, rounds: int
) -> dict[str, Any]:
    """Per round: Redis CPU per event with this package's Lua (A) and with ``lua_folder``'s (B)."""
    if not (lua_folder / "apply.lua").is_file():
        raise SystemExit(f"redis_compare: {lua_folder} has no apply.lua")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/redis_compare.py", description=__doc__.splitlines()[0])
    parser.add_argument("lua", type=Path, metavar="DIR", help="another version's lua/ folder (B)")
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--trades", type=int, default=75_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=4, help="rounds (the median ratio is printed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    sizes = {"orders": args.orders, "trades": args.trades, "accounts": args.accounts}
    compared = compare_run(args.lua, **sizes, batch_size=args.batch_size, rounds=args.rounds)
    if args.json:
        print(json.dumps(compared))
    else:
        print_comparison(compared)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
