"""Faults with real processes and real Redis.  In each, per (rule, scope) the actions equal
the in-process engine's on the same stream, the errors are the same, and no action appears
twice (tests/cluster/fleet.py: Fleet.check)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_risk.cluster.launcher import LocalCluster
from tests.cluster.fleet import Fleet, final, fleet_fixture, wait_for
from tests.cluster.workload import events as workload

N = 12_000


@pytest.fixture(params=["standalone", "cluster"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet on a standalone redis-server, or on a 3-master Redis Cluster (flushed first)."""
    if request.param == "standalone":
        url = request.getfixturevalue("server").url
    else:
        url = request.getfixturevalue("cluster_url")
    yield from fleet_fixture(url, tmp_path)


def test_kill_9_of_a_worker_mid_stream(fleet: Fleet) -> None:
    events = final(workload(N, seed=1))
    fleet.start("w1")
    fleet.start("w2")
    fleet.publish(events, rate=6000)
    wait_for("a quarter applied", lambda: fleet.applied() > N // 4, 30)
    fleet.procs["w1"].send_signal(signal.SIGKILL)
    fleet.procs["w1"].wait(5)
    wait_for("everything applied", lambda: fleet.drained(len(events)), 60, fleet.explain)
    fleet.check(events)


def test_a_worker_stopped_past_its_lease_cannot_write_late(fleet: Fleet) -> None:
    events = final(workload(N, seed=2))
    w1 = fleet.start("w1")
    fleet.publish(events, rate=6000)
    wait_for("a quarter applied", lambda: fleet.applied() > N // 4, 30)
    w1.send_signal(signal.SIGSTOP)  # mid-stream, holding every shard
    fleet.start("w2")
    wait_for("w2 took over", lambda: fleet.applied() > N // 2, 30)
    w1.send_signal(signal.SIGCONT)  # its batch in hand and its leases are stale now
    wait_for("everything applied", lambda: fleet.drained(len(events)), 60, fleet.explain)
    time.sleep(1.5)  # w1 rejoins: the shards are shared again
    fleet.stop()
    log = fleet.log("w1")
    assert "fenced" in log or "lease on shard" in log  # refused by epoch, or told by its lease
    fleet.check(events)


def test_replicated_failover_of_a_cluster_master(tmp_path: Path, redis_binaries: tuple[str, str]) -> None:
    nodes = LocalCluster(tmp_path / "cluster")
    fleet = Fleet(nodes.url, tmp_path)
    try:
        events = final(workload(N, seed=3, resets=False))
        durable = ("--durability", "replicated", "--replicas", "1")
        fleet.start("w1", *durable, "--lease-ms", "2000")
        fleet.start("w2", *durable, "--lease-ms", "2000")
        fleet.publish(events, rate=4000, replicas=1)
        wait_for("a quarter applied", lambda: fleet.applied() > N // 4, 30)
        master = next(n for n in nodes.nodes if n.client().info("replication")["role"] == "master")
        replica = next(n for n in nodes.nodes if n.client().info("replication").get("master_port") == master.port)
        master.kill()
        took = wait_for("the replica promoted", lambda: replica.client().info("replication")["role"] == "master", 30)
        nodes.wait_ok()
        master.start()  # empty (no persistence here): it rejoins as a replica of the promoted one
        wait_for("everything applied", lambda: fleet.drained(len(events)), 90, fleet.explain)
        fleet.check(events)
        assert took < 30
    finally:
        fleet.stop()
        nodes.stop()
