"""``python -m cluster_risk.benchmark cluster``: the cluster's figures on this machine, with a
local redis-server and worker processes (the benchmark's seed workload).

- **throughput**: N events (the seed's two rules) published as fast as ``--gateways``
  publishing threads can (each with its own connection and its share of the accounts, as
  gateways would), applied by 1 and by 2 workers; events/s from the first publish to the last
  entry applied (lag 0).  Publishers, workers and Redis share the machine's cores.
- **latency** at a fixed publish rate: probe orders (one every 10 ms, volume over the
  ``MaxOrderVolumeRule`` cap, so each yields one action at once) among the seed load; the
  time from just before a probe is sent to its action arriving at a subscriber of the
  workers' pub/sub hints (what a gateway's cache sees), p50/p99/max.
- **failover**: one of two workers is killed (SIGKILL) under load; the time until every one of
  its shards is held by the survivor (new epoch) and applied again.
- ``--callgrind``: instead of all that, the instructions Redis spends per worker script call
  (``valgrind --tool=callgrind`` around FCALL): the seed mix published first, then one worker
  drains it in batches of at most ``--batch`` entries per shard - deterministic, unlike times.

Each throughput and latency run also reports CPU time per event of the workers (``/proc``),
the publisher (this process) and Redis (``INFO cpu``): on a shared, noisy machine these are
steadier than the wall clock, and they say who would need a core of its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import redis

from cluster_risk.benchmark.redis_store import callgrind_tool, callgrind_total, private_redis
from cluster_risk.benchmark.workload import SEED_CONFIG, make_workload
from cluster_risk.cluster.launcher import RedisProcess, start_worker
from cluster_risk.cluster.shards import Deployment, Keys, text
from cluster_risk.cluster.status import total_lag
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from cluster_risk.config import build_config
from cluster_risk.events import Event, Order

__all__ = ["main"]

CONFIG: dict[str, Any] = {
    **SEED_CONFIG,
    "rules": [*SEED_CONFIG["rules"], {"type": "MaxOrderVolumeRule", "max_volume": 100}],
}
_PROBE = 1_000_000
_OPTIONS: dict[str, Any] = {"unix": False}  # --unix: every process talks to Redis over a Unix socket


class _Fleet:
    def __init__(
        self, folder: Path, shards: int, workers: int, lease_ms: int = 2000, config: dict[str, Any] = SEED_CONFIG
    ) -> None:
        self.folder = folder
        sock = folder / "redis" / "redis.sock"
        extra = ("--unixsocket", str(sock), "--unixsocketperm", "700") if _OPTIONS["unix"] else ()
        self.server = RedisProcess(folder / "redis", *extra)
        self.url = f"unix://{sock}" if _OPTIONS["unix"] else self.server.url
        self.client = redis.Redis.from_url(self.url)
        self.keys: Keys = Deployment(self.client).ensure(shards)
        path = folder / "config.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        self.procs = []
        for i in range(workers):
            with open(folder / f"worker-{i}.log", "ab") as log:
                args = ("--tick-ms", "0", "--lease-ms", str(lease_ms))
                self.procs.append(start_worker(str(path), self.url, f"b{i}", *args, stdout=log, stderr=log))
        self.wait(lambda: len(self.owners()) == shards and len(set(self.owners().values())) == workers, 30)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the workers (together), Redis, and this process."""
        ticks = os.sysconf("SC_CLK_TCK")
        workers = 0.0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                workers += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        info = self.client.info("cpu")
        redis_s = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return {"workers": workers, "redis": redis_s, "publisher": time.process_time()}

    def owners(self) -> dict[int, str]:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hget(self.keys.lease(shard), "owner")
        return {s: text(o) for s, o in enumerate(pipe.execute()) if o}

    def epochs(self) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hget(self.keys.lease(shard), "epoch")
        return [int(e or 0) for e in pipe.execute()]

    @staticmethod
    def wait(condition: Any, timeout: float, step: float = 0.005) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise TimeoutError("the benchmark fleet did not get there in time")
            time.sleep(step)
        return time.monotonic() - started

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.server.stop()


