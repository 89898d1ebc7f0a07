"""Redis server settings the state's layout needs for speed, applied by capability.

Every server the project starts (``cluster-risk up``, the Redis benchmark, the tests) is started
without them and then given them with ``CONFIG SET``, each under the first of its names the server
knows (Redis 7 and Valkey: ``hash-max-listpack-entries``; Redis 6.2: ``hash-max-ziplist-entries``),
and read back with ``CONFIG GET``. A setting no name of which the server takes is not fatal: the
state is the same either way, only slower; the message says what it costs. See docs/redis.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

__all__ = ["SERVER_SETTINGS", "ServerSetting", "apply_server_settings", "server_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSetting:
    """One setting: its names, newest first (older servers' aliases after), its value, and what a
    server that takes none of the names costs its user."""

    names: tuple[str, ...]
    value: str
    cost: str


# A shard's hashes grow to a field per account or id; a hash stays a listpack (a ziplist before
# Redis 7), searched linearly, up to this many fields (512 by default), so at a few hundred
# fields each HGET/HSET costs about ten times a hash table's look-up: a visible share of all Redis
# work on the seed benchmark. Even at 64 fields (1,000 accounts over 16 shards) a worker's small
# calls are cheaper at 16; memory is what a lower bound costs.
SERVER_SETTINGS: tuple[ServerSetting, ...] = (
    ServerSetting(
        names=("hash-max-listpack-entries", "hash-max-ziplist-entries"),
        value="16",
        cost=(
            "hashes of up to the server's own limit (512 by default) stay compact and are searched "
            "linearly on every access: about 7% more Redis CPU per event on the seed benchmark; "
            "the results are the same"
        ),
    ),
)


def server_settings() -> dict[str, str]:
    """``{newest name: value}``, for configuration files (deploy/redis/*.conf) and docs."""
    return {setting.names[0]: setting.value for setting in SERVER_SETTINGS}


def _current(client: redis.Redis, name: str) -> str | None:
    answer: Mapping[Any, Any] = client.config_get(name)
    for key, value in answer.items():
        if (key.decode() if isinstance(key, bytes) else str(key)) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _apply_one(client: redis.Redis, setting: ServerSetting) -> str | None:
    """Set ``setting`` under the first name the server takes and read it back; None when it
    holds, else why not (every name's refusal)."""
    refusals: list[str] = []
    for name in setting.names:
        try:
            client.config_set(name, setting.value)
        except redis.ResponseError as exc:  # unknown name on this server, or refused (ACL)
            refusals.append(f"{name}: {exc}")
            continue
        now = _current(client, name)
        if now == setting.value:
            return None
        refusals.append(f"{name}: set to {setting.value} but CONFIG GET says {now!r}")
    return "; ".join(refusals)


def apply_server_settings(client: redis.Redis, where: str) -> list[str]:
    """Apply ``SERVER_SETTINGS`` to the server behind ``client`` (one node; config is per node,
    so a cluster's every node, replicas too). Returns one message per setting the server did not
    take, each naming the setting, the server (``where``), the refusal and what it costs; they are
    also logged as warnings. Connection errors propagate (the caller's start check)."""
    problems = []
    for setting in SERVER_SETTINGS:
        refused = _apply_one(client, setting)
        if refused is not None:
            message = (
                f"{where}: could not set {setting.names[0]} {setting.value} ({refused}); "
                f"running without it: {setting.cost}"
            )
            log.warning("%s", message)
            problems.append(message)
    return problems
