"""The cluster's subcommands of ``cluster-risk`` (registered by :func:`register_cluster_commands`
from ``cluster_risk.cli``): worker, publish, actions, dead (:mod:`.deadcli`), status, up.

Exit codes: 0 done (``publish`` also when some events were rejected: they are printed),
1 (``status``) some shard's state was lost, 2 unusable arguments, config or Redis (one line
on stderr).
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
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from cluster_risk.errors import RiskError

__all__ = ["register_cluster_commands"]

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _fail(message: str) -> int:
    print(f"cluster-risk: {message}", file=sys.stderr)
    return 2


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Configuration and connection problems end with one line on stderr and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:  # `cluster-risk status | head`: cli.main ends quietly
            raise
        except (RiskError, RedisError, OSError) as exc:
            from cluster_risk.settings import mask_secrets

            return _fail(mask_secrets(str(exc)))

    return run


def _connect(url: str) -> Any:
    from cluster_risk.state.redis import RedisStore

    return RedisStore.from_url(url).client


def _worker(args: argparse.Namespace) -> int:
    from cluster_risk.cluster.worker import Durability, Retention, Worker
    from cluster_risk.config import load_config
    from cluster_risk.observability import WorkerMetrics, configure_logging, start_metrics_server

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
        return _fail(str(exc))
    worker = Worker(
        config,
        _connect(args.redis_url),
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
        from cluster_risk.cluster.gauges import HeldShardGauges
        from cluster_risk.cluster.shards import Deployment

        gauges = HeldShardGauges(
            worker.metrics,
            _connect(args.redis_url),  # its own connections: scrapes never wait on the loop's
            worker.keys,
            [rule["name"] for rule in Deployment(worker.client, args.prefix).rules()],
            held=lambda: list(worker.leases.held),
        )
        start_metrics_server(
            args.metrics_port,
            worker.metrics.registry,
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
    from cluster_risk.cluster.streams import Publisher
    from cluster_risk.config import load_config

    config = load_config(args.config)
    config.require_account_dimension()
    publisher = Publisher(
        _connect(args.redis_url),
        prefix=args.prefix,
        shards=args.shards,
        retention_days=config.id_retention_days,
        replicas=args.replicas if args.durability == "replicated" else 0,
        config=config,
    )
    try:
        stream = sys.stdin.buffer if args.events == "-" else open(args.events, "rb")  # noqa: SIM115
    except OSError as exc:
        return _fail(f"{args.events}: cannot read ({exc.strerror})")
    with stream:
        for index, error in publisher.publish_lines(stream, rate=args.rate):
            sys.stdout.write(_dumps(error.to_dict(index)) + "\n")
    sys.stdout.flush()
    return 0


def _actions(args: argparse.Namespace) -> int:
    from cluster_risk.cluster.shards import Deployment, text

    client = _connect(args.redis_url)
    shards = Deployment(client, args.prefix).stored_shards()
    if shards is None:
        return 0 if not args.follow else _fail(f"no deployment under prefix {args.prefix!r} yet")
    from cluster_risk.cluster.shards import Keys

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
    from cluster_risk.cluster.status import fleet_status

    status = fleet_status(_connect(args.redis_url), args.prefix)
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
        print(f"  {pause['rule']} {_dumps(pause['scope'])}  {pause['detail']}")
    return 1 if lost else 0


def _up(args: argparse.Namespace) -> int:
    from cluster_risk.cluster.launcher import up

    return up(
        workers=args.workers,
        redis_url=args.redis_url,
        cluster=args.cluster,
        config=args.config,
        tick_ms=args.tick_ms,
        shards=args.shards,
        metrics_port=args.metrics_port,
    )


def _common(parser: argparse.ArgumentParser, url: bool = True) -> None:
    if url:
        parser.add_argument("--redis-url", required=True, help="redis://, rediss://, unix:// or redis+sentinel://")
    parser.add_argument("--prefix", default="risk", help="key prefix of the deployment (default risk)")


def _durability(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--durability",
        choices=["fast", "replicated"],
        default="fast",
        help="fast: asynchronous replication; replicated: WAIT for --replicas after each write",
    )
    parser.add_argument("--replicas", type=int, default=1, help="replicas to wait for when replicated (1)")


def register_cluster_commands(commands: Any) -> None:
    """Add worker, publish, actions, status and up to the ``cluster-risk`` subparsers."""
    worker = commands.add_parser("worker", help="run a cluster worker (leases shards, applies their events)")
    worker.add_argument("--config", required=True, help="engine config (.json, .yaml or .toml)")
    _common(worker)
    worker.add_argument("--id", help="worker id (default host-pid); a restarted worker may reuse it")
    worker.add_argument("--tick-ms", type=int, default=1000, help="clock tick period; 0: no clock ticks (replays)")
    worker.add_argument("--shards", type=int, help="shard count (default: the deployment's, 16 for a new one)")
    worker.add_argument("--batch", type=int, default=1000, help="entries read per shard and batch")
    worker.add_argument("--lease-ms", type=int, default=2000, help="shard lease time (failover bound)")
    _durability(worker)
    worker.add_argument("--wait-timeout-ms", type=int, default=1000, help="WAIT timeout when replicated")
    worker.add_argument("--actions-maxlen", type=int, default=0, help="cap each actions stream (~N; 0: keep all)")
    worker.add_argument(
        "--input-retention-s", type=float, default=0.0, help="keep applied input entries this long (default 0)"
    )
    worker.add_argument(
        "--actions-retention-s", type=float, default=86_400.0, help="keep actions this long (default 86400)"
    )
    worker.add_argument(
        "--dead-retention-s", type=float, default=604_800.0, help="keep dead letters this long (default 604800)"
    )
    worker.add_argument(
        "--dead-maxlen", type=int, default=10_000, help="at most this many dead letters per shard (0: no cap)"
    )
    worker.add_argument("--max-events", type=int, help="exit after applying this many entries (burst mode)")
    worker.add_argument("--drain", action="store_true", help="exit once nothing is left to apply")
    worker.add_argument("--metrics-port", type=int, default=0, help="serve /metrics, /healthz, /readyz (0: off)")
    worker.add_argument(
        "--allow-eviction",
        action="store_true",
        help="start even if Redis's maxmemory-policy is not noeviction or cannot be read (tests only)",
    )
    worker.add_argument("--log-level", default="INFO")
    worker.set_defaults(handler=_guarded(_worker))

    publish = commands.add_parser("publish", help="route JSON Lines events into the shards' streams")
    publish.add_argument("--config", required=True, help="engine config (checked for the cluster)")
    _common(publish)
    publish.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    publish.add_argument("--shards", type=int, help="shard count (default: the deployment's)")
    _durability(publish)
    publish.add_argument("events", help="events file (JSON Lines), or - for stdin")
    publish.set_defaults(handler=_guarded(_publish))

    actions = commands.add_parser("actions", help="print every shard's actions as JSON Lines")
    _common(actions)
    actions.add_argument("--follow", action="store_true", help="keep printing new actions")
    actions.set_defaults(handler=_guarded(_actions))

    from cluster_risk.cluster.deadcli import register_dead_command

    register_dead_command(commands)

    status = commands.add_parser("status", help="workers, shard owners and epochs, lag, paused scopes")
    _common(status)
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(handler=_guarded(_status))

    up_ = commands.add_parser("up", help="start Redis (unless --redis-url) and N local workers; Ctrl-C stops all")
    up_.add_argument("--workers", type=int, default=2)
    group = up_.add_mutually_exclusive_group()
    group.add_argument("--redis-url", help="use this Redis instead of starting one")
    group.add_argument("--cluster", action="store_true", help="start a 3-master Redis Cluster with one replica each")
    up_.add_argument("--config", help="engine config (default: the benchmark's seed config)")
    up_.add_argument("--tick-ms", type=int, default=1000)
    up_.add_argument("--shards", type=int)
    up_.add_argument("--metrics-port", type=int, default=0, help="worker i serves /metrics on this port + i (0: off)")
    up_.set_defaults(handler=_guarded(_up))
