"""``cluster-risk``: the command line.

``replay`` feeds a JSON Lines event file (or ``-`` for stdin) through the in-process engine
and prints actions and errors as JSON Lines.  Exit 0 when the input could be read; 2 with one
clear line on stderr for an unusable config, file or Redis URL; 130 when interrupted (Ctrl-C,
quietly).  ``bench`` runs the benchmark.  ``replay --redis-url`` refuses a Redis that holds a
fleet's deployment under its ``--prefix``: it would write into the fleet's live state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO

from cluster_risk import __version__
from cluster_risk.cli.cluster import register_cluster_commands
from cluster_risk.cli.common import apply_runtime_settings, fail
from cluster_risk.cli.ops import register_ops_commands
from cluster_risk.cluster.shards import Keys
from cluster_risk.config import EngineConfig, load_config
from cluster_risk.engine import RiskEngine
from cluster_risk.errors import ConfigError, RiskError
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_lines
from cluster_risk.settings import RedisUrl
from cluster_risk.state.redis import RedisStore

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130  # the shell's code for SIGINT


def _with_progress(lines: IO[bytes], total_bytes: int | None) -> Iterator[bytes]:
    """Yield lines, drawing a progress bar on stderr (only called when stderr is a terminal)."""
    done = 0
    for count, line in enumerate(lines, 1):
        done += len(line)
        if count % 20_000 == 0:
            if total_bytes:
                pct = min(100.0, 100.0 * done / total_bytes)
                bar = "#" * int(pct // 4)
                sys.stderr.write(f"\r[{bar:<25}] {pct:5.1f}% {count:,} events")
            else:
                sys.stderr.write(f"\r{count:,} events")
            sys.stderr.flush()
        yield line
    sys.stderr.write("\r\x1b[K")


def _replay(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    if args.redis_url:
        return _replay_through_redis(args, config)
    engine = RiskEngine.from_config(config)
    try:
        stream = _open_events(args.events)
    except OSError as exc:
        return fail(f"{args.events}: cannot read ({exc.strerror})")
    with stream:
        lines: Iterator[bytes] = iter(stream)
        if sys.stderr.isatty() and not args.quiet:
            size = os.fstat(stream.fileno()).st_size if args.events != "-" else None
            lines = _with_progress(stream, size)
        write = sys.stdout.write
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for record in replay_lines(engine, lines):
            write(dumps(record) + "\n")
    return 0


def _open_events(path: str) -> IO[bytes]:
    # Bytes, decoded per line: a line that is not UTF-8 is dead-lettered (invalid_json) like
    # any other bad line instead of ending the replay.
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def _replay_through_redis(args: argparse.Namespace, config: EngineConfig) -> int:
    """The same output through a Redis store, ``--batch-size`` events per script call."""
    try:
        RedisUrl(args.redis_url)
        config.require_account_dimension()
        store = RedisStore.from_url(args.redis_url, prefix=args.prefix, num_shards=args.num_shards)
    except (RiskError, ValueError) as exc:
        return fail(f"--redis-url: {exc}" if isinstance(exc, ValueError) else str(exc))
    if store.client.exists(Keys(args.prefix, args.num_shards).deployment):
        store.close()
        return fail(
            f"this Redis holds a fleet's deployment under prefix {args.prefix!r}: a replay would write into "
            "its live state; use another Redis or another --prefix"
        )
    engine = RemoteEngine.from_config(config, store)
    try:
        stream = _open_events(args.events)
    except OSError as exc:
        return fail(f"{args.events}: cannot read ({exc.strerror})")
    with stream:
        write = sys.stdout.write
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for record in replay_batched(engine, stream, args.batch_size):
            write(dumps(record) + "\n")
    store.close()
    return 0


def _bench(args: argparse.Namespace) -> int:
    # Run, not imported: the product never imports the benchmarks (pyproject's import contracts).
    from cluster_risk.benchmark.commands import main as bench  # noqa: PLC0415 - only when asked

    return bench(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cluster-risk", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("replay", help="replay JSON Lines events through the in-process engine")
    replay.add_argument("--config", required=True, help="engine config (.json, .yaml or .toml)")
    replay.add_argument("events", help="events file (JSON Lines), or - for stdin")
    replay.add_argument("-q", "--quiet", action="store_true", help="no progress bar (default: one on a terminal)")
    replay.add_argument(
        "--redis-url", help="keep the state in Redis (a fresh database gives the same output) (default: in process)"
    )
    replay.add_argument(
        "--prefix",
        default="risk",
        help="key prefix with --redis-url; refused if a fleet's deployment uses it (default: %(default)s)",
    )
    replay.add_argument(
        "--batch-size", type=int, default=1000, help="events per script call with --redis-url (default: %(default)s)"
    )
    replay.add_argument("--num-shards", type=int, default=16, help="shards with --redis-url (default: %(default)s)")
    replay.set_defaults(handler=_replay)

    bench = commands.add_parser("bench", help="run the benchmark (same as python -m cluster_risk.benchmark)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(handler=_bench)

    register_cluster_commands(commands)  # worker, publish, actions, status, up

    register_ops_commands(commands)  # inspect, pause, resume, audit, reset-daily
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["bench"] and given[1:2] not in (["-h"], ["--help"]):
        # Every later argument is the benchmark's: argparse's REMAINDER does not take a first
        # argument that looks like an option (`bench --orders 1000` would be refused).
        return _bench(argparse.Namespace(bench_args=given[1:]))
    args = build_parser().parse_args(given)
    try:
        if getattr(args, "runtime_settings", False):
            apply_runtime_settings(args)
        return int(args.handler(args))
    except ConfigError as exc:
        return fail(str(exc))
    except BrokenPipeError:  # e.g. `cluster-risk replay ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C, e.g. on `actions --follow`: no traceback
        return EXIT_INTERRUPTED
