"""Fixtures and session checks shared by every suite.

Servers: redis-server processes started for the session (on free loopback ports, never 6379,
never anything we did not start), and ``backend_engine``, a factory of fresh engines on the
folder's ``backend`` parameter (tests/redis: memory, fakeredis, standalone Redis, 3-master
Redis Cluster; tests/unit's rule suites: memory and standalone Redis).  A missing
redis-server fails, never skips.

``CLUSTER_RISK_EXPECT_SERVER`` (set by .ci/run's server legs, e.g. ``valkey 8.0.1``, ``redis 6.2.16``,
``redis 7.0``): the session first starts the ``redis-server`` on PATH, as every Redis-backed test
does, and fails loudly unless INFO names that server and a version starting with that version, and
unless the store takes the path that server should take (Redis Functions from 7.0, EVALSHA before).
So a leg can never pass on another server than the one it says it tests. Unset: no check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.state.redis import RedisStore
from tests.helpers import Engine, EngineFactory, make_engine
from tests.redis.servers import RedisCluster3, RedisServer, binaries, has_functions

EXPECT_ENV = "CLUSTER_RISK_EXPECT_SERVER"


def parse_expected(text: str) -> tuple[str, str]:
    """``"valkey 8.0.1"`` -> ``("valkey", "8.0.1")``; a typed error naming the variable otherwise."""
    match = re.fullmatch(r"\s*(redis|valkey)\s+(\d+(?:\.\d+)*)\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{EXPECT_ENV}={text!r}: expected '<redis|valkey> <version>', e.g. 'valkey 8.0.1'")
    return match.group(1).lower(), match.group(2)


def server_identity(info: dict[str, object]) -> tuple[str, str]:
    """(server name, version) from ``INFO server``: Valkey reports ``server_name:valkey`` and its
    own ``valkey_version`` (``redis_version`` is the Redis it is compatible with)."""
    name = str(info.get("server_name", "redis")).lower()
    version = str(info.get(f"{name}_version", info.get("redis_version", "")))
    return name, version


def version_matches(version: str, expected: str) -> bool:
    """``"6.2.16"`` matches ``"6.2.16"`` and ``"6.2"``, not ``"6.20"``."""
    return version == expected or version.startswith(expected + ".")


@pytest.fixture(scope="session", autouse=True)
def expected_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    wanted = os.environ.get(EXPECT_ENV, "")
    if not wanted:
        yield
        return

    try:
        name, version = parse_expected(wanted)
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = RedisProcess(tmp_path_factory.mktemp("expected-server"))
    try:
        got_name, got_version = server_identity(server.client().info("server"))
        if got_name != name or not version_matches(got_version, version):
            pytest.fail(
                f"{EXPECT_ENV}={wanted!r} but the redis-server on PATH is {got_name} {got_version} "
                "(put the right server's folder first on PATH)",
                pytrace=False,
            )
        if server.setting_problems:
            pytest.fail("; ".join(server.setting_problems), pytrace=False)
        store = RedisStore.from_url(server.url, num_shards=1)
        try:
            want_functions = has_functions(got_name, got_version)
            if store.uses_functions != want_functions:
                path = "Redis Functions (FCALL)" if want_functions else "EVALSHA"
                pytest.fail(f"{got_name} {got_version}: expected apply.lua to run by {path}", pytrace=False)
        finally:
            store.close()
    finally:
        server.stop()
    yield


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
