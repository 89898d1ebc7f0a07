"""Shard leases and the deployment record: lua/lease.lua, release.lua, heartbeat.lua and
the assignment every worker computes alike."""

from __future__ import annotations

import time

import pytest

from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.leases import Leases, assign
from cluster_risk.cluster.shards import Deployment, DeploymentError, Keys, Scripts
from tests.cluster.conftest import connect


def test_assignment_spreads_shards_evenly_and_alike() -> None:
    spread = assign(["a", "b", "c"], 16)
    assert sorted(k for shards in spread.values() for k in shards) == list(range(16))
    assert sorted(len(s) for s in spread.values()) == [5, 5, 6]
    assert assign(["a", "b", "c"], 16) == spread
    assert assign([], 4) == {}


def owners(live: list[str], shards: int) -> dict[int, str]:
    return {k: w for w, ks in assign(live, shards).items() for k in ks}


@pytest.mark.parametrize("shards", [16, 64, 256])
def test_a_joining_worker_moves_few_shards(shards: int) -> None:
    """Rendezvous hashing: close to the minimum (the newcomer's share), where k mod n moved
    most shards (16 shards, 3 -> 4 workers: 10 of 16)."""
    for n in range(1, 8):
        live = [f"worker-{i}" for i in range(n)]
        before, after = owners(live, shards), owners([*live, f"worker-{n}"], shards)
        moved = sum(before[k] != after[k] for k in range(shards))
        share = shards // (n + 1)
        assert share <= moved <= share + max(4, shards // 5), (n, moved)
        assert sorted({len(ks) for ks in assign([*live, f"worker-{n}"], shards).values()}) in (
            [shards // (n + 1)],
            [shards // (n + 1), shards // (n + 1) + 1],
        )


def test_taking_bumps_the_epoch_and_an_old_holder_cannot_keep_it(server: RedisProcess) -> None:
    client = connect(server.url)
    scripts = Scripts(client)
    key = Keys("risk", 4).lease(2)
    assert scripts("lease.lua", [key], ["a", 300, "0"]) == [b"taken", 1]
    assert scripts("lease.lua", [key], ["a", 300, "1"]) == [b"kept", 1]
    held = scripts("lease.lua", [key], ["b", 300, "0"])
    assert held[:2] == [b"held", b"a"] and 0 < held[2] <= 300
    time.sleep(0.35)  # a's lease expires: b takes over, epoch 2
    assert scripts("lease.lua", [key], ["b", 300, "0"]) == [b"taken", 2]
    assert scripts("lease.lua", [key], ["a", 300, "1"]) == [b"lost", 2, b"b"]
    assert scripts("release.lua", [key], ["a", "1"]) == 0  # a stale release changes nothing
    assert scripts("release.lua", [key], ["b", "2"]) == 1
    assert scripts("lease.lua", [key], ["a", 300, "0"]) == [b"taken", 3]  # the epoch never goes back


def test_workers_share_the_shards_and_a_leaver_hands_them_over(server: RedisProcess) -> None:
    keys = Keys("risk", 8)
    a = Leases(connect(server.url), keys, "a", lease_ms=400)
    b = Leases(connect(server.url), keys, "b", lease_ms=400)
    share = set(assign(["a", "b"], 8)["b"])
    assert len(share) == 4
    assert a.beat() == (set(range(8)), set())
    assert b.beat() == (set(), set())  # b's shards are still a's
    gained, lost = a.beat()  # a sees b and gives b's share back
    assert gained == set() and lost == share
    assert b.beat() == (share, set())
    b.leave()
    assert a.beat() == (share, set())
    assert sorted(a.held) == list(range(8))


def test_a_dead_workers_shards_move_after_its_lease(server: RedisProcess) -> None:
    keys = Keys("risk", 4)
    a = Leases(connect(server.url), keys, "a", lease_ms=300)
    b = Leases(connect(server.url), keys, "b", lease_ms=300)
    a.beat()
    b.beat()
    a.beat()
    b.beat()
    spread = assign(["a", "b"], 4)
    assert sorted(a.held) == spread["a"] and sorted(b.held) == spread["b"]
    epochs = dict(a.held)
    time.sleep(0.4)  # a dies: no more beats
    b.beat()
    assert sorted(b.held) == [0, 1, 2, 3]
    assert all(b.held[s] == epochs[s] + 1 for s in epochs)


def test_the_shard_count_is_fixed_per_deployment(server: RedisProcess) -> None:
    client = connect(server.url)
    assert Deployment(client).ensure(8).shards == 8
    assert Deployment(client).ensure(None).shards == 8
    with pytest.raises(DeploymentError, match="has 8 shards, this process was started with 4"):
        Deployment(client).ensure(4)
    assert Deployment(client, prefix="other").ensure(None).shards == 16
