"""The gauges a worker reads from Redis when it is scraped: the lag of each shard it holds
(``cluster_risk_shard_lag{shard}``, computed as in ``cluster-risk status``) and the scopes
paused on those shards, by any rule or by hand (``cluster_risk_paused_scopes``).

Read at scrape time, on the metrics thread, with a client of its own (two pipelines: per held
shard ``XINFO STREAM`` of the input and the lease's cursor, then ``HLEN`` of each pause hash),
so the worker's loop pays nothing for them.  A shard this worker no longer holds loses
its series, so summing over the fleet counts each shard once.  A failed read counts in
``cluster_risk_redis_errors_total`` and leaves the last values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence

from redis.exceptions import RedisError

from cluster_risk.cluster.shards import MANUAL, Client, Keys
from cluster_risk.cluster.status import lags_of
from cluster_risk.observability import WorkerMetrics

__all__ = ["HeldShardGauges", "held_shard_state"]

log = logging.getLogger("cluster_risk.cluster.gauges")


def held_shard_state(
    client: Client, keys: Keys, shards: Collection[int], rules: Sequence[str]
) -> tuple[dict[int, int], int]:
    """(lag per shard, paused scopes in all of them) for ``shards``; ``rules``: the names of
    the rules with pause hashes (manual pauses are counted as well)."""
    order = sorted(shards)
    lags = lags_of(client, keys, order)
    names = [*rules, MANUAL]
    pipe = client.pipeline(transaction=False)
    for shard in order:
        for name in names:
            pipe.hlen(keys.manual(shard) if name == MANUAL else keys.paused(shard, name))
    paused = 0
    for count in pipe.execute(raise_on_error=False) if order else []:
        if isinstance(count, Exception):
            raise count
        paused += int(count)
    return lags, paused


class HeldShardGauges:
    """Sets ``metrics.shard_lag`` and ``metrics.paused_scopes`` for the shards ``held()``
    returns; pass :meth:`refresh` as ``before_scrape`` to
    :func:`cluster_risk.observability.start_metrics_server`."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        client: Client,
        keys: Keys,
        rules: Sequence[str],
        held: Callable[[], Collection[int]],
    ) -> None:
        self.metrics = metrics
        self.client = client
        self.keys = keys
        self.rules = list(rules)
        self.held = held
        self._shown: set[int] = set()
        self._lock = threading.Lock()  # two scrapes at once: one refresh at a time

    def refresh(self) -> None:
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        try:
            lags, paused = held_shard_state(self.client, self.keys, self.held(), self.rules)
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            log.warning("metrics: reading shard lag and pauses failed: %s", exc)
            return
        for shard in self._shown - set(lags):
            self.metrics.shard_lag.remove(str(shard))
        for shard, lag in lags.items():
            self.metrics.shard_lag.labels(shard=str(shard)).set(lag)
        self._shown = set(lags)
        self.metrics.paused_scopes.set(paused)
