"""Open an engine: one front half (:mod:`cluster_risk.front`), two executors.

``open_engine(config)`` keeps the state in this process (:class:`~cluster_risk.engine.RiskEngine`);
``open_engine(config, store)`` keeps it in Redis (:class:`~cluster_risk.remote.RemoteEngine`,
one script call per shard per batch).  Both satisfy :class:`~cluster_risk.front.Engine` and
decide the same actions for the same events (SEMANTICS.md).
"""

from __future__ import annotations

from typing import Any

from cluster_risk.engine import RiskEngine
from cluster_risk.front import Engine
from cluster_risk.remote import RemoteEngine
from cluster_risk.state.redis import RedisStore

__all__ = ["Engine", "open_engine"]


def open_engine(config: Any, store: RedisStore | None = None) -> Engine:
    """The engine for ``config`` (:func:`cluster_risk.config.build_config`'s result): in
    process without ``store``, else with its state in ``store``."""
    if store is None:
        return RiskEngine.from_config(config)
    return RemoteEngine.from_config(config, store)
