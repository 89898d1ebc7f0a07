"""The cluster's subcommands of ``cluster-risk`` (registered by :func:`register_cluster_commands`
from :mod:`cluster_risk.cli.app`): worker, publish, actions, dead (:mod:`.dead`), status, up (:mod:`.up`).

Exit codes: 0 done (``publish`` also when some events were rejected: they are printed),
1 (``status``) some shard's state was lost, 2 unusable arguments, config or Redis (one line
on stderr), 130 interrupted (Ctrl-C).

Runtime settings: see :mod:`cluster_risk.cli.common`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from cluster_risk.cli.common import add_common, connect, dumps, fail, guarded
from cluster_risk.cli.dead import register_dead_command
from cluster_risk.cli.up import up
from cluster_risk.cluster.gauges import HeldShardGauges
from cluster_risk.cluster.shards import Deployment, Keys, text
from cluster_risk.cluster.status import fleet_status
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Durability, Retention, Worker
from cluster_risk.config import load_config
from cluster_risk.observability import WorkerMetrics, configure_logging, start_metrics_server

__all__ = ["register_cluster_commands"]


def _worker(args: argparse.Namespace) -> int:
    worker_id = args.id or f"{socket.gethostname()}-{os.getpid()}"
    configure_logging(args.log_level, worker=worker_id)
    config = load_config(args.config)
    replicas = args.replicas if args.durability == "replicated" else 0
    try:
        retention = Retention(
            input_s=args.input_retention_s,
            actions_s=args.actions_retention_s,
            dead_s=args.dead_retention_s,
            dead_maxlen=args.dead_maxlen,
        )
    except ValueError as exc:
        return fail(str(exc))
    worker = Worker(
        config,
        connect(args.redis_url),
        worker_id=worker_id,
        prefix=args.prefix,
        shards=args.shards,
        tick_ms=args.tick_ms,
        batch=args.batch,
        lease_ms=args.lease_ms,
        durability=Durability(replicas=replicas, timeout_ms=args.wait_timeout_ms),
        actions_maxlen=args.actions_maxlen,
        retention=retention,
        max_events=args.max_events,
        drain=args.drain,
        metrics=WorkerMetrics() if args.metrics_port else None,
        tune_gc=True,
        allow_eviction=args.allow_eviction,
    )
    if worker.metrics is not None:
        gauges = HeldShardGauges(
            worker.metrics,
            connect(args.redis_url),  # its own connections: scrapes never wait on the loop's
            worker.keys,
            [rule["name"] for rule in Deployment(worker.client, args.prefix).rules()],
            held=lambda: list(worker.leases.held),
        )
        start_metrics_server(
            args.metrics_port,
            worker.metrics.registry,
            addr=args.metrics_host,
            live=lambda: time.monotonic() - worker.turned_at < 30,
            ready=lambda: bool(worker.leases.held),
            before_scrape=gauges.refresh,
        )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    stats = worker.run()
    logging.getLogger("cluster_risk.cluster.worker").info("stopped", extra={"stats": vars(stats)})
    return 0


def _publish(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    config.require_account_dimension()
    publisher = Publisher(
        connect(args.redis_url),
        prefix=args.prefix,
        shards=args.shards,
        retention_days=config.id_retention_days,
        replicas=args.replicas if args.durability == "replicated" else 0,
        config=config,
    )
    try:
        stream = sys.stdin.buffer if args.events == "-" else open(args.events, "rb")  # noqa: SIM115
    except OSError as exc:
        return fail(f"{args.events}: cannot read ({exc.strerror})")
    with stream:
        for index, error in publisher.publish_lines(stream, rate=args.rate):
            sys.stdout.write(dumps(error.to_dict(index)) + "\n")
    sys.stdout.flush()
    return 0


def _actions(args: argparse.Namespace) -> int:
    client = connect(args.redis_url)
    shards = Deployment(client, args.prefix).stored_shards()
    if shards is None:
        return 0 if not args.follow else fail(f"no deployment under prefix {args.prefix!r} yet")

    keys = Keys(args.prefix, shards)
    last = ["-"] * shards
    while True:
        batch: list[tuple[tuple[int, int], str]] = []
        pipe = client.pipeline(transaction=False)
        for shard in range(shards):
            pipe.xrange(keys.actions(shard), min=last[shard] if last[shard] == "-" else f"({last[shard]}")
        for shard, entries in enumerate(pipe.execute()):
            for entry_id, fields in entries:
                eid = text(entry_id)
                ms, seq = eid.split("-")
                batch.append(((int(ms), int(seq)), text(fields[b"a"])))
                last[shard] = eid
        batch.sort(key=lambda pair: pair[0])  # a scope lives in one shard: its order is kept
        for _, action in batch:
            sys.stdout.write(action + "\n")
        sys.stdout.flush()
        if not args.follow:
            return 0
        time.sleep(0.2)


def _status(args: argparse.Namespace) -> int:
    status = fleet_status(connect(args.redis_url), args.prefix)
    lost = status["state_lost"]
    if args.json:
        print(json.dumps(status, indent=2))
        return 1 if lost else 0
    if status["deployment"] is None:
        print(f"no deployment under prefix {args.prefix!r}")
        return 0
    if lost:
        print(f"STATE LOST on shard(s) {', '.join(map(str, lost))}: Redis lost their state (FLUSHALL, restart")
        print("  without persistence, eviction?); nothing is applied to them and gateways refuse their accounts.")
        print("  See docs/operations.md ('Lost Redis state'), then: cluster-risk recover --shard N|--all --reason TEXT")
    print(f"shards: {status['deployment']['shards']}   workers: {', '.join(status['workers']) or '(none)'}")
    print(f"lag: {status['lag']} events published, not yet applied")
    print("shard  owner                      epoch  applied     lag    dead")
    for row in status["shards"]:
        owner = row["owner"] or "-"
        print(f"{row['shard']:>5}  {owner:<25} {row['epoch']:>6} {row['applied']:>8} {row['lag']:>7} {row['dead']:>7}")
    print(f"dead letters: {status['dead']} (cluster-risk dead)")
    print(f"paused scopes: {len(status['paused'])}")
    for pause in status["paused"]:
        print(f"  {pause['rule']} {dumps(pause['scope'])}  {pause['detail']}")
    return 1 if lost else 0


def _up(args: argparse.Namespace) -> int:
    return up(
        workers=args.workers,
        redis_url=args.redis_url,
        cluster=args.cluster,
        config=args.config,
        tick_ms=args.tick_ms,
        shards=args.shards,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def _durability(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--durability",
        choices=["fast", "replicated"],
        default="fast",
        help="fast: asynchronous replication; replicated: WAIT for --replicas after each write (default: %(default)s)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="replicas to wait for when replicated (default: %(default)s)"
    )


def _retention(worker: Any) -> None:
    """The worker's stream retention options (cluster_risk.cluster.worker.Retention)."""
    worker.add_argument(
        "--input-retention-s",
        type=float,
        default=0.0,
        help="keep applied input entries this long, for replay/audit (default: %(default)s)",
    )
    worker.add_argument(
        "--actions-retention-s", type=float, default=86_400.0, help="keep actions this long (default: %(default)s)"
    )
    worker.add_argument(
        "--dead-retention-s", type=float, default=604_800.0, help="keep dead letters this long (default: %(default)s)"
    )
    worker.add_argument(
        "--dead-maxlen",
        type=int,
        default=10_000,
        help="at most this many dead letters per shard; 0: no cap (default: %(default)s)",
    )


