"""Shard lag where ``XINFO STREAM`` has no ``entries-added`` (Redis 6.2): the entries after the
lease's cursor, counted in pages, equal the exact lag (entries added minus applied) that Redis 7
and Valkey report; on Redis 6.2 itself the whole cluster suite reads it this way."""

from __future__ import annotations

import pytest

from cluster_risk import build_config
from cluster_risk.cluster import status
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.status import lags_of, shard_lags
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from tests.cluster.conftest import connect
from tests.cluster.workload import CONFIG
from tests.cluster.workload import events as workload
from tests.helpers import lines

SHARDS = 4


def test_lag_without_entries_added_is_what_follows_the_cursor(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    events = workload(600, seed=3)
    rejected = list(publisher.publish_lines(lines(events)))
    # part of it applied (and trimmed): the cursor is somewhere in each stream
    Worker(
        build_config(CONFIG), connect(server.url), worker_id="w", tick_ms=0, shards=SHARDS, batch=10, max_events=150
    ).run()
    want = shard_lags(client, publisher.keys)
    assert 0 < sum(want) < len(events) - len(rejected)
    real = status._field
    # an XINFO STREAM reply as Redis 6.2 gives it: no entries-added, no max-deleted-entry-id
    monkeypatch.setattr(
        status, "_field", lambda info, name: None if name.startswith(("entries", "max")) else real(info, name)
    )
    monkeypatch.setattr(status.present_after, "__defaults__", (7,))  # several pages per shard
    got = lags_of(client, publisher.keys, range(SHARDS))
    assert [got[shard] for shard in range(SHARDS)] == want
