"""The rule suites' ``backend`` parameter: every test that asks for an engine through
``backend_engine`` (tests/conftest.py) runs in process and on the session's standalone Redis,
as one suite over every storage.  ``@pytest.mark.memory_only("why")`` keeps a test in process
(it inspects state that only the in-process engine exposes)."""

from __future__ import annotations

import pytest

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "memory_only(reason): run only on the in-process engine, for that reason")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        memory_only = metafunc.definition.get_closest_marker("memory_only")
        if memory_only is not None and not memory_only.args:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: memory_only needs its reason")
        metafunc.parametrize("backend", ["memory"] if memory_only else BACKENDS, scope="function")
