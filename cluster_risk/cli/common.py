"""What every ``cluster-risk`` command shares: the one-line failure (exit 2), the guard that turns
configuration and connection problems into it, the Redis connection, the runtime-settings
options and how they are filled in.

Runtime settings (:class:`cluster_risk.settings.RuntimeSettings`): a command that talks to a
fleet's Redis (every one registered with :func:`add_common`) takes each setting from its flag,
else from the environment (``CLUSTER_RISK_<FIELD>``, ``REDIS_URL``), else from the settings
file (``--settings-file`` or ``CLUSTER_RISK_SETTINGS_FILE``), else the command's default
(:func:`apply_runtime_settings`).  The Redis URL has no default: a command never guesses
which Redis to write to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from cluster_risk.errors import ConfigError, RiskError
from cluster_risk.settings import RedisUrl, load_settings, mask_secrets
from cluster_risk.state.redis import RedisStore

__all__ = ["EXIT_USAGE", "add_common", "apply_runtime_settings", "connect", "dumps", "fail", "guarded", "when"]

EXIT_USAGE = 2

dumps = json.JSONEncoder(separators=(",", ":")).encode


def fail(message: str) -> int:
    """One line on stderr (secrets masked); the usage exit code."""
    print(f"cluster-risk: {mask_secrets(message)}", file=sys.stderr)
    return EXIT_USAGE


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Configuration and connection problems end with one line on stderr and exit 2; a closed
    stdout (``| head``) ends quietly (:func:`cluster_risk.cli.main`)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            raise
        except (RiskError, RedisError, OSError) as exc:
            return fail(str(exc))

    return run


def connect(url: str) -> Any:
    try:
        return RedisStore.from_url(url).client
    except ValueError as exc:  # redis-py's URL parsing (a port that is not a number, ...)
        raise ConfigError(f"--redis-url: {mask_secrets(str(exc))}") from None


# argparse dest -> (RuntimeSettings field, the command's default when no source sets it)
_FROM_SETTINGS: dict[str, tuple[str, Any]] = {
    "redis_url": ("redis_url", None),
    "id": ("worker_id", None),
    "shards": ("num_shards", None),
    "tick_ms": ("tick_ms", 1000),
    "batch": ("batch_size", 1000),
    "metrics_port": ("metrics_port", 0),
    "metrics_host": ("metrics_host", "127.0.0.1"),
    "log_level": ("log_level", "INFO"),
}


def apply_runtime_settings(args: argparse.Namespace) -> None:
    """Fill the options of ``args`` left unset on the command line: flag > environment >
    settings file > the command's default (see the module docstring).  Raises
    :class:`ConfigError` naming a bad value's source field (never showing the value), or when
    no source gives a Redis URL."""
    given = {}
    if args.redis_url is not None:
        try:
            given["redis_url"] = RedisUrl(args.redis_url)
        except ValueError as exc:
            raise ConfigError(f"--redis-url: {exc}") from None
    settings = load_settings(settings_file=getattr(args, "settings_file", None), **given)
    for dest, (field, default) in _FROM_SETTINGS.items():
        if not hasattr(args, dest) or getattr(args, dest) is not None:
            continue
        value = getattr(settings, field) if field in settings.model_fields_set else default
        if field == "redis_url" and value is not None:
            value = value.get_secret_value()
        setattr(args, dest, value)
    if args.redis_url is None:
        raise ConfigError(
            "--redis-url is required (or REDIS_URL / CLUSTER_RISK_REDIS_URL in the environment, "
            "or redis_url in the settings file)"
        )


def add_common(parser: argparse.ArgumentParser, url: bool = True) -> None:
    """``--redis-url`` and ``--settings-file`` (the runtime settings, see the module
    docstring) and ``--prefix``."""
    if url:
        parser.add_argument(
            "--redis-url",
            help="redis://, rediss://, unix:// or redis+sentinel:// URL (default: $CLUSTER_RISK_REDIS_URL, "
            "$REDIS_URL or redis_url in the settings file; one of them is required). A password here is "
            "visible in the process list: prefer the environment",
        )
        parser.add_argument(
            "--settings-file",
            help="runtime settings (TOML, YAML or JSON; default: $CLUSTER_RISK_SETTINGS_FILE, none if unset)",
        )
        parser.set_defaults(runtime_settings=True)
    parser.add_argument("--prefix", default="risk", help="key prefix of the deployment (default: %(default)s)")


def when(ns: int | None) -> str:
    """Wall-clock ns as UTC text with the nanoseconds kept."""
    if ns is None:
        return "-"
    seconds, rest = divmod(int(ns), 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{rest:09d} UTC"
