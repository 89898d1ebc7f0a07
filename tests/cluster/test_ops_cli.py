"""The operator's commands (inspect, pause/resume kill switch, audit, reset-daily) run as the
real CLI against real redis-server processes: a standalone server and a 3-master cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import ResetDaily, RiskEngine, Tick, Trade, build_config
from cluster_risk.cluster.client import RiskClient
from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.shards import Deployment, DeploymentError, Keys
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from cluster_risk.events import Event
from tests.cluster.conform import by_scope
from tests.cluster.conftest import connect
from tests.cluster.fleet import wait_for
from tests.helpers import DAY, MS, T0, T0_DATE, order

CLI = [sys.executable, "-m", "cluster_risk.cli"]
SHARDS = 4
CONFIG: dict[str, Any] = {
    "contract_to_product": {"C1": "P1", "C2": "P1", "C3": "P2"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 3, "window_ns": 100 * MS, "bucket_ns": MS, "resume_threshold": 1},
        {"type": "AccountVolumeLimitRule", "daily_cap": 10, "dimensions": ["account", "product"]},
        {"type": "AccountVolumeLimitRule", "name": "trades", "metric": "count", "daily_cap": 3},
    ],
}
MANUAL_A = ("manual", (("account", "A"),))
RATE_A = ("OrderRateLimitRule", (("account", "A"),))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(params=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "standalone":
        server: RedisProcess = request.getfixturevalue("server")
        yield server.url
    else:
        yield str(request.getfixturevalue("cluster_url"))


def publish(url: str, events: list[Event]) -> None:
    Publisher(connect(url), shards=SHARDS).publish([(None, e) for e in events])


def drain(url: str) -> None:
    """Apply everything published so far (a worker that exits once nothing is left)."""
    Worker(build_config(CONFIG), connect(url), worker_id="w", tick_ms=0, shards=SHARDS, drain=True).run()


def printed_actions(url: str) -> list[dict[str, Any]]:
    done = cli("actions", "--redis-url", url)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def audit(url: str, *extra: str) -> list[dict[str, Any]]:
    done = cli("audit", "--redis-url", url, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def inspect(url: str, account: str, *extra: str) -> dict[str, Any]:
    done = cli("inspect", "--account", account, "--redis-url", url, "--json", *extra)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def manual_fields(url: str, account: str) -> dict[str, str]:
    keys = Keys("risk", SHARDS)
    got = connect(url).hgetall(keys.manual(keys.shard_of(account)))
    return {k.decode(): v.decode() for k, v in got.items()}


def test_kill_switch_is_lifted_only_by_a_manual_resume(url: str) -> None:
    publish(url, [order(i, T0 + i, account="A") for i in range(1, 6)])  # 5 orders in 5 ns > 3: the rate rule pauses A
    drain(url)
    gateway = RiskClient(
        connect(url), config=build_config(CONFIG), poll_s=0.05, fail_after_s=60, owner_grace_s=None
    ).start()
    try:
        assert gateway.check(order(99, T0, account="A")) == [RATE_A]

        before = time.time_ns()
        done = cli("pause", "--account", "A", "--reason", "fat finger", "--who", "alice", "--redis-url", url)
        after = time.time_ns()
        assert done.returncode == 0, done.stderr
        assert "paused account=A" in done.stdout
        wait_for("the manual pause at the gateway", lambda: MANUAL_A in gateway.check(order(99, T0, account="A")), 5)

        # Twice, or resuming what is not paused: refused, exit 1, nothing written.
        streams = (len(printed_actions(url)), len(audit(url)))
        again = cli("pause", "--account", "A", "--reason", "again", "--who", "carol", "--redis-url", url)
        assert again.returncode == 1 and "already paused by hand" in again.stderr and "alice" in again.stderr
        nothing = cli("resume", "--account", "A", "--contract", "C1", "--reason", "x", "--redis-url", url)
        assert nothing.returncode == 1 and "no manual pause" in nothing.stderr
        assert (len(printed_actions(url)), len(audit(url))) == streams
        assert json.loads(manual_fields(url, "A")["A"])["who"] == "alice"

        # Orders that bring the window back under the resume threshold: the rate pause goes,
        # the manual one stays.
        publish(url, [order(10, T0 + 200 * MS, account="A")])
        drain(url)
        last = printed_actions(url)[-1]
        assert (last["type"], last["rule"], last["scope"]) == ("RESUME_ORDER", "OrderRateLimitRule", {"account": "A"})
        wait_for("the rate resume at the gateway", lambda: RATE_A not in gateway.check(order(99, T0, account="A")), 5)
        assert gateway.check(order(99, T0, account="A")) == [MANUAL_A]

        # A daily pause, a rate pause lifted by a tick, a day rollover, both kinds of reset:
        # every automatic resume happens, none touches the kill switch.
        later = [
            Trade(1, 10, 100.0, 11, T0 + 300 * MS),  # over the daily cap of (A, P1)
            *[order(20 + i, T0 + 400 * MS + i, account="A") for i in range(4)],  # the rate rule pauses again
            Tick(T0 + 2000 * MS),  # ... and the tick lifts it
            order(30, T0 + DAY, account="A"),  # a new trading day: rollover
            Trade(2, 30, 100.0, 11, T0 + DAY + 1),  # over the cap again
            ResetDaily(T0 + DAY + 2, "A"),  # lifts it (one account)
            Trade(3, 30, 100.0, 11, T0 + DAY + 3),
            ResetDaily(T0 + DAY + 4),  # lifts it (every account)
        ]
        publish(url, later)
        drain(url)
        kinds = [(a["type"], a["rule"], a["reason"]) for a in printed_actions(url)[-8:]]
        assert ("RESUME_ORDER", "OrderRateLimitRule", "0 orders in 100000000 ns <= resume threshold 1") in kinds
        assert [k[2] for k in kinds].count("manual daily reset") == 2
        assert any(k[2].startswith("trading day rolled over") for k in kinds)
        assert list(manual_fields(url, "A")) == ["A"]
        time.sleep(0.3)  # the gateway's poll interval, several times over
        assert gateway.check(order(99, T0 + DAY, account="A")) == [MANUAL_A]
        fresh = RiskClient(connect(url), config=build_config(CONFIG))
        fresh.resync()  # a gateway started now: the snapshot has it too
        assert fresh.cache.all() == [MANUAL_A]
        status = json.loads(cli("status", "--redis-url", url, "--json").stdout)
        assert [(p["rule"], p["scope"]) for p in status["paused"]] == [("manual", {"account": "A"})]

        # Only a manual resume lifts it.
        done = cli("resume", "--account", "A", "--reason", "checked with the desk", "--who", "bob", "--redis-url", url)
        assert done.returncode == 0, done.stderr
        wait_for("the manual resume at the gateway", lambda: not gateway.is_paused("A"), 5)
        assert manual_fields(url, "A") == {}
    finally:
        gateway.close()

    records = audit(url)
    assert [(r["what"], r["who"], r["why"], r["scope"]) for r in records] == [
        ("pause", "alice", "fat finger", {"account": "A"}),
        ("resume", "bob", "checked with the desk", {"account": "A"}),
    ]
    assert before <= records[0]["when"] <= after < records[1]["when"]
    manual = [a for a in printed_actions(url) if a["rule"] == "manual"]
    assert [(a["type"], a["scope"], a["value"], a["limit"]) for a in manual] == [
        ("PAUSE_ORDER", {"account": "A"}, 0, 0),
        ("RESUME_ORDER", {"account": "A"}, 0, 0),
    ]
    assert manual[0]["timestamp"] == records[0]["when"]
    assert manual[0]["reason"] == "manual pause by alice: fat finger"
    assert [r["action"] for r in records] == [r["action"] for r in audit(url, "--account", "A")]
    table = cli("audit", "--redis-url", url).stdout
    assert "alice" in table and "fat finger" in table and "resume" in table


def test_contract_and_product_kill_switches_reach_the_gateway(url: str) -> None:
    publish(url, [order(1, T0, account="B")])
    drain(url)
    with RiskClient(
        connect(url), config=build_config(CONFIG), poll_s=0.05, fail_after_s=60, owner_grace_s=None
    ) as gateway:
        assert cli("pause", "--account", "B", "--contract", "C1", "--reason", "r", "--redis-url", url).returncode == 0
        assert cli("pause", "--account", "B", "--product", "P2", "--reason", "r", "--redis-url", url).returncode == 0
        wait_for("both pauses", lambda: len(gateway.cache.all()) == 2, 5)
        assert gateway.is_paused("B", "C1")
        assert not gateway.is_paused("B", "C2")  # same product P1, other contract
        assert gateway.is_paused("B", "C3")  # product P2
        assert not gateway.is_paused("B") and not gateway.is_paused("A", "C1")
        report = inspect(url, "B")
        assert sorted((p["rule"], tuple(p["scope"].items())) for p in report["pauses"]) == [
            ("manual", (("account", "B"), ("contract", "C1"))),
            ("manual", (("account", "B"), ("product", "P2"))),
        ]
        done = cli("resume", "--account", "B", "--product", "P2", "--reason", "r", "--redis-url", url, "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["action"]["type"] == "RESUME_ORDER"
        wait_for("the product resume", lambda: not gateway.is_paused("B", "C3"), 5)
        assert gateway.is_paused("B", "C1")


def test_a_gateway_that_missed_the_manual_entry_finds_it(server: RedisProcess) -> None:
    """The manual entry becomes the shard's last action id, so the next worker hint names it as
    its predecessor: a gateway that missed it reads the stream instead of skipping it."""
    url = server.url
    publish(url, [order(1, T0, account="A")])
    drain(url)
    gateway = RiskClient(connect(url), config=build_config(CONFIG))  # not following: fed by hand
    gateway.resync()
    listener = connect(url).pubsub()
    listener.subscribe(gateway.keys.channel)
    assert cli("pause", "--account", "A", "--reason", "r", "--redis-url", url).returncode == 0
    publish(url, [order(i, T0 + i, account="A") for i in range(2, 6)])  # the rate rule pauses A too
    drain(url)
    hints = []
    deadline = time.monotonic() + 5
    while len(hints) < 2 and time.monotonic() < deadline:
        message = listener.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None and message["type"] == "message":
            hints.append(message["data"])
    listener.close()
    decoded = [gateway.publisher.store.decode(h) for h in hints]
    worker_hint = next(h for d, h in zip(decoded, hints, strict=True) if "OrderRateLimitRule" in str(d))
    assert len(decoded) == 2  # the CLI's hint, which this gateway "lost", and the worker's
    gateway._hint(worker_hint)
    assert sorted(gateway.cache.all()) == [RATE_A, MANUAL_A]


def expected_actions(events: list[Event]) -> list[dict[str, Any]]:
    engine = RiskEngine.from_config(build_config(CONFIG))
    return [a.to_dict() for e in events for a in engine.process(e)]


def test_reset_daily_of_one_account_and_inspect_equal_the_engine(url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    events: list[Event] = []
    for k, account in enumerate(["A", "B"]):
        base = 100 * k
        events += [
            order(base + i, T0 + i * MS, account=account, contract=("C1", "C2", "C3")[i % 3]) for i in range(1, 7)
        ]
        events += [Trade(base + i, base + i, 100.0, 4, T0 + 10 * MS + i) for i in range(1, 6)]
    publish(url, events)
    drain(url)
    engine = RiskEngine.from_config(build_config(CONFIG))
    for event in events:
        engine.process(event)

    # inspect: window counts, today's sums and pauses, equal to the in-process engine's
    report = inspect(url, "A", "--at", str(T0 + 10 * MS + 5))
    assert report["day"] == T0_DATE.isoformat() and report["shard"] == Keys("risk", SHARDS).shard_of("A")
    assert [(w["rule"], w["scope"], w["count"]) for w in report["windows"]] == [
        ("OrderRateLimitRule", {"account": "A"}, engine.window_count("OrderRateLimitRule", {"account": "A"}))
    ]
    sums = {(s["rule"], tuple(s["scope"].values())): s["sum"] for s in report["sums"]}
    volume = "AccountVolumeLimitRule"
    assert sums == {
        (volume, ("A", "P1")): engine.daily_sum(volume, {"account": "A", "product": "P1"}),
        (volume, ("A", "P2")): engine.daily_sum(volume, {"account": "A", "product": "P2"}),
        ("trades", ("A",)): engine.daily_sum("trades", {"account": "A"}),
    }
    assert sums[("trades", ("A",))] == 5
    paused = sorted((p["rule"], tuple(p["scope"].values())) for p in report["pauses"])
    assert paused == sorted((r, tuple(s.values())) for r, s in engine.paused_scopes() if s["account"] == "A")
    assert any(p["rule"] == "trades" and p["reason"] == "daily count 4 > cap 3" for p in report["pauses"])
    table = cli("inspect", "--account", "A", "--redis-url", url, "--at", str(T0 + 10 * MS + 5)).stdout
    assert "OrderRateLimitRule" in table and "daily count 4 > cap 3" in table and "account=A product=P1" in table
    with_config = inspect(url, "A", "--at", str(T0 + 10 * MS + 5), "--config", str(config))
    assert with_config == report

    # reset-daily --account A: through A's shard stream only, applied once, only A's state
    keys = Keys("risk", SHARDS)
    client = connect(url)
    lengths = [client.xlen(keys.input(s)) for s in range(SHARDS)]
    at = T0 + 20 * MS
    done = cli("reset-daily", "--account", "A", "--at", str(at), "--redis-url", url, "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"day": T0_DATE.isoformat()} == {
        "published": "reset_daily",
        "account": "A",
        "timestamp": at,
        "shards": [keys.shard_of("A")],
        "day": T0_DATE.isoformat(),
    }
    grown = [client.xlen(keys.input(s)) - lengths[s] for s in range(SHARDS)]
    assert grown == [1 if s == keys.shard_of("A") else 0 for s in range(SHARDS)]
    more: list[Event] = [ResetDaily(at, "A"), Trade(50, 1, 100.0, 11, at + 1), Trade(150, 101, 100.0, 1, at + 2)]
    publish(url, more[1:])
    drain(url)
    drain(url)  # nothing left: nothing applied twice
    want = expected_actions(events + more)
    got = printed_actions(url)
    assert by_scope(got) == by_scope(want)
    resumed = [a for a in got if a["reason"] == "manual daily reset"]
    assert {a["scope"]["account"] for a in resumed} == {"A"} and len(resumed) == 2  # (A, P1) and trades
    after = inspect(url, "A", "--at", str(at + 2))
    assert {(s["rule"], tuple(s["scope"].values())): s["sum"] for s in after["sums"]} == {
        ("AccountVolumeLimitRule", ("A", "P1")): 11,
        ("trades", ("A",)): 1,
    }
    # the rate rule's pause is untouched; (A, P1) crossed its cap again after the reset
    assert [p["rule"] for p in after["pauses"]] == ["OrderRateLimitRule", "AccountVolumeLimitRule"]
    assert {s["rule"]: s["sum"] for s in inspect(url, "B")["sums"] if s["scope"]["account"] == "B"}["trades"] == 6

    # without --account: every shard, every account
    lengths = [client.xlen(keys.input(s)) for s in range(SHARDS)]
    done = cli("reset-daily", "--at", str(at + 3), "--who", "ops", "--reason", "new session", "--redis-url", url)
    assert done.returncode == 0, done.stderr
    assert [client.xlen(keys.input(s)) - lengths[s] for s in range(SHARDS)] == [1] * SHARDS
    drain(url)
    want = expected_actions([*events, *more, ResetDaily(at + 3)])
    assert by_scope(printed_actions(url)) == by_scope(want)
    resets = [r for r in audit(url) if r["what"] == "reset_daily"]
    assert [(r["scope"], r["at"], r["shards"]) for r in resets] == [
        ({"account": "A"}, at, [keys.shard_of("A")]),
        ({}, at + 3, list(range(SHARDS))),  # recorded on every shard, shown once
    ]
    assert resets[1]["who"] == "ops" and resets[1]["why"] == "new session" and resets[0]["who"]
    assert [r["scope"] for r in audit(url, "--account", "B")] == [{}]  # B: only the reset of everyone
    assert "(every account)" in cli("audit", "--redis-url", url).stdout
    paused = json.loads(cli("status", "--redis-url", url, "--json").stdout)["paused"]
    assert sorted((p["rule"], p["scope"]["account"]) for p in paused) == [
        ("OrderRateLimitRule", "A"),
        ("OrderRateLimitRule", "B"),
    ]


def test_bad_input_is_refused_with_exit_2(server: RedisProcess) -> None:
    url = server.url
    none_yet = cli("pause", "--account", "A", "--reason", "r", "--redis-url", url)
    assert none_yet.returncode == 2 and "no deployment" in none_yet.stderr
    publish(url, [order(1, T0, account="A")])
    for args in (
        ["pause", "--account", "A", "--reason", " ", "--redis-url", url],
        ["pause", "--account", "", "--reason", "r", "--redis-url", url],
        ["pause", "--account", "A", "--contract", "C1", "--product", "P1", "--reason", "r", "--redis-url", url],
        ["pause", "--account", "A", "--redis-url", url],
        ["resume", "--account", "A", "--contract", "", "--reason", "r", "--redis-url", url],
        ["inspect", "--account", "", "--redis-url", url],
        ["reset-daily", "--account", "", "--redis-url", url],
        ["reset-daily", "--redis-url", url, "--config", "/nonexistent.json"],
        ["inspect", "--account", "A", "--redis-url", "redis://127.0.0.1:1/0"],
    ):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.strip(), args
    assert manual_fields(url, "A") == {}
    no_rules = cli("inspect", "--account", "A", "--redis-url", url)  # no worker has stored its rules yet
    assert no_rules.returncode == 2 and "--config" in no_rules.stderr


def test_no_rule_may_be_called_manual(server: RedisProcess) -> None:
    rules = [{"type": "OrderRateLimitRule", "name": "manual", "threshold": 3}]
    with pytest.raises(DeploymentError, match="reserved"):
        Deployment(connect(server.url)).store_rules(build_config({"rules": rules}).rules)


def test_pausing_a_never_seen_account_needs_force(server: RedisProcess) -> None:
    url = server.url
    publish(url, [order(1, T0, account="A")])
    drain(url)
    streams = (len(printed_actions(url)), len(audit(url)))
    for typo in ("B", "a", "A "):
        refused = cli("pause", "--account", typo, "--reason", "r", "--redis-url", url)
        assert refused.returncode == 2, refused.stderr
        assert "has no state on its shard" in refused.stderr and "--force" in refused.stderr
        assert refused.stdout == ""
    assert (len(printed_actions(url)), len(audit(url))) == streams  # nothing written
    assert all(not manual_fields(url, account) for account in ("B", "a", "A "))

    forced = cli("pause", "--account", "B", "--reason", "pre-emptive", "--redis-url", url, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "warning" in forced.stderr and "pausing it anyway" in forced.stderr
    assert "paused account=B" in forced.stdout
    assert list(manual_fields(url, "B")) == ["B"]

    seen = cli("pause", "--account", "A", "--reason", "r", "--redis-url", url)  # no --force needed
    assert seen.returncode == 0 and seen.stderr == "", seen.stderr
    resume = cli("resume", "--account", "B", "--reason", "r", "--redis-url", url)  # resume never asks
    assert resume.returncode == 0 and resume.stderr == "", resume.stderr
