"""Session checks shared by every suite.

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

import pytest

from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.state.redis import RedisStore
from tests.redis.servers import has_functions

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
