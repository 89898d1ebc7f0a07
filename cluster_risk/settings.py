"""Runtime settings of a worker process (where Redis is, who am I, how fast), as opposed to
the engine config (rules, contracts: :mod:`cluster_risk.config`).

Sources, highest priority first: keyword arguments (the command line), environment variables
``CLUSTER_RISK_<FIELD>`` (and plain ``REDIS_URL``, the usual name in containers), an optional
settings file (``settings_file=`` or ``CLUSTER_RISK_SETTINGS_FILE``; TOML, YAML or JSON with
the field names as keys), then the defaults.  Unknown keys in a file are refused.

The Redis URL is a :class:`RedisUrl`: its password shows as ``***`` in ``str``, ``repr``,
``model_dump`` and validation errors; only :meth:`RedisUrl.get_secret_value` gives it back,
for the one place that connects.  :func:`mask_secrets` scrubs any text (log lines, driver
error messages) the same way.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import Field, GetCoreSchemaHandler, ValidationError
from pydantic_core import core_schema
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cluster_risk.errors import ConfigError

__all__ = ["RedisUrl", "RuntimeSettings", "load_settings", "mask_secrets", "mask_url"]

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "sentinel")
# user:password@ in any URL, and password=... in a query string or a key=value text.
# Linear in the text's length (every log line goes through here, and a log line may quote a
# megabyte-long id): the search starts at the literal "://" (the scheme is only looked back
# at, one character: no scan of a long word from each of its positions), the quantifiers are
# possessive, and a password never runs past the next "://", so each attempt reads at most
# up to the next one.  (A password containing "://" is left partly visible; redis-py cannot
# parse one unencoded either.)
_USERINFO = re.compile(r"(?P<head>://(?<=[a-z0-9+.-]://)[^:/@\s]*+:)(?:(?!://)[^@\s])*+@", re.IGNORECASE)
_PASSWORD_ARG = re.compile(r"(?P<head>\bpassword=)[^&\s,'\"]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0`` (also a
    ``password=`` query argument, which redis-py accepts too)."""
    parts = urlsplit(url)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{hostinfo}")
    return _PASSWORD_ARG.sub(r"\g<head>***", urlunsplit(parts))


def mask_secrets(text: str) -> str:
    """Mask every URL password and ``password=`` value found in free text."""
    return _PASSWORD_ARG.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>***@", text))


class RedisUrl:
    """A Redis URL that never shows its password (like pydantic's ``SecretStr``, but the rest
    of the URL stays readable: operators need to see which host a worker talks to)."""

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ValueError(
                f"must be a URL with scheme {', '.join(s + '://' for s in _SCHEMES)}; got {mask_url(url)!r}"
            )
        self._url = url

    def get_secret_value(self) -> str:
        return self._url

    def __str__(self) -> str:
        return mask_url(self._url)

    def __repr__(self) -> str:
        return f"RedisUrl({mask_url(self._url)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedisUrl) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    @classmethod
    def _validate(cls, value: object) -> RedisUrl:
        if isinstance(value, RedisUrl):
            return value
        if not isinstance(value, str):
            raise ValueError("must be a URL string")  # pydantic reports ValueError, not TypeError
        return cls(value.strip())

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),  # dumps are masked too
        )


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class RuntimeSettings(BaseSettings):
    """Everything a worker needs besides the engine config; see the module docstring."""

    model_config = SettingsConfigDict(
        env_prefix="CLUSTER_RISK_",
        env_ignore_empty=True,  # CLUSTER_RISK_METRICS_PORT= (empty) means "not set"
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # a rejected value may hold a password
    )

    redis_url: RedisUrl = RedisUrl("redis://127.0.0.1:6379/0")
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # None: no metrics server
    metrics_host: str = Field(default="127.0.0.1", min_length=1)  # 0.0.0.0: reachable from outside (containers)
    num_shards: int = Field(default=16, ge=1, le=65536)  # fixed per deployment: changing it moves accounts
    tick_ms: int = Field(default=100, ge=0)  # period of the time-driven resume check; 0: no clock ticks
    batch_size: int = Field(default=1000, ge=1)  # events per apply call (one EVALSHA per shard)
    fail_open: bool = False  # Redis unreachable: False treats every scope as paused
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    settings_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets-dir magic: what a worker reads is what this docstring says.
        plain = _PlainEnvSource(settings_cls)
        return init_settings, env_settings, plain, _FileSource(settings_cls, init_settings, env_settings, plain)

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-ready values, password masked: safe to log at start-up."""
        return self.model_dump(mode="json")


class _PlainEnvSource(PydanticBaseSettingsSource):
    """Unprefixed variables that containers and platforms set by convention."""

    NAMES: ClassVar[dict[str, str]] = {"REDIS_URL": "redis_url"}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for all its fields

    def __call__(self) -> dict[str, Any]:
        return {field: os.environ[var] for var, field in self.NAMES.items() if os.environ.get(var)}


class _FileSource(PydanticBaseSettingsSource):
    """The settings file named by the higher-priority sources, below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], *named_by: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._named_by = named_by

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file

    def __call__(self) -> dict[str, Any]:
        named = [src().get("settings_file") for src in self._named_by]
        if not any(named):
            return {}
        path = Path(next(p for p in named if p))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read settings ({exc.strerror})") from None
        suffix = path.suffix.lower()
        try:
            if suffix == ".toml":
                data = tomllib.loads(text)
            elif suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {suffix.lstrip('.') or 'JSON'}: {mask_secrets(str(exc))}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: settings must be a mapping of field names to values")
        return data


def load_settings(**overrides: Any) -> RuntimeSettings:
    """:class:`RuntimeSettings` from all sources, ``None`` overrides dropped (unset CLI flags);
    raises :class:`ConfigError` naming each bad field, without its value."""
    try:
        return RuntimeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ConfigError(f"runtime settings: {mask_secrets(problems)}") from None