def register_cluster_commands(commands: Any) -> None:
    """Add worker, publish, actions, status and up to the ``cluster-risk`` subparsers."""
    worker = commands.add_parser("worker", help="run a cluster worker (leases shards, applies their events)")
    worker.add_argument("--config", required=True, help="engine config (.json, .yaml or .toml)")
    add_common(worker)
    worker.add_argument(
        "--id", help="worker id (default: $CLUSTER_RISK_WORKER_ID, else host-pid); a restarted worker may reuse it"
    )
    worker.add_argument(
        "--tick-ms", type=int, help="clock tick period; 0: no clock ticks, for replays (default: 1000; env, settings)"
    )
    worker.add_argument(
        "--shards",
        type=int,
        help="shard count (default: $CLUSTER_RISK_NUM_SHARDS, else the deployment's, 16 for a new one)",
    )
    worker.add_argument("--batch", type=int, help="entries read per shard and batch (default: 1000; env, settings)")
    worker.add_argument(
        "--lease-ms", type=int, default=2000, help="shard lease time, the failover bound (default: %(default)s)"
    )
    _durability(worker)
    worker.add_argument(
        "--wait-timeout-ms", type=int, default=1000, help="WAIT timeout when replicated (default: %(default)s)"
    )
    worker.add_argument(
        "--actions-maxlen", type=int, default=0, help="cap each actions stream (~N; 0: keep all) (default: %(default)s)"
    )
    _retention(worker)
    worker.add_argument(
        "--max-events", type=int, help="exit after applying this many entries, burst mode (default: no limit)"
    )
    worker.add_argument(
        "--drain", action="store_true", help="exit once nothing is left to apply (default: keep running)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics, /healthz, /readyz on this port (default: 0, off; env, settings)",
    )
    worker.add_argument(
        "--metrics-host",
        help="address the metrics server listens on; 0.0.0.0 to be reachable from outside a container "
        "(default: 127.0.0.1; env, settings)",
    )
    worker.add_argument(
        "--allow-eviction",
        action="store_true",
        help="start even if Redis's maxmemory-policy is not noeviction or cannot be read, for tests (default: refuse)",
    )
    worker.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default: INFO; env, settings)"
    )
    worker.set_defaults(handler=guarded(_worker))

    publish = commands.add_parser("publish", help="route JSON Lines events into the shards' streams")
    publish.add_argument("--config", required=True, help="engine config (checked for the cluster)")
    add_common(publish)
    publish.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    publish.add_argument(
        "--shards", type=int, help="shard count (default: $CLUSTER_RISK_NUM_SHARDS, else the deployment's)"
    )
    _durability(publish)
    publish.add_argument("events", help="events file (JSON Lines), or - for stdin")
    publish.set_defaults(handler=guarded(_publish))

    actions = commands.add_parser("actions", help="print every shard's actions as JSON Lines")
    add_common(actions)
    actions.add_argument(
        "--follow", action="store_true", help="keep printing new actions until Ctrl-C (default: print and exit)"
    )
    actions.set_defaults(handler=guarded(_actions))

    register_dead_command(commands)

    status = commands.add_parser("status", help="workers, shard owners and epochs, lag, paused scopes")
    add_common(status)
    status.add_argument("--json", action="store_true", help="one JSON document (default: a table)")
    status.set_defaults(handler=guarded(_status))

    up_ = commands.add_parser(
        "up", help="start Redis (unless --redis-url) and N local workers; Ctrl-C stops all; exit 1 if a worker dies"
    )
    up_.add_argument("--config", required=True, help="engine config the workers run (.json, .yaml or .toml)")
    up_.add_argument("--workers", type=int, default=2, help="number of workers (default: %(default)s)")
    group = up_.add_mutually_exclusive_group()
    group.add_argument(
        "--redis-url",
        help="use this Redis (given to the workers by environment, not in their arguments) (default: start one)",
    )
    group.add_argument(
        "--cluster",
        action="store_true",
        help="start a 3-master Redis Cluster with one replica each (default: one server)",
    )
    up_.add_argument("--tick-ms", type=int, default=1000, help="the workers' clock tick period (default: %(default)s)")
    up_.add_argument("--shards", type=int, help="shard count (default: the deployment's, 16 for a new one)")
    up_.add_argument(
        "--metrics-port", type=int, default=0, help="worker i serves /metrics on this port + i (default: 0, off)"
    )
    up_.add_argument(
        "--metrics-host", default="127.0.0.1", help="address the workers' metrics listen on (default: %(default)s)"
    )
    up_.set_defaults(handler=guarded(_up))
