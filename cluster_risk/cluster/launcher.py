"""The one redis-server launcher: :class:`RedisProcess` (one server on a free loopback port,
persistence off, data and log in a folder, the server settings applied by capability) and
:class:`LocalCluster` (a Redis Cluster of them), used by ``cluster-risk up``, the benchmarks and
the tests; and :func:`start_worker`, a ``cluster-risk worker`` child process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import redis

from cluster_risk.state.server_settings import apply_server_settings

__all__ = ["LocalCluster", "RedisProcess", "free_port", "start_worker", "wait_until_up"]


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
        except (redis.ConnectionError, redis.TimeoutError):  # starting (or loading: BusyLoadingError)
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
        self,
        folder: Path,
        *extra: str,
        cluster: bool = False,
        port: int | None = None,
        node_timeout_ms: int = 1000,
        wrapper: Sequence[str] = (),
        startup_timeout_s: float = 10,
    ) -> None:
        self.folder = folder
        self.wrapper = list(wrapper)  # a command the server runs under (valgrind): stopped by SHUTDOWN
        self.startup_timeout_s = startup_timeout_s
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
        self.process = subprocess.Popen(
            [*self.wrapper, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        where = f"redis-server on port {self.port}"
        try:
            wait_until_up(self.process, self.client, self.folder / "redis.log", where, self.startup_timeout_s)
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
        """SIGTERM (redis-server saves if configured to, and exits); SIGKILL after 10 s.  Under a
        wrapper: SHUTDOWN NOSAVE first, and up to 120 s for the wrapper to write its report."""
        if self.process is not None and self.process.poll() is None and self.wrapper:
            with suppress(Exception):  # the server ends here; valgrind writes its counts
                self.client().shutdown(nosave=True)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=120)
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
