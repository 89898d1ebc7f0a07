"""redis-server processes for the test session: standalone and a 3-master cluster on free
loopback ports, in temporary directories, never on 6379 and never anything we did not start."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from cluster_risk.state.redis import SERVER_SETTINGS

__all__ = ["RedisCluster3", "RedisSentinel", "RedisServer", "binaries", "free_port"]

_STARTUP_S = 10.0


def binaries() -> tuple[str, str]:
    """Paths of redis-server and redis-cli, or a clear failure (never a silent skip)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError(
            "redis-server and redis-cli (Redis >= 7) must be on PATH for tests/redis; "
            "install them (Debian: apt-get install redis-server) - these tests never skip"
        )
    return server, cli


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(bus: bool = False) -> int:
    """A free loopback port (and port + 10000 free too when a cluster bus needs it)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port == 6379 or (bus and (port > 55535 or not _is_free(port + 10000))):
            continue
        return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """One redis-server on 127.0.0.1:<port>, data in ``folder``; persistence off unless asked."""

    def __init__(self, folder: Path, *extra: str, port: int | None = None, cluster: bool = False) -> None:
        self.folder = folder
        self.port = port or free_port(bus=cluster)
        self.extra = list(extra)
        if cluster:
            self.extra += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        server, _ = binaries()
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        if "--appendonly" not in self.extra:
            args += ["--save", "", "--appendonly", "no"]
        args += [arg for name, value in SERVER_SETTINGS.items() for arg in (f"--{name}", value)]
        args += ["--logfile", str(self.folder / "redis.log"), *self.extra]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _STARTUP_S
        while True:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis-server saves (if configured) and exits
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


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
