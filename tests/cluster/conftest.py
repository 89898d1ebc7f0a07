"""Fixtures for the cluster tests: real redis-server processes on free loopback ports (a fresh
standalone server per test, a 3-master cluster with a replica each per session), workers as
threads (conformance) or processes (faults).  A missing redis-server fails, never skips
(``redis_binaries``, tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pytest
import redis

from cluster_risk.cluster.launcher import LocalCluster, RedisProcess
from cluster_risk.state.redis import RedisStore

if TYPE_CHECKING:
    from cluster_risk.cluster.worker import Worker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def server(redis_binaries: tuple[str, str], tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh standalone redis-server for this test only."""
    process = RedisProcess(tmp_path / "redis")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def cluster6(redis_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three masters with a replica each, shared by the session (flushed by ``cluster_url``)."""
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster6"))
    yield nodes
    nodes.stop()


@pytest.fixture
def cluster_url(cluster6: LocalCluster) -> str:
    cluster6.wait_ok()
    for node in cluster6.nodes:
        if node.client().info("replication").get("role") == "master":
            node.client().flushall()
    return cluster6.url


def connect(url: str) -> redis.Redis | redis.RedisCluster:
    return RedisStore.from_url(url).client


class Threads:
    """Workers running in threads of the test process (for tests that need no kill -9)."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, make: Callable[[], Worker]) -> Worker:
        worker = make()

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:  # reported by stop_all
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.workers.append(worker)
        self.threads.append(thread)
        return worker

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a worker did not finish in time"
        assert not self.errors, self.errors

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def threads() -> Iterator[Threads]:
    pool = Threads()
    yield pool
    pool.stop_all()


def read_line(stream: IO[str] | None, what: str, timeout: float = 60) -> str:
    """One line from a child's pipe, or a failure naming ``what`` after ``timeout`` s (a blocked
    ``readline`` would wait forever on a child that never prints; killing the child ends it)."""
    assert stream is not None, f"no pipe to read {what} from"
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")
    return got[0]


__all__ = ["Threads", "connect", "read_line"]