def _throughput(
    folder: Path, events: Sequence[Event], shards: int, workers: int, gateways: int = 1
) -> dict[str, float]:
    fleet = _Fleet(folder, shards, workers)
    try:
        parts = _by_gateway(events, gateways)
        publishers = [Publisher(redis.Redis.from_url(fleet.url), shards=shards) for _ in parts]
        cpu = fleet.cpu()
        started = time.monotonic()
        threads = [
            threading.Thread(target=_feed, args=(publisher, part))
            for publisher, part in zip(publishers, parts, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        published = time.monotonic() - started
        cpu_published = time.process_time()
        fleet.wait(lambda: total_lag(fleet.client, fleet.keys) == 0, 600, step=0.01)
        elapsed = time.monotonic() - started
        used = _per_event(cpu, fleet.cpu(), len(events))
        used["publisher_us"] = (cpu_published - cpu["publisher"]) / len(events) * 1e6  # not the lag polling
        return {
            "workers": workers,
            "gateways": gateways,
            "events": len(events),
            "events_per_s": len(events) / elapsed,
            "publish_events_per_s": len(events) / published,
            **used,
        }
    finally:
        fleet.close()


def _by_gateway(events: Sequence[Event], gateways: int) -> list[list[Event]]:
    """The workload split over gateways by account (a fill goes with its order's account), so
    each account's events keep their order and a gateway routes its fills from memory."""
    parts: list[list[Event]] = [[] for _ in range(gateways)]
    accounts: dict[int, str] = {}
    for event in events:
        if isinstance(event, Order):
            accounts[event.oid] = event.account_id
            account = event.account_id
        else:
            account = getattr(event, "account_id", None) or accounts.get(getattr(event, "oid", -1), "")
        parts[zlib.crc32(account.encode()) % gateways].append(event)
    return [part for part in parts if part]


def _feed(publisher: Publisher, events: Sequence[Event]) -> None:
    for i in range(0, len(events), 1000):
        publisher.publish([(None, e) for e in events[i : i + 1000]])


def _per_event(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    return {f"{k}_us": (after[k] - before[k]) / max(1, events) * 1e6 for k in ("workers", "redis", "publisher")}


def _listen(pubsub: Any, arrived: dict[int, int], stop: threading.Event) -> None:
    """What a gateway's cache sees: the workers' hints; each probe's arrival time."""
    while not stop.is_set():
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is None or message.get("type") != "message":
            continue
        now = time.monotonic_ns()
        hint = msgpack.unpackb(message["data"], raw=False)
        for action in hint[3::2]:
            value = json.loads(action)["value"]
            if value >= _PROBE:
                arrived.setdefault(int(value) - _PROBE, now)
    pubsub.close()


def _latency(
    folder: Path, load: Sequence[Event], shards: int, rate: float, seconds: float, workers: int
) -> dict[str, float]:
    fleet = _Fleet(folder, shards, workers, config=CONFIG)
    arrived: dict[int, int] = {}
    stop = threading.Event()
    pubsub = fleet.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
    pubsub.subscribe(fleet.keys.channel)  # before the first probe
    listener = threading.Thread(target=_listen, args=(pubsub, arrived, stop), daemon=True)
    listener.start()
    # The listener shares this process with the publisher: with the default 5 ms switch
    # interval, an arrived hint could wait that long for the GIL before being timed.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        publisher = Publisher(redis.Redis.from_url(fleet.url), shards=shards)
        cpu = fleet.cpu()
        sent: dict[int, int] = {}
        per_ms = rate / 1000
        started = time.monotonic()
        done = 0.0
        probe = 0
        source = iter(load)
        now = load[0].timestamp if load else 0  # event time: the load's, so probes are not late hits
        while time.monotonic() - started < seconds:
            elapsed_ms = (time.monotonic() - started) * 1000
            due = int(elapsed_ms * per_ms) - int(done)
            batch: list[tuple[int | None, Event]] = [(None, e) for e in _take(source, due)]
            done += len(batch)
            if batch:
                now = batch[-1][1].timestamp
            if elapsed_ms >= probe * 10:
                order = Order(10**12 + probe, f"ACC{probe % 1000:04d}", "T2303", "BID", 100.0, _PROBE + probe, now)
                batch.append((None, order))
                sent[probe] = time.monotonic_ns()
                probe += 1
            if batch:
                publisher.publish(batch)
            time.sleep(0.001)  # a gateway batching per millisecond
        fleet.wait(lambda: len(arrived) >= len(sent), 30, step=0.01)
        used = _per_event(cpu, fleet.cpu(), int(done) + probe)
        latencies = sorted((arrived[k] - sent[k]) / 1e6 for k in sent)
        return {
            "workers": workers,
            "rate": rate,
            "achieved_rate": done / seconds,
            "probes": len(latencies),
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
            "max_ms": latencies[-1],
            **used,
        }
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        listener.join(5)
        fleet.close()


def _take(source: Any, n: int) -> list[Event]:
    out = []
    for _ in range(max(0, n)):
        try:
            out.append(next(source))
        except StopIteration:
            break
    return out


def _failover(folder: Path, load: Sequence[Event], shards: int, lease_ms: int) -> dict[str, float]:
    fleet = _Fleet(folder, shards, 2, lease_ms)
    try:
        publisher = Publisher(redis.Redis.from_url(fleet.url), shards=shards)
        stop = threading.Event()

        def feed() -> None:
            for i in range(0, len(load), 200):
                if stop.is_set():
                    return
                publisher.publish([(None, e) for e in load[i : i + 200]])
                time.sleep(0.02)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(1.0)
        victim = fleet.procs[0]
        mine = [s for s, owner in fleet.owners().items() if owner == "b0"]
        before = fleet.epochs()
        victim.kill()
        moved = fleet.wait(
            lambda: all(fleet.owners().get(s) == "b1" and fleet.epochs()[s] > before[s] for s in mine), 60, 0.01
        )
        stop.set()
        feeder.join(10)
        fleet.wait(lambda: total_lag(fleet.client, fleet.keys) == 0, 120, step=0.01)
        return {"lease_ms": lease_ms, "shards_moved": len(mine), "failover_s": moved}
    finally:
        fleet.close()


def _callgrind(events: Sequence[Event], shards: int, batch: int) -> dict[str, Any]:
    """Instructions per worker FCALL, counted by callgrind inside Redis."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        with private_redis(callgrind_tool(out, "fcallCommand")) as url:
            publisher = Publisher(redis.Redis.from_url(url), shards=shards)
            for i in range(0, len(events), 1000):
                publisher.publish([(None, e) for e in events[i : i + 1000]])
            worker = Worker(
                build_config(CONFIG), redis.Redis.from_url(url), worker_id="cg", tick_ms=0, shards=shards,
                drain=True, batch=batch,
            )  # fmt: skip
            worker.run()
            calls = int(redis.Redis.from_url(url).info("commandstats")["cmdstat_fcall"]["calls"])
        instructions = callgrind_total(out)
    return {"shards": shards, "batch": batch, "entries": worker.stats.entries, "calls": calls,
            "instructions_per_call": round(instructions / calls),
            "instructions_per_entry": round(instructions / worker.stats.entries)}  # fmt: skip


def _cpu(row: dict[str, Any]) -> str:
    return (
        f"CPU per event: workers {row['workers_us']:.1f} us, publisher {row['publisher_us']:.1f} us, "
        f"redis {row['redis_us']:.1f} us"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster_risk.benchmark cluster", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--orders", type=int, default=160_000)
    parser.add_argument("--trades", type=int, default=40_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rate", type=float, default=20_000, help="publish rate of the latency run (events/s)")
    parser.add_argument("--seconds", type=float, default=10, help="length of the latency run")
    parser.add_argument("--lease-ms", type=int, default=2000)
    parser.add_argument(
        "--gateways", type=int, default=2, help="publishing threads of the throughput runs (accounts split among them)"
    )
    parser.add_argument(
        "--unix", action="store_true", help="connect over a Unix socket (Redis on the same host) instead of TCP"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--callgrind", action="store_true", help="count Redis's instructions per worker call instead (valgrind)"
    )
    parser.add_argument("--batch", type=int, default=5, help="--callgrind: entries per shard and call, at most")
    args = parser.parse_args(argv)
    _OPTIONS["unix"] = args.unix
    if args.callgrind:
        _, events = make_workload(args.orders // 20, args.trades // 20, args.accounts)  # 10,000 events
        counted = _callgrind(events, args.shards, args.batch)
        if args.json:
            print(json.dumps(counted))
        else:
            print(
                f"worker calls ({counted['entries']:,} entries, {counted['shards']} shards, at most {counted['batch']} "
                f"entries per call): {counted['calls']:,} calls, {counted['instructions_per_call']:,} instructions "
                f"per call, {counted['instructions_per_entry']:,} per entry"
            )
        return 0
    _, events = make_workload(args.orders, args.trades, args.accounts)
    gc.collect()
    gc.freeze()  # the workload is the harness's, not the publisher's: keep the collector off it
    results: dict[str, Any] = {"throughput": []}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        folder = Path(tmp)
        for workers in (1, 2):
            run = _throughput(folder / f"t{workers}", events, args.shards, workers, args.gateways)
            results["throughput"].append(run)
        results["latency"] = [
            _latency(folder / f"lat{w}", events, args.shards, args.rate, args.seconds, w) for w in (1, 2)
        ]
        results["failover"] = _failover(folder / "fail", events, args.shards, args.lease_ms)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results["throughput"]:
        print(
            f"end to end, {row['workers']} worker(s): {row['events_per_s']:,.0f} events/s ({row['events']:,} events "
            f"from {row['gateways']} gateway(s), published at {row['publish_events_per_s']:,.0f}/s); {_cpu(row)}"
        )
    for lat in results["latency"]:
        print(
            f"event -> action at {lat['achieved_rate']:,.0f} events/s, {lat['workers']} worker(s): "
            f"p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms "
            f"({lat['probes']} probes); {_cpu(lat)}"
        )
    fail = results["failover"]
    print(f"failover (lease {fail['lease_ms']} ms): {fail['failover_s']:.2f} s from kill -9 to all shards moved")
    return 0
