"""The Redis folder's ``backend`` parameter (memory, fakeredis, standalone Redis, 3-master
Redis Cluster) and its marker; the servers and ``backend_engine`` are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["memory", "fakeredis", "redis", "cluster"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.redis)
            if "tls_server" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.tls)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
