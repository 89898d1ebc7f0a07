"""``cluster-risk up``: the docker-compose topology as local processes - redis-server (one, or
a 3-master cluster with a replica each) on free loopback ports in a temporary folder, and N
workers - for trying the cluster and for the fault tests.  Ctrl-C (or SIGTERM) stops the
workers first (they release their leases), then Redis, and removes the folder.  It prints the
engine config it runs (``--config`` is required) and the Redis URL with its password masked;
the workers get the URL through their environment (``CLUSTER_RISK_REDIS_URL``), never in
their arguments, which any local user can read (``ps``).  Exit 0 when stopped by a signal, 1
when a worker died (the others are stopped too).
"""

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster_risk.cluster.launcher import LocalCluster, RedisProcess, start_worker
from cluster_risk.config import load_config
from cluster_risk.settings import mask_url

__all__ = ["up"]


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
