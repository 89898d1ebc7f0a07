"""The shared conformance vectors through a fleet: events published into the shards' streams,
applied by two workers; per (rule, scope) the actions equal the in-process engine's, the
errors (rejected at publish or dead-lettered by a worker) are the same set."""

from __future__ import annotations

from typing import Any

import pytest

from cluster_risk import build_config
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from tests.cluster.conform import by_scope, expected, fleet_output, with_final_tick
from tests.cluster.conftest import Threads, connect
from tests.helpers import lines, load_case


def run_fleet(url: str, threads: Threads, config: dict[str, Any], events: list[Any], workers: int = 2) -> set[Any]:
    """Publish, then let ``workers`` drain the streams; the errors rejected at publish."""
    client = connect(url)
    publisher = Publisher(client, shards=8)
    rejected = {(e.code, e.field, i) for i, e in publisher.publish_lines(lines(events))}
    for i in range(workers):
        threads.start(
            lambda i=i: Worker(
                build_config(config), connect(url), worker_id=f"w{i}", tick_ms=0, lease_ms=600, drain=True
            )
        )
    threads.join(timeout=120)
    return rejected


def check(url: str, config: dict[str, Any], events: list[Any], rejected: set[Any]) -> None:
    want_actions, want_errors = expected(config, events)
    actions, dead, ids = fleet_output(connect(url))
    assert by_scope(actions) == by_scope(want_actions)
    assert rejected | dead == want_errors
    assert not rejected & dead
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("n", range(1, 25))
def test_vector_standalone(server: RedisProcess, threads: Threads, n: int) -> None:
    data = load_case(n)
    events = with_final_tick(data["events"])
    rejected = run_fleet(server.url, threads, data["config"], events)
    check(server.url, data["config"], events, rejected)


@pytest.mark.parametrize("n", [3, 17, 24])
def test_vector_on_a_redis_cluster(cluster_url: str, threads: Threads, n: int) -> None:
    data = load_case(n)
    events = with_final_tick(data["events"])
    rejected = run_fleet(cluster_url, threads, data["config"], events)
    check(cluster_url, data["config"], events, rejected)
