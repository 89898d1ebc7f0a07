"""Gateways fail closed when nobody applies: a shard with no live worker, or whose oldest
entry not yet applied waits too long, has its accounts refused (or, failing open, only
reported), with a log line and a metric; the order path stays a dict lookup."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from cluster_risk import Order, build_config
from cluster_risk.cluster.client import RiskClient
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.leases import Leases
from cluster_risk.cluster.ops import Ops
from cluster_risk.cluster.shards import Keys
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from tests.cluster.conftest import Threads, connect
from tests.cluster.fleet import wait_for
from tests.helpers import T0, order

SHARDS = 4
CONFIG = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1000}]}
NO_OWNER, STALE = "no_owner", "stale"  # cluster_risk.cluster.client's conditions


def gate_order(oid: int, account: str) -> Order:
    """An order at T0 + oid (its id as its time)."""
    return order(oid, T0 + oid, account=account, price=1.0)


def gateway(url: str, **options: Any) -> RiskClient:
    options = {"poll_s": 0.05, "health_s": 0.05, "owner_grace_s": 0.3, "stale_after_s": 0.5, **options}
    return RiskClient(connect(url), config=build_config(CONFIG), **options)


def other_shard(keys: Keys, account: str) -> str:
    return next(a for a in (f"B{i}" for i in range(100)) if keys.shard_of(a) != keys.shard_of(account))


def test_a_gateway_with_nobody_applying_refuses_orders(server: RedisProcess) -> None:
    """The reproduction: Redis up, events published, no worker alive - the defaults refuse."""
    publisher = Publisher(connect(server.url), shards=SHARDS)
    publisher.publish([(None, gate_order(1, "A"))])
    with RiskClient(connect(server.url)) as client:
        assert client.is_paused("A") and client.check(gate_order(2, "B"))
        assert not client.failing  # Redis answers: it is the shards that are unhealthy


def test_no_live_worker_closes_the_gates(server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    Publisher(connect(server.url), shards=SHARDS)  # a deployment, and nobody applying it
    with caplog.at_level(logging.WARNING, logger="cluster_risk.cluster.client"), gateway(server.url) as client:
        shard = client.keys.shard_of("A")
        assert client.check(gate_order(1, "A")) == [("shard_no_owner", (("shard", str(shard)),))]  # from the start
        assert client.is_paused("Z") and not client.failing
        assert client.unhealthy.shards(NO_OWNER) == set(range(SHARDS))
        assert client._unhealthy_gauge.labels(condition=NO_OWNER)._value.get() == SHARDS
        assert "no live worker holds their lease" in caplog.text and "failing closed" in caplog.text

        threads = Threads()
        try:
            threads.start(lambda: Worker(build_config(CONFIG), connect(server.url), worker_id="w", tick_ms=0))
            wait_for("the gates open", lambda: not client.is_paused("A") and not client.is_paused("Z"), 10)
            assert client._unhealthy_gauge.labels(condition=NO_OWNER)._value.get() == 0
        finally:
            threads.stop_all()  # the worker leaves: its leases are released
        wait_for("the gates closed again", lambda: client.is_paused("A"), 5)
        assert "no_owner no more" in caplog.text


def test_an_owner_that_does_not_apply_closes_its_shard_only(server: RedisProcess) -> None:
    publisher = Publisher(connect(server.url), shards=SHARDS)
    zombie = Leases(connect(server.url), publisher.keys, "zombie", lease_ms=60_000)
    zombie.beat()  # holds every lease, applies nothing
    assert sorted(zombie.held) == list(range(SHARDS))
    other = other_shard(publisher.keys, "A")
    with gateway(server.url) as client:
        assert not client.is_paused("A") and not client.is_paused(other)
        publisher.publish([(None, gate_order(1, "A"))])
        wait_for("the stale shard closed", lambda: client.is_paused("A"), 5)
        shard = client.keys.shard_of("A")
        assert client.check(gate_order(2, "A")) == [("shard_stale", (("shard", str(shard)),))]
        assert client.unhealthy.shards(STALE) == {shard}
        assert not client.is_paused(other)  # its shard has nothing waiting


def test_shards_unowned_at_start_stay_closed_through_the_grace(server: RedisProcess) -> None:
    """The follower's next check comes before the owner grace has passed: a shard nobody held
    when the gateway first looked must stay closed (it was not reopened for the grace)."""
    Publisher(connect(server.url), shards=SHARDS)
    with gateway(server.url, owner_grace_s=30, health_s=60) as c:
        assert c.unhealthy.shards(NO_OWNER) == set(range(SHARDS))
        c.check_health()  # as the follower would, well inside the 30 s grace
        assert c.unhealthy.shards(NO_OWNER) == set(range(SHARDS))
        assert c.is_paused("A")


def test_shards_unowned_at_start_are_closed_whatever_the_clock_reads(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At this clock reading ``now - (now - 0.3) >= 0.3`` is False: the grace of a shard unowned
    before the first look must not be computed by subtraction."""
    Publisher(connect(server.url), shards=SHARDS)
    monkeypatch.setattr(time, "monotonic", lambda: 12345.678901234)
    with gateway(server.url, owner_grace_s=0.3, health_s=60) as c:
        assert c.unhealthy.shards(NO_OWNER) == set(range(SHARDS))


def test_failing_open_reports_without_refusing(server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    Publisher(connect(server.url), shards=SHARDS)
    with (
        caplog.at_level(logging.WARNING, logger="cluster_risk.cluster.client"),
        gateway(server.url, fail_open=True) as c,
    ):
        assert c.check(gate_order(1, "A")) == []
        assert c.unhealthy.shards(NO_OWNER) == set(range(SHARDS))
        assert c._unhealthy_gauge.labels(condition=NO_OWNER)._value.get() == SHARDS
    assert "failing open" in caplog.text


def test_the_checks_can_be_turned_off(server: RedisProcess) -> None:
    Publisher(connect(server.url), shards=SHARDS).publish([(None, gate_order(1, "A"))])
    with gateway(server.url, owner_grace_s=None, stale_after_s=None) as client:
        assert not client.is_paused("A") and not client.unhealthy.by_shard


def test_a_gateway_back_from_an_outage_reloads_its_snapshot(server: RedisProcess) -> None:
    """Actions missed while away may have been trimmed (worker Retention): after a reconnect
    the gateway reads the pause hashes again, not only the actions stream after its position."""
    Publisher(connect(server.url), shards=SHARDS)
    with gateway(server.url, owner_grace_s=None, stale_after_s=None, fail_after_s=60) as client:
        assert not client.is_paused("A")
        catch_up, hint = client.catch_up, client._hint
        down = threading.Event()
        down.set()

        def cut(shards: Iterable[int]) -> None:
            if down.is_set():
                raise RedisConnectionError("link down")
            catch_up(shards)

        client.catch_up = cut  # type: ignore[method-assign]
        client._hint = lambda data: None  # type: ignore[method-assign]  # nothing heard while away
        ops = Ops(connect(server.url))
        assert ops.pause({"account": "A"}, "desk call", "alice").status == "ok"
        connect(server.url).xtrim(client.keys.actions(client.keys.shard_of("A")), maxlen=0)  # trimmed meanwhile
        time.sleep(0.3)  # the follower fails a few times
        client._hint = hint  # type: ignore[method-assign]
        down.clear()  # the link is back
        wait_for("the pause, from the snapshot", lambda: client.is_paused("A"), 5)
