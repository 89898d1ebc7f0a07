"""Fixtures for the Redis store: real servers started for the session, and ``backend``, the
behaviour suite's parameter (memory, fakeredis, standalone Redis, 3-master Redis Cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from cluster_risk import RiskEngine, build_config
from cluster_risk.remote import RemoteEngine
from cluster_risk.state.redis import RedisStore
from tests.redis.servers import RedisCluster3, RedisServer, binaries

BACKENDS = ["memory", "fakeredis", "redis", "cluster"]
Engine = RiskEngine | RemoteEngine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.redis)
            if "tls_server" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.tls)


@pytest.fixture(scope="session")
def redis_binaries() -> tuple[str, str]:
    try:
        return binaries()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def standalone(redis_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("standalone"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(redis_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    nodes = RedisCluster3(tmp_path_factory.mktemp("cluster"))
    yield nodes
    nodes.stop()


@pytest.fixture
def redis_store(standalone: RedisServer) -> Iterator[RedisStore]:
    """A store on the session's standalone server, flushed first (we started that server)."""
    standalone.client().flushall()
    store = RedisStore.from_url(standalone.url, num_shards=4)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_engine(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[dict[str, Any]], Engine]]:
    """``make_engine(config dict)`` -> a fresh engine on ``backend`` (empty state)."""
    stores: list[RedisStore] = []

    def make(config: dict[str, Any], num_shards: int = 4) -> Engine:
        built = build_config(config)
        if backend == "memory":
            return RiskEngine.from_config(built)
        if backend == "fakeredis":
            store = RedisStore(fakeredis.FakeRedis(), num_shards=num_shards)
        elif backend == "redis":
            server: RedisServer = request.getfixturevalue("standalone")
            server.client().flushall()
            store = RedisStore.from_url(server.url, num_shards=num_shards)
        else:
            nodes: RedisCluster3 = request.getfixturevalue("cluster")
            nodes.flush()
            store = RedisStore.from_url(nodes.url, num_shards=num_shards)
            assert store.is_cluster
        stores.append(store)
        return RemoteEngine.from_config(built, store)

    yield make
    for store in stores:
        store.close()
