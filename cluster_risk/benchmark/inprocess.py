"""``python -m cluster_risk.benchmark``: throughput and latency of the in-process engine.

The seed's workload: 300k orders over 1,000 accounts plus one trade per four orders, the
seed's two rules (rate limit 500/s per account, daily volume cap 10,000 per account).  Each
measurement runs on a fresh engine; the best of ``--repeat`` runs is reported with the
median.  A plain-loop baseline runs in the same process so results can be read as a ratio,
which is steadier than absolute figures on a noisy machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from cluster_risk.benchmark.workload import SEED_CONFIG, make_workload
from cluster_risk.config import build_config
from cluster_risk.engine import RiskEngine
from cluster_risk.events import Order, Trade

__all__ = ["main", "run"]


def _engine() -> RiskEngine:
    return RiskEngine.from_config(build_config(SEED_CONFIG))


class _Rate:
    """Events per second of one run, by the wall clock and by this process's CPU time.

    On a busy 2-core machine the wall clock also counts time the process waited for a core;
    CPU time does not, so it is the steadier figure (both are printed)."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        cpu = max(time.process_time() - self.cpu, 1e-9)
        return self.events / wall, self.events / cpu


def _mixed_run(events: Sequence[Order | Trade]) -> tuple[float, float, int]:
    engine = _engine()
    process = engine.process
    gc.collect()
    actions = 0
    rate = _Rate(len(events))
    for event in events:
        actions += len(process(event))
    wall, cpu = rate.stop()
    return wall, cpu, actions


def _order_run(orders: Sequence[Order]) -> tuple[float, float]:
    engine = _engine()
    process_order = engine.process_order
    gc.collect()
    rate = _Rate(len(orders))
    for order in orders:
        process_order(order)
    return rate.stop()


def _baseline_run(orders: Sequence[Order]) -> tuple[float, float]:
    """A plain loop doing a little of the same work: validate volume, count per account."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    rate = _Rate(len(orders))
    for order in orders:
        if order.volume <= 0 or order.oid in seen:
            continue
        seen.add(order.oid)
        counts[order.account_id] = counts.get(order.account_id, 0) + 1
    return rate.stop()


def _latencies(events: Sequence[Order | Trade]) -> dict[str, float]:
    engine = _engine()
    process = engine.process
    clock = time.perf_counter_ns
    samples = []
    gc.collect()
    for event in events:
        start = clock()
        process(event)
        samples.append(clock() - start)
    overhead = min(clock() - clock() for _ in range(1000))
    samples.sort()
    n = len(samples)
    return {
        f"p{label}_us": max(0, samples[min(n - 1, int(n * q))] - overhead) / 1000
        for label, q in (("50", 0.50), ("99", 0.99), ("99.9", 0.999))
    } | {"max_us": samples[-1] / 1000}


def _summary(runs: Sequence[tuple[float, ...]]) -> dict[str, int]:
    walls = [r[0] for r in runs]
    cpus = [r[1] for r in runs]
    return {
        "best": round(max(walls)),
        "median": round(statistics.median(walls)),
        "best_cpu_time": round(max(cpus)),
    }


def run(orders: int, trades: int, accounts: int, repeat: int) -> dict[str, Any]:
    order_list, mixed = make_workload(orders, trades, accounts)
    gc.collect()
    gc.freeze()  # the workload is long-lived: keep it out of the collector's walks
    baseline = [_baseline_run(order_list) for _ in range(repeat)]
    order_runs = [_order_run(order_list) for _ in range(repeat)]
    mixed_runs = [_mixed_run(mixed) for _ in range(repeat)]
    latency = _latencies(mixed)
    gc.unfreeze()
    order_path = _summary(order_runs)
    plain = _summary(baseline)
    return {
        "workload": {"orders": orders, "trades": len(mixed) - orders, "accounts": accounts, "repeat": repeat},
        "python": sys.version.split()[0],
        "order_path_events_per_s": order_path,
        "mixed_events_per_s": _summary(mixed_runs),
        "actions": mixed_runs[0][2],
        "latency_us": {k: round(v, 2) for k, v in latency.items()},
        "baseline_plain_loop_events_per_s": plain,
        "order_path_vs_plain_loop": round(order_path["best_cpu_time"] / plain["best_cpu_time"], 3),
    }


def _print_table(result: dict[str, Any]) -> None:
    w = result["workload"]
    print(f"workload: {w['orders']:,} orders + {w['trades']:,} trades, {w['accounts']:,} accounts, {w['repeat']} runs")
    print(f"{'':18}{'best (wall)':>14}{'median (wall)':>16}{'best (CPU time)':>18}   events/s")
    for label, key in (
        ("order path", "order_path_events_per_s"),
        ("orders + trades", "mixed_events_per_s"),
        ("plain-loop baseline", "baseline_plain_loop_events_per_s"),
    ):
        r = result[key]
        print(f"{label:<18}{r['best']:>14,}{r['median']:>16,}{r['best_cpu_time']:>18,}")
    lat = result["latency_us"]
    print(
        f"latency per event (orders + trades): p50 {lat['p50_us']} us  p99 {lat['p99_us']} us  "
        f"p99.9 {lat['p99.9_us']} us  max {lat['max_us']} us"
    )
    print(f"order path / plain loop (CPU time) = {result['order_path_vs_plain_loop']}   actions = {result['actions']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster_risk.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--trades", type=int, default=75_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.epilog = "subcommands: 'redis' (the Redis store through one Redis), 'cluster' (workers end to end)"
    args = parser.parse_args(argv)
    result = run(args.orders, args.trades, args.accounts, args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0
