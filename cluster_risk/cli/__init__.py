"""``cluster-risk``, the command line: every subcommand, in one package.

- :mod:`.app`: the parser, :func:`main`, ``replay`` and ``bench`` (which runs
  :mod:`cluster_risk.benchmark`);
- :mod:`.cluster`: ``worker``, ``publish``, ``actions``, ``status``, ``up`` (:mod:`.up`),
  ``dead`` (:mod:`.dead`);
- :mod:`.ops`: the operator's ``inspect``, ``pause``, ``resume``, ``audit``, ``reset-daily``,
  ``recover``;
- :mod:`.common`: what they share (failures, the Redis connection, runtime settings).
"""

from __future__ import annotations

from cluster_risk.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
