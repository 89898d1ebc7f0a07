"""The gateway client: the pause cache from a snapshot plus the actions stream, answering in
memory; publishing routed by account; fail closed (or open) when Redis is gone."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from cluster_risk import Trade, build_config
from cluster_risk.cluster.client import UNREACHABLE, AsyncRiskClient, RiskClient
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.shards import Deployment
from cluster_risk.cluster.worker import Worker
from tests.cluster.conftest import Threads, connect
from tests.cluster.fleet import wait_for
from tests.helpers import MS, T0, order

CONFIG = {
    "contract_to_product": {"C1": "P1", "C2": "P1"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 3, "window_ns": 10 * MS, "bucket_ns": MS},
        {"type": "AccountVolumeLimitRule", "daily_cap": 10, "dimensions": ["account", "product"]},
    ],
}


def start_worker(url: str, threads: Threads) -> Worker:
    worker = threads.start(lambda: Worker(build_config(CONFIG), connect(url), worker_id="w", tick_ms=0, shards=4))
    wait_for("the worker's leases", lambda: len(worker.leases.held) == 4, 10)  # else gateways fail closed
    return worker


def test_pauses_reach_the_cache_and_answer_in_memory(server: RedisProcess, threads: Threads) -> None:
    start_worker(server.url, threads)
    with RiskClient(connect(server.url), config=build_config(CONFIG)) as client:
        assert not client.is_paused("A")
        client.publish_many([order(i, T0 + i, account="A") for i in range(1, 5)])  # 4 orders in 10 ms > 3
        took = wait_for("the pause in the cache", lambda: client.is_paused("A"), 5)
        assert took < 1.0
        assert client.check(order(99, T0, account="A")) == [("OrderRateLimitRule", (("account", "A"),))]
        assert not client.is_paused("B")
        client.publish(order(10, T0, account="B", contract="C2"))
        client.publish(Trade(1, 10, 100.0, 11, T0 + 1))  # a fill without account: over the cap of (B, P1)
        wait_for("the product pause", lambda: client.is_paused("B", "C1"), 5)
        assert not client.is_paused("B")  # only (B, P1) is paused, not B on other products
        assert client.is_paused("B", product="P1")
        client.publish(order(11, T0 + 50 * MS, account="A"))  # the window has passed: resume
        wait_for("the resume", lambda: not client.is_paused("A"), 5)
    with RiskClient(connect(server.url)) as late:  # a gateway started later: from the snapshot
        assert late.is_paused("B", product="P1") and not late.is_paused("A")


def test_the_gateway_fails_closed_within_its_bound(
    redis_binaries: tuple[str, str], tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    # With persistence: a Redis back without its data is lost state (tests/cluster/test_state_lost.py)
    server = RedisProcess(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")  # type: ignore[operator]
    try:
        Deployment(connect(server.url)).ensure(4)  # a gateway joins a deployment, never creates one
        # no worker here: only Redis is checked, not whether anybody applies (tests/cluster/test_gates.py)
        client = RiskClient(connect(server.url), fail_after_s=0.5, poll_s=0.05, owner_grace_s=None).start()
        opened = RiskClient(connect(server.url), fail_after_s=0.5, poll_s=0.05, fail_open=True).start()
        assert not client.is_paused("A") and not client.failing
        server.kill()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="cluster_risk.cluster.client"):
            took = wait_for("failing closed", lambda: client.is_paused("A"), 5)
        assert took <= 0.5 + 0.3
        assert client.check(order(1, T0, account="Z")) == [UNREACHABLE]
        assert client.failing and client._fail_gauge._value.get() == 1
        assert "failing closed" in caplog.text
        assert time.monotonic() - started < 2
        wait_for("open side failing", lambda: opened.pauses("A") == [] and opened.failing, 5)
        server.start()  # same port: the follower reconnects and the scopes come back
        wait_for("recovered", lambda: not client.is_paused("A"), 10)
        client.close()
        opened.close()
    finally:
        server.stop()


def test_the_asyncio_client(server: RedisProcess, threads: Threads) -> None:
    start_worker(server.url, threads)

    async def run() -> None:
        async with AsyncRiskClient(connect(server.url)) as client:
            await client.publish_many([order(i, T0 + i, account="Q") for i in range(1, 5)])
            for _ in range(100):
                if client.is_paused("Q"):
                    break
                await asyncio.sleep(0.02)
            assert client.is_paused("Q")

    asyncio.run(run())


def test_the_cache_on_a_redis_cluster(cluster_url: str, threads: Threads) -> None:
    start_worker(cluster_url, threads)
    with RiskClient(connect(cluster_url), config=build_config(CONFIG)) as client:
        client.publish_many([order(i, T0 + i, account="K") for i in range(1, 5)])
        wait_for("the pause in the cache", lambda: client.is_paused("K"), 5)
        client.publish(order(9, T0 + 50 * MS, account="K"))
        wait_for("the resume", lambda: not client.is_paused("K"), 5)
