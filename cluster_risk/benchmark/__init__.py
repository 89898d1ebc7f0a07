"""The benchmarks: ``python -m cluster_risk.benchmark`` (the in-process engine), ``... redis``
(the Redis store through one Redis), ``... cluster`` (publisher -> workers -> actions, end to end).

Not part of the product: nothing in ``cluster_risk`` imports this package (an import-linter
contract in pyproject.toml checks it); ``cluster-risk bench`` dispatches to
:func:`cluster_risk.benchmark.commands.main` when run.

- :mod:`.commands`: the command line (``__main__`` runs it);
- :mod:`.workload`: the seed's workload and rules, shared by all three;
- :mod:`.inprocess`: ``RiskEngine`` throughput and latency;
- :mod:`.redis_store`: ``RemoteEngine`` through one Redis, and its ``--callgrind`` count;
- :mod:`.cluster`: the worker fleet's throughput, latency and failover, and ``--callgrind``.
"""

from __future__ import annotations

from cluster_risk.benchmark.workload import SEED_CONFIG, make_workload

__all__ = ["SEED_CONFIG", "make_workload"]
