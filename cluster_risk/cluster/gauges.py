"""The gauges a worker reads from Redis when it is scraped: the lag of each shard it holds
(``cluster_risk_shard_lag{shard}``) and the scopes paused on those shards, by any rule or by
hand (``cluster_risk_paused_scopes``).

Read at scrape time, on the metrics thread, with a client of its own (one pipeline: per held
shard ``XINFO STREAM`` of the input, the lease's ``applied`` count, ``HLEN`` of each pause
hash), so the worker's loop pays nothing for them.  Lag is exact (entries ever added minus
entries applied, as in ``cluster-risk status``).  A shard this worker no longer holds loses
its series, so summing over the fleet counts each shard once. (Redis 6.2 has no
``entries-added``: there the lag is counted from the lease's cursor, see :func:`shard_lag`.)  A failed read counts in
``cluster_risk_redis_errors_total`` and leaves the last values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from redis.exceptions import RedisError, ResponseError

from cluster_risk.cluster.shards import MANUAL, Client, Keys, text
from cluster_risk.observability import WorkerMetrics

__all__ = ["HeldShardGauges", "held_shard_state", "shard_lag"]

log = logging.getLogger("cluster_risk.cluster.gauges")


def held_shard_state(
    client: Client, keys: Keys, shards: Collection[int], rules: Sequence[str]
) -> tuple[dict[int, int], int]:
    """(lag per shard, paused scopes in all of them) for ``shards``; ``rules``: the names of
    the rules with pause hashes (manual pauses are counted as well)."""
    order = sorted(shards)
    names = [*rules, MANUAL]
    pipe = client.pipeline(transaction=False)
    for shard in order:
        pipe.execute_command("XINFO", "STREAM", keys.input(shard))
        pipe.hget(keys.lease(shard), "applied")
        for name in names:
            pipe.hlen(keys.manual(shard) if name == MANUAL else keys.paused(shard, name))
    replies = iter(pipe.execute(raise_on_error=False))
    lags: dict[int, int] = {}
    paused = 0
    for shard in order:
        info, applied = next(replies), next(replies)
        lags[shard] = shard_lag(client, keys, shard, info, applied)
        for _ in names:
            count = next(replies)
            if isinstance(count, Exception):
                raise count
            paused += int(count)
    return lags, paused


def shard_lag(client: Client, keys: Keys, shard: int, info: Any, applied: Any) -> int:
    """A shard's lag from its input's ``XINFO STREAM`` reply (an error when there is no stream:
    nothing published yet) and its lease's ``applied`` count: entries ever added minus entries
    applied. Redis 6.2 has no ``entries-added``: there it is the entries after the lease's
    cursor (``sid``, the last applied entry; applied entries only are ever trimmed), counted
    in pages, so reading it costs in proportion to the lag."""
    if isinstance(info, ResponseError):
        added = 0
    elif isinstance(info, Exception):
        raise info
    else:
        found = _entries_added(info)
        if found is None:
            return _entries_after(client, keys.input(shard), client.hget(keys.lease(shard), "sid"))
        added = int(found)
    return added - (int(text(applied)) if applied else 0)


_PAGE = 10_000


def _entries_after(client: Client, stream: str, sid: Any) -> int:
    start = "(" + text(sid) if sid else "-"
    count = 0
    while True:
        page: list[Any] = client.xrange(stream, min=start, count=_PAGE) or []
        count += len(page)
        if len(page) < _PAGE:
            return count
        start = "(" + text(page[-1][0])


def _entries_added(info: Any) -> Any:
    """``entries-added`` of an ``XINFO STREAM`` reply (a dict, or a flat list from a pipeline);
    None where the server does not report it (Redis < 7)."""
    pairs = info.items() if isinstance(info, dict) else zip(list(info)[::2], list(info)[1::2], strict=True)
    for key, value in pairs:
        if text(key) == "entries-added":
            return value
    return None


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
