"""Engine configuration: pydantic models, frozen, unknown keys refused.

``build_config(dict)`` returns an :class:`EngineConfig` with ``.rules`` (rule instances in
config order), ``.contract_to_product`` and ``.trading_day``; ``load_config(path)`` reads
JSON, YAML or TOML.  Errors name the place: ``rules[1].daily_cap: must be greater than 0``.
"""

from __future__ import annotations

import json
import tomllib
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster_risk.calendar import TradingCalendar
from cluster_risk.errors import ConfigError
from cluster_risk.rules import BaseRule, rule_types

__all__ = ["EngineConfig", "TradingDay", "build_config", "load_config"]


class TradingDay(BaseModel):
    """``{timezone: "Asia/Shanghai", start: "21:00"}``: a day starts at ``start`` local time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = "UTC"
    start: time = time(0, 0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("start")
    @classmethod
    def _whole_minute(cls, value: time) -> time:
        if value.second or value.microsecond or value.tzinfo:
            raise ValueError("must be HH:MM local time")
        return value

    def calendar(self) -> TradingCalendar:
        return TradingCalendar(self.timezone, self.start)


class _RawConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    contract_to_product: dict[str, str] = Field(default_factory=dict)
    rules: list[dict[str, Any]] = Field(default_factory=list)
    trading_day: TradingDay = TradingDay()
    id_retention_days: int = Field(default=7, ge=1)


class EngineConfig:
    """A validated config: rule instances plus the engine-wide settings."""

    __slots__ = ("contract_to_product", "id_retention_days", "rules", "trading_day")

    def __init__(
        self,
        rules: list[BaseRule],
        contract_to_product: dict[str, str],
        trading_day: TradingDay,
        id_retention_days: int = 7,
    ) -> None:
        self.rules = rules
        self.contract_to_product = contract_to_product
        self.trading_day = trading_day
        self.id_retention_days = id_retention_days

    def unmapped_contracts(self, contracts: set[str]) -> set[str]:
        """Contracts that are their own product (no mapping): ops should see these."""
        return contracts - self.contract_to_product.keys()

    def require_account_dimension(self) -> None:
        """The cluster shards by account: every rule must group by it."""
        for i, rule in enumerate(self.rules):
            if "account" not in rule.dimensions:
                raise ConfigError(
                    f"rules[{i}].dimensions: must include 'account' in the cluster "
                    f"(events are sharded by account); rule {rule.name!r} has {list(rule.dimensions)}"
                )

    def __repr__(self) -> str:
        return (
            f"EngineConfig(rules={self.rules!r}, contract_to_product={self.contract_to_product!r}, "
            f"trading_day={self.trading_day!r})"
        )


def build_config(data: dict[str, Any]) -> EngineConfig:
    """Validate a config mapping and build its rules; raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError("config: must be a mapping with contract_to_product, rules, trading_day")
    try:
        raw = _RawConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    registry = rule_types()
    rules: list[BaseRule] = []
    for i, spec in enumerate(raw.rules):
        options = dict(spec)
        kind = options.pop("type", None)
        if kind not in registry:
            known = ", ".join(sorted(registry))
            raise ConfigError(f"rules[{i}].type: unknown rule type {kind!r} (known: {known})")
        cls = registry[kind]
        try:
            rules.append(cls(cls.Params.model_validate(options)))
        except ValidationError as exc:
            raise ConfigError(_describe(exc, f"rules[{i}]")) from None
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"rules[{i}].name: {rule.name!r} is already used by rules[{seen[rule.name]}]")
        seen[rule.name] = i
    return EngineConfig(rules, dict(raw.contract_to_product), raw.trading_day, raw.id_retention_days)


def load_config(path: str | Path) -> EngineConfig:
    """Read a config file (``.json``, ``.yaml``/``.yml`` or ``.toml``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {suffix.lstrip('.') or 'JSON'}: {exc}") from None
    try:
        return build_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_MESSAGES = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "missing": "is required",
    "extra_forbidden": "unknown option",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
}


def _describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors():
        loc = prefix
        for item in error["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else (f".{item}" if loc else str(item))
        template = _MESSAGES.get(error["type"])
        message = template.format(**error.get("ctx", {})) if template else error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        parts.append(f"{loc or 'config'}: {message}")
    return "; ".join(parts)
