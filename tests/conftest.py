"""Fixtures shared by every test folder: redis-server processes started for the session (on
free loopback ports, never 6379, never anything we did not start) and ``backend_engine``, a
factory of fresh engines on the folder's ``backend`` parameter (tests/redis: memory,
fakeredis, standalone Redis, 3-master Redis Cluster; tests/unit's rule suites: memory and
standalone Redis).  A missing redis-server fails, never skips."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from cluster_risk.state.redis import RedisStore
from tests.helpers import Engine, EngineFactory, make_engine
from tests.redis.servers import RedisCluster3, RedisServer, binaries


@pytest.fixture(scope="session")
def redis_binaries() -> tuple[str, str]:
    try:
        return binaries()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def standalone(redis_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's one standalone server (tests flush it: we started it)."""
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


@pytest.fixture(scope="session")
def shared_stores() -> Iterator[dict[tuple[str, str, int], RedisStore]]:
    """Stores on the session's servers by (url, prefix, shards), kept for the session: a new
    store loads its scripts on first use (tens of ms), a kept one on an emptied server does not."""
    stores: dict[tuple[str, str, int], RedisStore] = {}
    yield stores
    for store in stores.values():
        store.close()


@pytest.fixture
def backend_engine(
    backend: str, request: pytest.FixtureRequest, shared_stores: dict[tuple[str, str, int], RedisStore]
) -> Iterator[EngineFactory]:
    """``backend_engine(*rules, num_shards=4, **config)`` -> a fresh engine on ``backend``
    (empty state): :func:`tests.helpers.make_engine`'s arguments, plus the store's shards.
    Engines made in one test never share state."""
    stores: list[RedisStore] = []

    def make(*rules: dict[str, Any], num_shards: int = 4, **config: Any) -> Engine:
        if backend == "memory":
            return make_engine(*rules, **config)
        # the test's first store starts on an emptied server (we started it); a later one in the
        # same test gets a prefix of its own, so it never wipes the engines made before it
        prefix = f"risk{len(stores)}" if stores else "risk"
        if backend == "fakeredis":
            store = RedisStore(fakeredis.FakeRedis(), prefix=prefix, num_shards=num_shards)
            stores.append(store)
        else:
            if backend == "redis":
                server: RedisServer = request.getfixturevalue("standalone")
                url = server.url
                if not stores:
                    server.client().flushall()
            else:
                nodes: RedisCluster3 = request.getfixturevalue("cluster")
                url = nodes.url
                if not stores:
                    nodes.flush()
            key = (url, prefix, num_shards)
            if key not in shared_stores:
                shared_stores[key] = RedisStore.from_url(url, prefix=prefix, num_shards=num_shards)
            store = shared_stores[key]
            assert store.is_cluster == (backend == "cluster")
            stores.append(store)
        return make_engine(*rules, store=store, **config)

    yield make
    for store in stores:
        if backend == "fakeredis":
            store.close()
