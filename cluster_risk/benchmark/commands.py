"""``python -m cluster_risk.benchmark [redis|cluster] [...]``: the benchmarks' command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    # Each part is imported only when asked for: the in-process run needs no Redis client, and
    # its start-up is part of what it measures.
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["redis"]:  # python -m cluster_risk.benchmark redis [...]: the Redis store
        from cluster_risk.benchmark import redis_store  # noqa: PLC0415 - only the part asked for

        return redis_store.main(args[1:])
    if args[:1] == ["cluster"]:  # ... cluster [...]: publisher -> workers -> actions, end to end
        from cluster_risk.benchmark import cluster  # noqa: PLC0415 - only the part asked for

        return cluster.main(args[1:])
    from cluster_risk.benchmark import inprocess  # noqa: PLC0415 - only the part asked for

    return inprocess.main(args)
