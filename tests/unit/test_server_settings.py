"""SERVER_SETTINGS by capability: each setting under the first of its names a server takes,
read back, and a message saying what it costs when a server takes none (no real server here:
a stand-in client that answers CONFIG as Redis 6.2, 7.0 or a server refusing CONFIG would)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster_risk.state.server_settings import SERVER_SETTINGS, apply_server_settings, server_settings


class ConfigOnly:
    """CONFIG SET/GET of a server that knows ``names`` (and refuses the rest as Redis does)."""

    def __init__(self, names: set[str], refusal: str = "ERR Unsupported CONFIG parameter: {}") -> None:
        self.values = {name: "512" for name in names}
        self.refusal = refusal
        self.sets: list[str] = []

    def config_set(self, name: str, value: str) -> bool:
        self.sets.append(name)
        if name not in self.values:
            raise redis.ResponseError(self.refusal.format(name))
        self.values[name] = value
        return True

    def config_get(self, name: str) -> dict[str, Any]:
        return {name: self.values[name].encode()} if name in self.values else {}


def test_the_listpack_name_where_the_server_knows_it() -> None:
    server = ConfigOnly({"hash-max-listpack-entries", "hash-max-ziplist-entries"})  # Redis 7, Valkey
    assert apply_server_settings(server, "test") == []  # type: ignore[arg-type]
    assert server.sets == ["hash-max-listpack-entries"]
    assert server.values["hash-max-listpack-entries"] == "16"


def test_the_ziplist_alias_on_redis_6_2() -> None:
    server = ConfigOnly({"hash-max-ziplist-entries"})
    assert apply_server_settings(server, "test") == []  # type: ignore[arg-type]
    assert server.sets == ["hash-max-listpack-entries", "hash-max-ziplist-entries"]
    assert server.values["hash-max-ziplist-entries"] == "16"


def test_a_server_that_takes_no_name_is_told_what_it_costs(caplog: pytest.LogCaptureFixture) -> None:
    server = ConfigOnly(set(), refusal="NOPERM this user has no permissions to run the 'config|set' command")
    with caplog.at_level(logging.WARNING):
        problems = apply_server_settings(server, "redis-server on port 1234")  # type: ignore[arg-type]
    assert len(problems) == 1
    (problem,) = problems
    assert "redis-server on port 1234" in problem
    assert "hash-max-listpack-entries 16" in problem
    assert "NOPERM" in problem
    assert "more Redis CPU per event" in problem  # what running without it costs
    assert problem in caplog.text


def test_a_setting_that_does_not_hold_is_reported() -> None:
    class Ignores(ConfigOnly):
        def config_set(self, name: str, value: str) -> bool:
            self.sets.append(name)
            return True  # says OK, keeps the old value

    problems = apply_server_settings(Ignores({"hash-max-listpack-entries"}), "x")  # type: ignore[arg-type]
    assert len(problems) == 1
    assert "CONFIG GET says '512'" in problems[0]


def test_config_files_use_the_newest_names() -> None:
    assert server_settings() == {"hash-max-listpack-entries": "16"}
    assert all(setting.cost for setting in SERVER_SETTINGS)


def test_the_deploy_configs_carry_the_settings() -> None:
    """deploy/redis/*.conf (Redis 7 in the compose file) set the same values, by the newest names."""
    folder = Path(__file__).parents[2] / "deploy" / "redis"
    confs = sorted(folder.glob("*.conf"))
    assert confs
    for conf in confs:
        lines = conf.read_text(encoding="utf-8").splitlines()
        for name, value in server_settings().items():
            assert f"{name} {value}" in lines, conf
