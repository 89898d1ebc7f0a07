"""The command-line contract: publish, worker, actions, status, up."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cluster_risk.cluster.launcher import RedisProcess
from tests.cluster.conform import by_scope, expected, with_final_tick
from tests.cluster.conftest import read_line
from tests.cluster.workload import CONFIG
from tests.cluster.workload import events as workload

CLI = [sys.executable, "-m", "cluster_risk.cli"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_publish_worker_actions_status(server: RedisProcess, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    events = with_final_tick(workload(2000, seed=11))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + "not json\n", encoding="utf-8")
    common = ["--config", str(config), "--redis-url", server.url]

    published = cli("publish", *common, "--shards", "4", str(path))
    assert published.returncode == 0, published.stderr
    rejected = [json.loads(line) for line in published.stdout.splitlines()]
    assert {"error": "invalid_json", "field": "", "index": len(events)} in [
        {k: r[k] for k in ("error", "field", "index")} for r in rejected
    ]
    status = json.loads(cli("status", "--redis-url", server.url, "--json").stdout)
    clock = sum(1 for e in events if isinstance(e, dict) and e.get("type") in ("tick", "reset_daily"))
    assert status["lag"] == len(events) + 1 - len(rejected) + 3 * clock  # ticks and resets: to every shard
    assert status["deployment"]["shards"] == 4

    done = cli("worker", *common, "--tick-ms", "0", "--drain", "--id", "solo")
    assert done.returncode == 0, done.stderr
    status = json.loads(cli("status", "--redis-url", server.url, "--json").stdout)
    assert status["lag"] == 0 and status["workers"] == []  # it left cleanly
    assert all(row["epoch"] == 1 and row["owner"] is None for row in status["shards"])
    text = cli("status", "--redis-url", server.url).stdout
    assert "lag: 0 events" in text and "paused scopes:" in text

    printed = [json.loads(line) for line in cli("actions", "--redis-url", server.url).stdout.splitlines()]
    want, _ = expected(CONFIG, [*events, "not json"])
    assert by_scope(printed) == by_scope(want)
    assert len(status["paused"]) == len({(p["rule"], json.dumps(p["scope"])) for p in status["paused"]})


def test_up_starts_redis_and_workers_and_ctrl_c_stops_all(redis_binaries: None) -> None:
    proc = subprocess.Popen([*CLI, "up", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client: redis.Redis | None = None
    try:
        first = read_line(proc.stdout, "`cluster-risk up` to print its Redis URL")
        if not first.startswith("redis: "):
            proc.kill()
            pytest.fail(f"`cluster-risk up` did not start: {first!r}\n{proc.communicate(timeout=30)[1][-2000:]}")
        url = first.split("redis: ", 1)[1].strip()
        pids = [int(p) for p in re.findall(r"\d+", read_line(proc.stdout, "the workers' pids").split("(")[0])]
        client = redis.Redis.from_url(url, socket_timeout=5)
        deadline = time.monotonic() + 30
        while len(client.zrange("risk:workers", 0, -1)) < 2:
            assert time.monotonic() < deadline, "the workers did not join"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)  # also closes the pipes
        assert proc.returncode == 0
        assert "stopped" in out
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        try:
            client.ping()
            raise AssertionError("redis-server still answers")
        except redis.ConnectionError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.communicate(timeout=30)
        if client is not None:
            client.close()


def test_actions_follow_prints_new_actions(server: RedisProcess, tmp_path: Path) -> None:
    from cluster_risk import build_config
    from cluster_risk.cluster.streams import Publisher
    from cluster_risk.cluster.worker import Worker
    from tests.cluster.conftest import connect, lines

    config = build_config(CONFIG)
    publisher = Publisher(connect(server.url), shards=4)
    follow = subprocess.Popen(
        [*CLI, "actions", "--redis-url", server.url, "--follow"], stdout=subprocess.PIPE, text=True
    )
    try:
        burst = [
            {"type": "order", "oid": i, "account_id": "F", "contract_id": "C1", "direction": "BID", "price": 1.0}
            | {"volume": 1, "timestamp": 1_795_000_000_000_000_000 + i}
            for i in range(1, 15)
        ]
        assert not list(publisher.publish_lines(lines(burst)))
        Worker(config, connect(server.url), worker_id="w", tick_ms=0, drain=True).run()
        first = json.loads(read_line(follow.stdout, "`cluster-risk actions --follow` to print an action"))
        assert first["type"] == "PAUSE_ORDER" and first["scope"] == {"account": "F"}
    finally:
        follow.terminate()
        follow.communicate(timeout=10)
