"""``python -m cluster_risk.benchmark [redis|cluster] [...]``: the benchmarks' command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cluster_risk.benchmark import cluster, inprocess, redis_store

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["redis"]:  # python -m cluster_risk.benchmark redis [...]: the Redis store
        return redis_store.main(args[1:])
    if args[:1] == ["cluster"]:  # ... cluster [...]: publisher -> workers -> actions, end to end
        return cluster.main(args[1:])
    return inprocess.main(args)
