"""Lost Redis state is detected, never absorbed; the fleet agrees on one config (issue 15,
items 5 and 6).  Real redis-server processes; workers in threads (or ``cluster-risk worker``
processes where the exit code is the point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster_risk import build_config
from cluster_risk.cluster import shards
from cluster_risk.cluster.client import RiskClient
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.ops import Ops
from cluster_risk.cluster.shards import ConfigDrift, Deployment, DeploymentError
from cluster_risk.cluster.status import fleet_status, shard_lags
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import ShardLost, Worker
from cluster_risk.events import Order, Trade
from cluster_risk.observability import WorkerMetrics
from tests.cluster.conftest import Threads, connect
from tests.cluster.fleet import wait_for
from tests.cluster.test_worker import everything
from tests.helpers import T0, S

SHARDS = 4
CONFIG: dict[str, Any] = {
    "rules": [
        {"type": "AccountVolumeLimitRule", "name": "vol", "daily_cap": 10},
        {"type": "OrderRateLimitRule", "name": "rate", "threshold": 2, "window_ns": 60 * S, "bucket_ns": S},
    ]
}


def lost_closed(gateway: RiskClient, account: str) -> bool:
    """The gateway refuses ``account`` because its shard's state was lost (other conditions,
    such as no live lease owner after a FLUSHALL, may hold as well)."""
    return "shard_state_lost" in [rule for rule, _ in gateway.pauses(account)]


def lost_gauge(gateway: RiskClient) -> float:
    return gateway._unhealthy_gauge.labels(condition="state_lost")._value.get()  # type: ignore[no-any-return]


def make_worker(url: str, name: str = "w1", config: dict[str, Any] = CONFIG, **options: Any) -> Worker:
    options = {"tick_ms": 0, "lease_ms": 500, "shards": SHARDS, **options}
    return Worker(build_config(config), connect(url), worker_id=name, **options)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cluster_risk.cli", *args]
    return subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )


def fill(oid: int, account: str, volume: int, at: int) -> list[Order | Trade]:
    return [Order(oid, account, "C1", "BID", 1.0, volume, at), Trade(oid, oid, 1.0, volume, at)]


def drifted(**changes: Any) -> dict[str, Any]:
    rules = [dict(r) for r in CONFIG["rules"]]
    rules[0] |= changes
    return {"rules": rules}


def actions(client: Any, keys: Any) -> list[dict[str, Any]]:
    out = []
    for shard in range(keys.shards):
        out += [json.loads(fields[b"a"]) for _, fields in client.xrange(keys.actions(shard))]
    return out


# ---------------------------------------------------------------------- lost state


def test_a_restart_without_persistence_ends_in_a_refusal_not_a_count_from_zero(
    server: RedisProcess, threads: Threads, tmp_path: Path
) -> None:
    """Cap 10: 8 applied, Redis restarts empty, 8 more: no silent count from zero (no PAUSE
    and no RESUME either): the shard is listed lost, nothing is applied to it, status exits 1
    and a gateway refuses the account."""
    client = connect(server.url)
    worker = threads.start(lambda: make_worker(server.url))
    publisher = Publisher(client)
    shard = worker.keys.shard_of("A")
    publisher.publish([(None, e) for e in fill(1, "A", 8, T0)])
    wait_for("the first fill applied", lambda: shard_lags(client, worker.keys)[shard] == 0, 20)
    server.kill()
    server.start()  # no persistence: an empty Redis on the same port
    publisher.publish([(None, e) for e in fill(2, "A", 8, T0 + S)])
    wait_for("the shard listed lost", lambda: shard in fleet_status(client).get("state_lost", ()), 20)
    assert Deployment(client).stored_id() == worker.deployment_id  # written back by the worker
    wait_for("a few beats", lambda: worker.leases.held and shard in worker.lost, 20)
    status = cli("status", "--json", "--redis-url", server.url)
    assert status.returncode == 1, status
    report = json.loads(status.stdout)
    assert report["state_lost"] == list(range(SHARDS))  # the record was gone: every shard
    assert report["deployment"]["shards"] == SHARDS
    assert report["shards"][shard]["lag"] > 0  # the second fill waits, not applied from zero
    assert actions(client, worker.keys) == []
    assert not any(k.startswith(b"risk:{s%d}:day:" % shard) for k in client.keys("*"))  # no sum counted
    plain = cli("status", "--redis-url", server.url)
    assert plain.returncode == 1 and "STATE LOST" in plain.stdout, plain
    with RiskClient(client, poll_s=0.05) as gateway:
        assert lost_closed(gateway, "A")
        assert gateway.lost == frozenset(range(SHARDS))
    assert not threads.errors


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_after_flushall_the_gateway_fails_closed_until_an_audited_recover(
    where: str, request: pytest.FixtureRequest, threads: Threads
) -> None:
    """The rate pause a gateway held never gets its RESUME after a FLUSHALL: the gateway
    refuses the account while the shard is lost; `recover` (audited) restarts it afresh and the
    gateway reloads its pauses.  On one server and on a 3-master Redis Cluster."""
    url = request.getfixturevalue("server").url if where == "standalone" else request.getfixturevalue("cluster_url")
    client = connect(url)
    worker = threads.start(lambda: make_worker(url, metrics=WorkerMetrics()))
    assert worker.metrics is not None
    # else the gateway fails closed for shards nobody holds yet (tests/cluster/test_gates.py)
    wait_for("the worker holding every shard", lambda: len(worker.leases.held) == SHARDS, 20)
    gateway = RiskClient(client, poll_s=0.05, fail_after_s=60).start()
    try:
        gateway.publish_many([Order(k, "A", "C1", "BID", 1.0, 1, T0 + k) for k in range(1, 4)])
        wait_for("the rate pause", lambda: gateway.is_paused("A"), 20)
        assert [p[0] for p in gateway.pauses("A")] == ["rate"]
        client.flushall()  # on a cluster: every master
        wait_for("the gateway failing closed", lambda: lost_closed(gateway, "A"), 20)
        assert lost_closed(gateway, "B")  # every shard: the record itself was gone
        wait_for("the worker's report", lambda: worker.lost == set(range(SHARDS)), 20)
        assert worker.metrics.state_lost._value.get() == SHARDS
        assert lost_gauge(gateway) == SHARDS

        refused = cli("recover", "--shard", "99", "--reason", "x", "--redis-url", url)
        assert refused.returncode == 2 and "not a shard" in refused.stderr, refused
        done = cli("recover", "--all", "--reason", "FLUSHALL by mistake", "--who", "ops", "--redis-url", url)
        assert done.returncode == 0, done
        assert "recovered shard(s) 0, 1, 2, 3" in done.stdout
        again = cli("recover", "--shard", "0", "--reason", "x", "--redis-url", url)
        assert again.returncode == 1 and "has not lost its state" in again.stderr, again

        wait_for("the gateway back, its pauses reloaded", lambda: gateway.pauses("A") == [], 20)
        wait_for("the worker applying again", lambda: not worker.lost, 20)
        assert worker.metrics.state_lost._value.get() == 0 and lost_gauge(gateway) == 0
        gateway.publish(Order(10, "B", "C1", "BID", 1.0, 1, T0 + 10))
        wait_for("applied", lambda: sum(shard_lags(client, worker.keys)) == 0, 20)
        status = cli("status", "--json", "--redis-url", url)
        assert status.returncode == 0 and json.loads(status.stdout)["state_lost"] == [], status
        audit = Ops(client).audit()
        assert [(r["what"], r["who"], r["why"], r["shards"]) for r in audit] == [
            ("recover", "ops", "FLUSHALL by mistake", list(range(SHARDS)))
        ]
    finally:
        gateway.close()


def test_a_shard_without_the_deployment_id_is_refused_before_any_write(server: RedisProcess) -> None:
    client = connect(server.url)
    Publisher(client, shards=SHARDS).publish([(None, e) for e in fill(1, "A", 3, T0)])
    worker = make_worker(server.url, max_events=2)
    worker.run()
    shard = worker.keys.shard_of("A")
    Publisher(client).publish([(None, e) for e in fill(2, "A", 3, T0 + S)])
    client.hdel(worker.keys.lease(shard), "deployment")  # as after an eviction or a FLUSHALL
    worker.leases.beat()  # holds the shards again
    before = everything(server)
    entries = client.xrange(worker.keys.input(shard), min=worker._cursor(shard).sid, count=10)[1:]  # type: ignore[union-attr]
    with pytest.raises(ShardLost, match="lost"):
        worker._apply(shard, entries)
    assert everything(server) == before
    client.hset(worker.keys.lease(shard), "deployment", "another deployment")
    with pytest.raises(ShardLost, match="lost"):
        worker._apply(shard, entries)


def test_publishers_never_recreate_the_record_of_a_running_fleet(server: RedisProcess, threads: Threads) -> None:
    client = connect(server.url)
    worker = threads.start(lambda: make_worker(server.url))
    wait_for("the worker alive", lambda: bool(worker.leases.held), 20)
    client.flushall()
    try:  # before the worker writes the record back: refused; after: joins its 4 shards
        Publisher(client).publish([(None, e) for e in fill(1, "A", 1, T0)])
    except DeploymentError as exc:
        assert "no deployment" in str(exc) or "workers are alive" in str(exc)
    wait_for("a record", lambda: Deployment(client).stored_shards() is not None, 20)
    assert Deployment(client).stored_shards() == SHARDS
    assert Deployment(client).stored_id() == worker.deployment_id  # the fleet's, written back
    published = cli("publish", "--config", _config_file(server, CONFIG), "--redis-url", server.url, "-")
    assert published.returncode == 0, published
    assert Deployment(client).stored_shards() == SHARDS


def test_a_publisher_creates_a_deployment_only_when_told_the_shard_count_and_no_worker_is_alive(
    server: RedisProcess,
) -> None:
    client = connect(server.url)
    with pytest.raises(DeploymentError, match="no deployment"):
        Publisher(client, retry_s=0.3)
    with pytest.raises(DeploymentError, match="no deployment"):
        RiskClient(client)
    client.zadd("risk:workers", {"w1": int(client.time()[0]) * 1000})  # a worker's heartbeat
    with pytest.raises(DeploymentError, match="workers are alive"):
        Publisher(client, shards=16)
    assert not client.exists("risk:deployment")
    client.delete("risk:workers")
    assert Publisher(client, shards=8).keys.shards == 8
    record = Deployment(client).record()
    assert record["shards"] == "8" and record["ready"] == "1" and len(record["id"]) == 16
    assert {client.hget(f"risk:{{s{k}}}:lease", "deployment") for k in range(8)} == {record["id"].encode()}


# ---------------------------------------------------------------------- eviction


def test_workers_refuse_a_redis_that_may_evict(tmp_path: Path, redis_binaries: tuple[str, str]) -> None:
    lru = RedisProcess(tmp_path / "lru", "--maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(DeploymentError, match="maxmemory-policy is 'allkeys-lru'"):
            make_worker(lru.url)
        assert not lru.client().exists("risk:deployment")  # refused before joining anything
        config = _config_file(lru, CONFIG)
        run = cli("worker", "--config", config, "--redis-url", lru.url, "--max-events", "0", "--tick-ms", "0")
        assert run.returncode == 2 and "noeviction" in run.stderr, run
        assert len(run.stderr.strip().splitlines()) == 1
        allowed = cli(
            "worker", "--config", config, "--redis-url", lru.url, "--max-events", "0", "--tick-ms", "0",
            "--allow-eviction",
        )  # fmt: skip
        assert allowed.returncode == 0, allowed
    finally:
        lru.stop()


def test_a_redis_that_does_not_tell_its_policy_needs_the_override(server: RedisProcess) -> None:
    server.client().acl_setuser("noinfo", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"])
    managed = redis.Redis(host="127.0.0.1", port=server.port, username="noinfo", password="pw")
    with pytest.raises(DeploymentError, match=r"INFO refused.*--allow-eviction"):
        Worker(build_config(CONFIG), managed, worker_id="w1")
    assert not server.client().exists("risk:deployment")


# ---------------------------------------------------------------------- config drift


def test_a_worker_with_a_drifted_config_exits_2_with_a_diff(server: RedisProcess) -> None:
    client = connect(server.url)
    make_worker(server.url)  # the first worker: stores its config
    stored = client.hgetall("risk:deployment")
    config = _config_file(server, drifted(daily_cap=20))
    run = cli("worker", "--config", config, "--redis-url", server.url, "--max-events", "0", "--tick-ms", "0")
    assert run.returncode == 2, run
    assert "rules[0].daily_cap: stored 10.0, this process 20.0" in run.stderr
    assert client.hgetall("risk:deployment") == stored  # never overwritten
    assert Deployment(client).rules()[0]["daily_cap"] == 10
    assert client.zcard("risk:workers") == 0  # it never joined


def test_every_process_presenting_a_config_is_checked(server: RedisProcess) -> None:
    client = connect(server.url)
    make_worker(server.url)
    same = {"rules": [dict(r) for r in CONFIG["rules"]]}
    same["rules"][1] |= {"resume_threshold": 2, "bucket_ns": S}  # defaults written out: the same config
    make_worker(server.url, "w2", config=same)
    other = build_config(drifted(name="volume"))
    with pytest.raises(ConfigDrift, match=r"rules\[0\].name: stored \"vol\", this process \"volume\""):
        make_worker(server.url, "w3", config=drifted(name="volume"))
    with pytest.raises(ConfigDrift):
        Publisher(client, config=other)
    with pytest.raises(ConfigDrift):
        RiskClient(client, config=other)
    config = _config_file(server, drifted(daily_cap=11))
    inspect = cli("inspect", "--account", "A", "--config", config, "--redis-url", server.url)
    assert inspect.returncode == 2 and "daily_cap: stored 10.0, this process 11.0" in inspect.stderr, inspect
    publish = cli("publish", "--config", config, "--redis-url", server.url, "-")
    assert publish.returncode == 2 and "differs" in publish.stderr, publish
    trading_day = cli(
        "inspect", "--account", "A", "--config",
        _config_file(server, CONFIG | {"trading_day": {"timezone": "Asia/Shanghai", "start": "21:00"}}),
        "--redis-url", server.url,
    )  # fmt: skip
    assert trading_day.returncode == 2 and 'trading_day.start: stored "00:00", this process "21:00"' in (
        trading_day.stderr
    )


def _config_file(server: RedisProcess, config: dict[str, Any]) -> str:
    path = server.folder / f"config-{abs(hash(json.dumps(config, sort_keys=True)))}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def test_a_record_replaced_under_a_running_worker_stops_it_and_every_shard_is_lost(
    server: RedisProcess, threads: Threads
) -> None:
    client = connect(server.url)
    worker = threads.start(lambda: make_worker(server.url))
    wait_for("the worker alive", lambda: bool(worker.leases.held), 20)
    client.flushall()
    client.hset("risk:deployment", mapping={"shards": str(SHARDS), "id": "another", "ready": "1"})
    wait_for("the worker stopped", lambda: not threads.threads[0].is_alive(), 20)
    assert "now names deployment another" in str(threads.errors[0])
    threads.errors.clear()
    assert sorted(Deployment(client).lost(worker.keys)) == list(range(SHARDS))


def test_a_record_its_creator_left_unready_is_completed_by_the_next_process(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shards, "_READY_WAIT_S", 0.2)
    client = connect(server.url)
    client.hset("risk:deployment", mapping={"shards": str(SHARDS), "id": "abc"})  # then the creator died
    assert Deployment(client).ensure(None).shards == SHARDS
    assert client.hget("risk:deployment", "ready") == b"1"
    assert {client.hget(f"risk:{{s{k}}}:lease", "deployment") for k in range(SHARDS)} == {b"abc"}


def test_a_gateway_alone_keeps_the_loss_for_the_workers_started_after_it(
    server: RedisProcess, threads: Threads
) -> None:
    """No worker runs during the FLUSHALL: the gateway writes the record back (every shard
    lost), so a worker started later joins the lost deployment instead of creating a new one."""
    client = connect(server.url)
    first = make_worker(server.url)  # creates the deployment, then is gone
    with RiskClient(client, poll_s=0.05) as gateway:
        client.flushall()
        wait_for("the gateway failing closed", lambda: lost_closed(gateway, "A"), 20)
        assert Deployment(client).stored_id() == first.deployment_id
        later = threads.start(lambda: make_worker(server.url, "w2"))
        assert later.deployment_id == first.deployment_id
        wait_for("the later worker refusing", lambda: later.lost == set(range(SHARDS)), 20)
        assert fleet_status(client)["state_lost"] == list(range(SHARDS))


def test_one_lost_shard_is_skipped_and_the_others_are_served(server: RedisProcess, threads: Threads) -> None:
    """A shard whose id vanished (as after an eviction of its lease hash) is refused by the
    script, listed and skipped; the worker goes on applying every other shard."""
    client = connect(server.url)
    worker = threads.start(lambda: make_worker(server.url))
    wait_for("the worker holding every shard", lambda: len(worker.leases.held) == SHARDS, 20)
    lost = worker.keys.shard_of("A")
    other = next(a for a in (f"B{k}" for k in range(100)) if worker.keys.shard_of(a) != lost)
    client.delete(worker.keys.lease(lost))  # the whole lease hash, as an eviction would
    publisher = Publisher(client)
    publisher.publish([(None, e) for e in fill(1, "A", 11, T0) + fill(2, other, 11, T0)])
    wait_for("the lost shard listed", lambda: fleet_status(client)["state_lost"] == [lost], 20)
    wait_for("the other shard applied", lambda: shard_lags(client, worker.keys)[worker.keys.shard_of(other)] == 0, 20)
    assert [(a["type"], a["scope"]) for a in actions(client, worker.keys)] == [("PAUSE_ORDER", {"account": other})]
    assert shard_lags(client, worker.keys)[lost] == 2
    assert worker.lost == {lost}
    status = cli("status", "--json", "--redis-url", server.url)
    assert status.returncode == 1 and json.loads(status.stdout)["state_lost"] == [lost]
