"""``cluster-risk up``: the docker-compose topology as local processes - redis-server (one, or
a 3-master cluster with a replica each) on free loopback ports in a temporary folder, and N
workers - for trying the cluster and for the fault tests.  Ctrl-C (or SIGTERM) stops the
workers first (they release their leases), then Redis, and removes the folder.  It prints the
engine config it runs (``--config`` is required) and the Redis URL with its password masked;
the workers get the URL through their environment (``CLUSTER_RISK_REDIS_URL``), never in
their arguments, which any local user can read (``ps``).  Exit 0 when stopped by a signal, 1
when a worker died (the others are stopped too).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from cluster_risk.settings import mask_url
from cluster_risk.state.server_settings import apply_server_settings

__all__ = ["LocalCluster", "RedisProcess", "free_port", "start_worker", "up", "wait_until_up"]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise OSError(f"{name} is not on PATH (Debian: apt-get install redis-server)")
    return path


def free_port(bus: bool = False) -> int:
    """A free loopback port other than 6379 (and port + 10000 free too for a cluster bus)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port == 6379 or (bus and port > 55535):
            continue
        if bus:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
        return port
    raise OSError("no free loopback port")


def wait_until_up(
    process: subprocess.Popen[bytes], client: Callable[[], redis.Redis], log: Path, what: str, timeout_s: float = 10
) -> None:
    """Wait until ``client()`` answers PING; OSError with the log's tail if the server exits
    or stays silent for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client().ping():
                return
        except redis.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise OSError(f"{what} did not start:\n{tail}")
        time.sleep(0.02)


class RedisProcess:
    """One redis-server on 127.0.0.1, persistence off (``extra`` may turn it on: the last value
    of an option wins), data and log in ``folder``; SERVER_SETTINGS applied by capability at
    every start (``setting_problems``: what the server did not take, also logged)."""

    def __init__(
        self, folder: Path, *extra: str, cluster: bool = False, port: int | None = None, node_timeout_ms: int = 1000
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(bus=cluster)
        self.args = [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        self.args += ["--dir", str(folder), "--save", "", "--appendonly", "no", "--logfile", str(folder / "redis.log")]
        if cluster:
            self.args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            self.args += ["--cluster-node-timeout", str(node_timeout_ms)]
        self.args += list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.setting_problems: list[str] = []
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        where = f"redis-server on port {self.port}"
        try:
            wait_until_up(self.process, self.client, self.folder / "redis.log", where)
            self.setting_problems = apply_server_settings(self.client(), where)
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def kill(self) -> None:
        """SIGKILL (a crash), for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (redis-server saves if configured to, and exits); SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, joined by ``redis-cli --cluster``."""

    def __init__(self, folder: Path, masters: int = 3, replicas: int = 1) -> None:
        self.nodes = [RedisProcess(folder / f"node{i}", cluster=True) for i in range(masters * (1 + replicas))]
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        create = [_binary("redis-cli"), "--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
        try:
            done = subprocess.run([*create, "--cluster-yes"], capture_output=True, timeout=60, check=False)
            if done.returncode != 0:
                raise OSError(f"redis-cli --cluster create failed: {done.stdout[-500:]!r} {done.stderr[-500:]!r}")
            self.wait_ok()
            self.wait_replicas()
        except BaseException:
            self.stop()
            raise

    def wait_replicas(self, timeout: float = 30) -> None:
        """Until every replica has synced with its master (a failover needs that)."""
        deadline = time.monotonic() + timeout
        while True:
            roles = [n.client().info("replication") for n in self.nodes if n.process and n.process.poll() is None]
            if all(r.get("master_link_status", "up") == "up" for r in roles):
                return
            if time.monotonic() > deadline:
                raise OSError("the local cluster's replicas did not sync")
            time.sleep(0.1)

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                infos = [n.client().cluster("info") for n in self.nodes if n.process and n.process.poll() is None]
                if all(i.get("cluster_state") == "ok" for i in infos):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise OSError("the local cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_worker(config: str, url: str, worker_id: str, *extra: str, **popen: Any) -> subprocess.Popen[bytes]:
    """``cluster-risk worker`` as a child process (the same Python), the Redis URL (which may
    carry a password) in its environment, not in its arguments; ``popen["env"]``, if given,
    is the rest of its environment (default: this process's)."""
    command = [sys.executable, "-m", "cluster_risk.cli", "worker", "--config", config]
    popen["env"] = {**(popen.get("env") or os.environ), "CLUSTER_RISK_REDIS_URL": url}
    return subprocess.Popen([*command, "--id", worker_id, *extra], **popen)


def up(
    *,
    workers: int = 2,
    redis_url: str | None = None,
    cluster: bool = False,
    config: str,
    tick_ms: int = 1000,
    shards: int | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> int:
    from cluster_risk.config import load_config

    engine_config = load_config(config)  # refused (ConfigError) before anything starts
    folder = Path(tempfile.mkdtemp(prefix="cluster-risk-up-"))
    servers: list[RedisProcess | LocalCluster] = []
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if redis_url is None:
            server: RedisProcess | LocalCluster = LocalCluster(folder / "redis") if cluster else RedisProcess(folder)
            servers.append(server)
            redis_url = server.url
        extra = ["--tick-ms", str(tick_ms)] + (["--shards", str(shards)] if shards else [])
        for i in range(workers):
            metrics = ["--metrics-port", str(metrics_port + i), "--metrics-host", metrics_host] if metrics_port else []
            children.append(start_worker(config, redis_url, f"up-{i}", *extra, *metrics))
        rules = ", ".join(rule.name for rule in engine_config.rules)
        print(f"config: {Path(config).resolve()} (rules: {rules or 'none'})", flush=True)
        print(f"redis: {mask_url(redis_url)}", flush=True)
        print(f"workers: {' '.join(str(c.pid) for c in children)}  (Ctrl-C stops all)", flush=True)
        while not stopping:
            dead = [(i, c) for i, c in enumerate(children) if c.poll() is not None]
            if dead:
                for i, child in dead:
                    print(f"worker up-{i} (pid {child.pid}) exited with code {child.returncode}", file=sys.stderr)
                print("cluster-risk up: stopping (exit 1)", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        for server in servers:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print("stopped", flush=True)
