"""redis-server processes for the test session: standalone and a 3-master cluster on free
loopback ports, in temporary directories, never on 6379 and never anything we did not start."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import redis

from cluster_risk.cluster.launcher import RedisProcess, free_port

__all__ = ["RedisCluster3", "RedisSentinel", "RedisServer", "binaries", "free_port", "has_functions", "server_version"]

_STARTUP_S = 10.0


def binaries() -> tuple[str, str]:
    """Paths of redis-server and redis-cli, or a clear failure (never a silent skip)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError(
            "redis-server and redis-cli (Redis >= 6.2 or Valkey) must be on PATH for tests/redis; "
            "install them (Debian: apt-get install redis-server) - these tests never skip"
        )
    return server, cli


def server_version() -> tuple[str, str]:
    """(``redis`` or ``valkey``, version) of the redis-server on PATH, from ``--version``."""
    server, _ = binaries()
    out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    match = re.match(r"(\w+) server v=(\S+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the version of {server}: {out!r}")
    return match.group(1).lower(), match.group(2)


def has_functions(name: str, version: str) -> bool:
    """Redis Functions (FUNCTION LOAD, FCALL): Redis 7.0+, every Valkey."""
    return name == "valkey" or int(version.split(".", 1)[0]) >= 7


class RedisServer(RedisProcess):
    """One redis-server on 127.0.0.1:<port>, data in ``folder``; persistence off unless asked
    (``"--appendonly", "yes"`` in ``extra``). The launcher's server, after the binaries check."""

    def __init__(self, folder: Path, *extra: str, port: int | None = None, cluster: bool = False) -> None:
        binaries()
        # the default node timeout: a loaded 2-core machine must not mark a test's master failed
        super().__init__(folder, *extra, cluster=cluster, port=port, node_timeout_ms=15000)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)


class RedisCluster3:
    """Three masters, no replicas, joined with ``redis-cli --cluster create``."""

    def __init__(self, folder: Path) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for i in range(3):
                self.nodes.append(RedisServer(folder / f"node{i}", cluster=True))
            self._create()
        except BaseException:
            self.stop()  # never leave servers behind
            raise

    def _create(self) -> None:
        _, cli = binaries()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        info = node.client().cluster("info")  # redis-py parses it into a dict
        return bool(info.get("cluster_state") == "ok")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """One master and one sentinel watching it as ``mymaster``."""

    def __init__(self, folder: Path) -> None:
        self.master = RedisServer(folder / "master")
        self.port = free_port()
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n",
            encoding="utf-8",
        )
        server, _ = binaries()
        log = folder / "sentinel.log"
        self.process = subprocess.Popen(
            [server, str(conf), "--sentinel", "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _STARTUP_S
        while True:
            try:
                masters = redis.Redis(host="127.0.0.1", port=self.port).sentinel_masters()
                if "mymaster" in masters:
                    return
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis sentinel did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.master.stop()
