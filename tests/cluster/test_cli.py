"""The command-line contract: publish, worker, actions, status, up."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from cluster_risk import build_config
from cluster_risk.cluster.launcher import RedisProcess, free_port
from cluster_risk.cluster.shards import Deployment, Keys
from cluster_risk.cluster.streams import Publisher
from cluster_risk.cluster.worker import Worker
from tests.cluster.conform import by_scope, expected, with_final_tick
from tests.cluster.conftest import connect, read_line
from tests.cluster.fleet import wait_for
from tests.cluster.workload import CONFIG
from tests.cluster.workload import events as workload
from tests.helpers import T0, lines

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


def stop_up(proc: subprocess.Popen[str]) -> None:
    """SIGTERM first: `up` then stops its workers and Redis (a SIGKILL would orphan them)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)


def test_up_starts_redis_and_workers_and_ctrl_c_stops_all(redis_binaries: tuple[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    up = [*CLI, "up", "--workers", "2", "--config", str(config)]
    proc = subprocess.Popen(up, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client: redis.Redis | None = None
    try:
        assert proc.stdout is not None
        first = read_line(proc.stdout, "`cluster-risk up` to print its config")
        assert first.startswith(f"config: {config.resolve()} (rules: OrderRateLimitRule"), first
        second = read_line(proc.stdout, "`cluster-risk up` to print its Redis URL")
        if not second.startswith("redis: "):
            stop_up(proc)
            pytest.fail(f"`cluster-risk up` did not start: {second!r}")
        url = second.split("redis: ", 1)[1].strip()
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
        stop_up(proc)
        if client is not None:
            client.close()


def test_actions_follow_prints_new_actions(server: RedisProcess, tmp_path: Path) -> None:

    config = build_config(CONFIG)
    publisher = Publisher(connect(server.url), shards=4)
    follow = subprocess.Popen(
        [*CLI, "actions", "--redis-url", server.url, "--follow"], stdout=subprocess.PIPE, text=True
    )
    try:
        burst = [
            {"type": "order", "oid": i, "account_id": "F", "contract_id": "C1", "direction": "BID", "price": 1.0}
            | {"volume": 1, "timestamp": T0 + i}
            for i in range(1, 15)
        ]
        assert not list(publisher.publish_lines(lines(burst)))
        Worker(config, connect(server.url), worker_id="w", tick_ms=0, drain=True).run()
        first = json.loads(read_line(follow.stdout, "`cluster-risk actions --follow` to print an action"))
        assert first["type"] == "PAUSE_ORDER" and first["scope"] == {"account": "F"}
    finally:
        follow.terminate()
        follow.communicate(timeout=10)


ROOT = Path(__file__).resolve().parents[2]


def with_password(server: RedisProcess) -> tuple[str, str]:
    """Make ``server`` require a password; (the password, a URL carrying it)."""
    password = "pw-" + secrets.token_hex(8)
    server.client().config_set("requirepass", password)
    return password, f"redis://default:{password}@127.0.0.1:{server.port}/0"


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_up_keeps_the_password_out_of_output_and_argv_and_exits_1_when_a_worker_dies(
    server: RedisProcess, tmp_path: Path
) -> None:
    password, url = with_password(server)
    client = redis.Redis(host="127.0.0.1", port=server.port, password=password, socket_timeout=5)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    up = [*CLI, "up", "--workers", "2", "--config", str(config), "--redis-url", url]
    proc = subprocess.Popen(up, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("config: ")
        shown = proc.stdout.readline()
        assert shown == f"redis: redis://default:***@127.0.0.1:{server.port}/0\n"
        pids = [int(p) for p in re.findall(r"\d+", proc.stdout.readline().split("(")[0])]
        assert len(pids) == 2
        wait_for("the workers to join", lambda: len(client.zrange("risk:workers", 0, -1)) == 2, 30)
        for pid in pids:
            assert "worker" in cmdline(pid) and password not in cmdline(pid)
        os.kill(pids[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, (out, err)
        assert f"worker up-0 (pid {pids[0]}) exited with code -9" in err
        assert password not in shown + out + err
    finally:
        stop_up(proc)
        client.close()


def test_the_k8s_manifest_runs_a_worker_from_its_environment(server: RedisProcess, tmp_path: Path) -> None:
    """deploy/k8s/deployment.yaml's worker container, as written: the image's entrypoint, its
    args, its environment (the settings file from the ConfigMap, the pod name, REDIS_URL from
    the Secret), against a real Redis that wants a password."""
    password, url = with_password(server)
    manifest = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text(encoding="utf-8"))
    pod = manifest["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "worker")
    configmap = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text(encoding="utf-8"))
    volume = next(
        v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)
    etc = tmp_path / "etc-cluster-risk"
    etc.mkdir()
    for name, text in configmap["data"].items():
        (etc / name).write_text(text, encoding="utf-8")

    def local(value: str) -> str:  # the ConfigMap's mount point, here
        return value.replace(mount, str(etc))

    pod_name = "cluster-risk-worker-5d8f7c9b4-x2x7q"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("CLUSTER_RISK_", "REDIS_URL"))}
    for var in container["env"]:
        source: dict[str, Any] = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = local(var["value"])
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        else:
            assert source["secretKeyRef"]["name"] == "cluster-risk-redis", var
            env[var["name"]] = url
    # The one change: the settings file's metrics port (9100) may be taken on a shared test
    # machine; the environment overrides the file, as it would in a pod.
    port = free_port()
    env["CLUSTER_RISK_METRICS_PORT"] = str(port)
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])$", (ROOT / "deploy/Dockerfile").read_text(), re.M)
    assert entrypoint is not None and "command" not in container
    program = Path(sys.executable).parent / json.loads(entrypoint.group(1))[0]  # the installed console script
    args = [str(program), *(local(a) for a in container["args"])]
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        worker = subprocess.Popen(args, env=env, stdout=sink, stderr=sink)
    client = redis.Redis(host="127.0.0.1", port=server.port, password=password, socket_timeout=5)
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    return bool(answer.status == 200)
            except OSError:
                assert worker.poll() is None, log.read_text()
                return False

        wait_for("the worker to hold shards", ready, 60, explain=log.read_text)
        assert client.zrange("risk:workers", 0, -1) == [pod_name.encode()]  # CLUSTER_RISK_WORKER_ID
        assert Deployment(client).stored_shards() == 16  # num_shards of the settings file
        assert password not in cmdline(worker.pid)
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        hosts = {
            fields[1].split(":")[0] for fields in listening if fields[3] == "0A" and fields[1].endswith(f":{port:04X}")
        }
        assert hosts == {"00000000"}  # the manifest asks for 0.0.0.0: Prometheus scrapes the pod's IP
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
        assert password not in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        client.close()


def test_replay_refuses_a_fleets_redis_unless_another_prefix(server: RedisProcess, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in with_final_tick(workload(200, seed=3))), encoding="utf-8")
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    Deployment(client).ensure(4)  # a fleet lives here under "risk"
    before = sorted(client.keys("*"))
    refused = cli("replay", "--config", str(config), "--redis-url", server.url, str(events))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "holds a fleet's deployment under prefix 'risk'" in refused.stderr and "--prefix" in refused.stderr
    assert sorted(client.keys("*")) == before

    done = cli("replay", "--config", str(config), "--redis-url", server.url, "--prefix", "trial", str(events))
    assert done.returncode == 0, done.stderr
    in_process = cli("replay", "--config", str(config), str(events))
    assert done.stdout == in_process.stdout
    added = set(client.keys("*")) - set(before)
    assert added and all(key.startswith(b"trial:") for key in added)
    assert sorted(client.keys("risk:*")) == sorted(k for k in before if k.startswith(b"risk:"))
    client.close()


def test_ctrl_c_on_actions_follow_is_quiet(server: RedisProcess) -> None:
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    keys = Deployment(client).ensure(2)
    action = {"type": "PAUSE_ORDER", "rule": "r", "scope": {"account": "A"}, "timestamp": 1, "value": 2, "limit": 1}
    client.xadd(keys.actions(0), {"a": json.dumps(action)})
    follow = subprocess.Popen(
        [*CLI, "actions", "--redis-url", server.url, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline()) == action  # it is in its loop now
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
        assert follow.returncode == 130
        assert err == "" and out == ""
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate(timeout=10)
        client.close()
    assert isinstance(keys, Keys)
