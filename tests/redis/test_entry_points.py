"""The documented entry points to the Redis store: open_engine(config, store) and replay --redis-url."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cluster_risk import RiskEngine, build_config
from cluster_risk.engines import open_engine
from cluster_risk.errors import EventError
from cluster_risk.remote import RemoteEngine
from cluster_risk.replay import replay_events
from cluster_risk.state.redis import RedisStore
from cluster_risk.wire import decode_event
from tests.helpers import load_case, views
from tests.redis.servers import RedisServer


def test_risk_engine_with_a_store_decides_as_in_memory(standalone: RedisServer) -> None:
    standalone.client().flushall()
    case = load_case(3)
    config = build_config(case["config"])  # type: ignore[arg-type]
    store = RedisStore.from_url(standalone.url, num_shards=4)
    engine = open_engine(config, store)
    assert isinstance(engine, RemoteEngine)  # the executor itself: no methods grafted on
    assert views(replay_events(engine, case["events"])) == case["expected"]  # type: ignore[arg-type]
    memory = open_engine(config)
    assert isinstance(memory, RiskEngine)
    list(replay_events(memory, case["events"]))  # type: ignore[arg-type]
    assert engine.paused_scopes() == memory.paused_scopes()
    # inspection reads the state where the executor keeps it (in Redis here)
    orders = [e for e in case["events"] if e.get("type") == "order"]  # type: ignore[attr-defined]
    pairs = {(e.get("account_id"), e.get("contract_id")) for e in orders}
    pairs = {(a, c) for a, c in pairs if isinstance(a, str) and a and isinstance(c, str) and c}
    assert len(pairs) > 5
    counted = summed = 0
    for account, contract in [*sorted(pairs), ("nobody", "nothing")]:
        scope = {
            "account": account,
            "contract": contract,
            "product": config.contract_to_product.get(contract, contract),
        }
        for rule in config.rules:
            if rule.type_name == "OrderRateLimitRule":
                assert engine.window_count(rule.name, scope) == memory.window_count(rule.name, scope)
                counted += memory.window_count(rule.name, scope)
            else:
                assert engine.daily_sum(rule.name, scope) == memory.daily_sum(rule.name, scope)
                summed += memory.daily_sum(rule.name, scope) != 0
    assert counted and summed  # the comparison saw state
    store.close()


def test_process_batch_is_the_same_in_memory_and_in_redis(standalone: RedisServer) -> None:
    standalone.client().flushall()
    case = load_case(9)

    events = []
    for obj in case["events"]:  # type: ignore[attr-defined]
        try:
            events.append(decode_event(obj))
        except EventError:
            continue
    config = build_config(case["config"])  # type: ignore[arg-type]
    in_memory = RiskEngine.from_config(config).process_batch(events)
    store = RedisStore.from_url(standalone.url, num_shards=4)
    in_redis = open_engine(config, store).process_batch(events)
    assert in_redis == in_memory
    assert in_memory  # the vector does produce actions
    store.close()


def test_replay_cli_through_redis_prints_what_the_memory_replay_prints(standalone: RedisServer, tmp_path: Path) -> None:
    standalone.client().flushall()
    case = load_case(5)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(case["config"]), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in case["events"]), encoding="utf-8")  # type: ignore[attr-defined]
    cli = [sys.executable, "-m", "cluster_risk.cli", "replay", "--config", str(config)]
    memory = subprocess.run([*cli, str(events)], capture_output=True, check=True, timeout=120)
    redis_run = subprocess.run(
        [*cli, "--redis-url", standalone.url, "--batch-size", "64", str(events)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert redis_run.stdout == memory.stdout
    got = [json.loads(line) for line in redis_run.stdout.splitlines()]
    assert views(got) == case["expected"]


def test_replay_cli_refuses_an_unreachable_redis_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(load_case(1)["config"]), encoding="utf-8")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster_risk.cli",
            "replay",
            "--config",
            str(config),
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "-",
        ],
        check=False,
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert len(run.stderr.decode().strip().splitlines()) == 1
