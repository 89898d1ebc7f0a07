"""``python -m cluster_risk.benchmark redis``: the Redis-backed engine through one Redis.

The seed's workload (:func:`cluster_risk.benchmark.make_workload`: orders over N accounts, one
trade per four orders, the seed's rate and daily-volume rules) goes through
:class:`~cluster_risk.remote.RemoteEngine` in batches (one script call per shard per batch)
on a fresh database.  Reported: events/s (wall clock), the client's CPU per event, Redis CPU
per event (``INFO commandstats``: the apply script with everything it calls; and the server's
whole CPU from ``INFO cpu``), ``MEMORY USAGE`` per active account afterwards, and - in the
same run, same server - the ``limits`` library doing one ``hit()`` per event (moving window,
its closest strategy to an exact sliding window; ``pip install limits``).

Without ``--redis-url`` a private ``redis-server`` (persistence off) is started on a free
loopback port and stopped at the end; with one, the database is flushed first, so never
point it at data you care about.

``--callgrind`` runs that private server under ``valgrind --tool=callgrind``, counting only
inside FCALL and EVALSHA (apply.lua, and lookup_ids.lua for fills whose order is in an earlier batch),
and prints the scripts' instructions per event and per script call: the same
figure on a busy machine as on a quiet one (valgrind slows Redis ~50x: use a smaller
workload, e.g. ``--orders 40000 --trades 10000``).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis import Redis

from cluster_risk.benchmark.workload import SEED_CONFIG, make_workload
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.config import build_config
from cluster_risk.events import Order, Trade
from cluster_risk.remote import RemoteEngine
from cluster_risk.state.redis import RedisStore

__all__ = ["callgrind_run", "callgrind_tool", "callgrind_total", "main", "private_redis", "run", "server_cpu"]

# apply.lua runs by FCALL (Redis 7+), lookup_ids.lua by EVALSHA
_SCRIPT_STATS = ("cmdstat_fcall", "cmdstat_evalsha")


@contextmanager
def private_redis(wrapper: Sequence[str] = ()) -> Iterator[str]:
    """A throwaway redis-server (the launcher's :class:`RedisProcess`, persistence off) on a free
    loopback port; yields its URL.  ``wrapper``: a command the server runs under (valgrind); the
    server is then shut down cleanly so that it can report."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            # valgrind starts Redis ~50x slower
            server = RedisProcess(Path(folder), wrapper=wrapper, startup_timeout_s=300 if wrapper else 10)
        except OSError as exc:  # not on PATH, or did not start (the log's tail)
            raise SystemExit(f"the private redis-server: {exc} (or pass --redis-url)") from None
        try:
            yield server.url
        finally:
            server.stop()


def server_cpu(client: Redis) -> float:
    """The server's CPU seconds so far (``INFO cpu``: user + sys)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _engine_run(
    url: str, events: Sequence[Order | Trade], batch_size: int, shards: int, pipelined: bool
) -> dict[str, Any]:
    client = Redis.from_url(url)
    client.flushdb()
    store = RedisStore.from_url(url, num_shards=shards)
    engine = RemoteEngine.from_config(build_config(SEED_CONFIG), store)
    engine.process_batch(events[:1])  # scripts loaded, high-water marks read: not measured
    client.config_resetstat()
    cpu0, server0 = time.process_time(), server_cpu(client)
    gc.collect()
    start = time.perf_counter()
    actions = 0
    if pipelined:
        for outcome in engine.process_stream(events[1:], batch_size):
            actions += len(outcome)  # type: ignore[arg-type]
    else:
        for i in range(1, len(events), batch_size):
            actions += len(engine.process_batch(events[i : i + batch_size]))
    wall = time.perf_counter() - start
    cpu, server = time.process_time() - cpu0, server_cpu(client) - server0
    n = len(events) - 1
    stats = client.info("commandstats")
    script_us = sum(stats.get(name, {}).get("usec", 0) for name in _SCRIPT_STATS)
    accounts = len({e.account_id for e in events if isinstance(e, Order)})
    memory = sum(int(client.memory_usage(key) or 0) for key in client.scan_iter(count=1000))
    store.close()
    client.close()
    return {
        "events": n,
        "actions": actions,
        "events_per_s": round(n / wall),
        "client_cpu_us_per_event": round(cpu / n * 1e6, 2),
        "redis_script_us_per_event": round(script_us / n, 2),
        "redis_server_cpu_us_per_event": round(server / n * 1e6, 2),
        "memory_bytes_per_account": round(memory / accounts),
    }


def _limits_run(url: str, events: Sequence[Order | Trade]) -> dict[str, Any] | None:
    try:  # an optional dependency (the bench extra)
        from limits import RateLimitItemPerSecond  # noqa: PLC0415
        from limits.storage import RedisStorage  # noqa: PLC0415
        from limits.strategies import MovingWindowRateLimiter  # noqa: PLC0415
    except ImportError:
        return None
    client = Redis.from_url(url)
    client.flushdb()
    limiter = MovingWindowRateLimiter(RedisStorage(url))
    item = RateLimitItemPerSecond(500)
    keys = [e.account_id if isinstance(e, Order) else str(e.oid) for e in events]
    client.config_resetstat()
    server0 = server_cpu(client)
    start = time.perf_counter()
    for key in keys:
        limiter.hit(item, key)
    wall = time.perf_counter() - start
    server = server_cpu(client) - server0
    client.close()
    return {
        "events": len(keys),
        "events_per_s": round(len(keys) / wall),
        "redis_server_cpu_us_per_event": round(server / len(keys) * 1e6, 2),
    }


def run(
    url: str,
    *,
    orders: int,
    trades: int,
    accounts: int,
    batch_size: int,
    shards: int,
    limits_events: int,
    pipelined: bool = True,
) -> dict[str, Any]:
    _, mixed = make_workload(orders, trades, accounts)
    result: dict[str, Any] = {
        "workload": {"orders": orders, "trades": len(mixed) - orders, "accounts": accounts},
        "batch_size": batch_size,
        "shards": shards,
        "pipelined": pipelined,
        "limits_events": limits_events,
        "engine": _engine_run(url, mixed, batch_size, shards, pipelined),
    }
    limits = _limits_run(url, mixed[:limits_events]) if limits_events > 0 else None  # 0: skip it
    if limits is not None:
        result["limits_moving_window"] = limits
        result["engine_vs_limits"] = round(result["engine"]["events_per_s"] / limits["events_per_s"], 1)
    return result


def callgrind_run(*, orders: int, trades: int, accounts: int, batch_size: int, shards: int) -> dict[str, Any]:
    """apply.lua's instructions per event and per call (callgrind counts inside FCALL and EVALSHA only,
    which also counts the warm-up batch's call: one call in thousands)."""
    _, mixed = make_workload(orders, trades, accounts)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        with private_redis(callgrind_tool(out, "evalShaCommand", "fcallCommand")) as url:
            engine = _engine_run(url, mixed, batch_size, shards, pipelined=False)
            stats = Redis.from_url(url).info("commandstats")
            calls = sum(int(stats.get(name, {}).get("calls", 0)) for name in _SCRIPT_STATS)
        instructions = callgrind_total(out)
    n = engine["events"]
    return {
        "workload": {"orders": orders, "trades": len(mixed) - orders, "accounts": accounts},
        "batch_size": batch_size,
        "shards": shards,
        "script_calls": calls + 1,
        "instructions_per_event": round(instructions / n),
        "instructions_per_call": round(instructions / (calls + 1)),
    }


def callgrind_tool(out: Path, *functions: str) -> list[str]:
    """valgrind counting instructions only inside ``functions`` of redis-server, into ``out``."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + [
        f"--toggle-collect={name}" for name in functions
    ]


def callgrind_total(out: Path) -> int:
    """The instructions a callgrind output file counted."""
    summary = next(line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:")))
    return int(summary.split()[1])


def _callgrind_line(counted: dict[str, Any]) -> str:
    w = counted["workload"]
    return (
        f"workload: {w['orders']:,} orders + {w['trades']:,} trades over {w['accounts']:,} accounts; "
        f"batches of {counted['batch_size']:,}, {counted['shards']} shard(s): apply.lua "
        f"{counted['instructions_per_event']:,} instructions per event, "
        f"{counted['instructions_per_call']:,} per call ({counted['script_calls']:,} calls)"
    )


def _print(result: dict[str, Any]) -> None:
    w, e = result["workload"], result["engine"]
    print(
        f"workload: {w['orders']:,} orders + {w['trades']:,} trades over {w['accounts']:,} accounts; "
        f"batches of {result['batch_size']:,}, {result['shards']} shard(s), "
        + ("one batch in flight (process_stream)" if result["pipelined"] else "batch by batch (process_batch)")
    )
    print(f"RemoteEngine   {e['events_per_s']:>10,} events/s   client CPU {e['client_cpu_us_per_event']} us/event")
    print(
        f"               Redis CPU {e['redis_server_cpu_us_per_event']} us/event (INFO cpu); "
        f"apply.lua {e['redis_script_us_per_event']} us/event (INFO commandstats, wall time inside Redis)"
    )
    print(f"               {e['memory_bytes_per_account']:,} bytes of Redis memory per active account (MEMORY USAGE)")
    if "limits_moving_window" in result:
        lim = result["limits_moving_window"]
        cpu = lim["redis_server_cpu_us_per_event"]
        print(f"limits hit()   {lim['events_per_s']:>10,} events/s   Redis CPU {cpu} us/event")
        print(f"               RemoteEngine / limits = {result['engine_vs_limits']}x")
    elif result["limits_events"] == 0:
        print("limits: skipped (--limits-events 0)")
    else:
        print("limits: not installed (pip install limits) - no comparison")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster_risk.benchmark redis", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis (its database is FLUSHED); default: a private redis-server")
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--trades", type=int, default=75_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--shards", type=int, default=1, help="virtual shards (one script call each per batch)")
    parser.add_argument("--limits-events", type=int, default=50_000, help="events for the limits comparison (0: none)")
    parser.add_argument("--no-pipeline", action="store_true", help="process_batch, waiting for each batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--callgrind", action="store_true", help="count apply.lua's instructions under valgrind (deterministic)"
    )
    args = parser.parse_args(argv)
    if args.callgrind:
        sizes = {"orders": args.orders, "trades": args.trades, "accounts": args.accounts}
        counted = callgrind_run(**sizes, batch_size=args.batch_size, shards=args.shards)
        print(json.dumps(counted) if args.json else _callgrind_line(counted))
        return 0
    options = {
        "orders": args.orders,
        "trades": args.trades,
        "accounts": args.accounts,
        "batch_size": args.batch_size,
        "shards": args.shards,
        "limits_events": args.limits_events,
        "pipelined": not args.no_pipeline,
    }
    if args.redis_url:
        result = run(args.redis_url, **options)
    else:
        with private_redis() as url:
            result = run(url, **options)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0
