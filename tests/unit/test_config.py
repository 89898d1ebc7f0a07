"""build_config / load_config: JSON, YAML and TOML files; unknown keys refused; every error
names its place (``rules[1].daily_cap: must be greater than 0``)."""

from __future__ import annotations

import json
from datetime import time
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import (
    AccountVolumeLimitRule,
    ConfigError,
    EngineConfig,
    OrderRateLimitRule,
    build_config,
    load_config,
)

RATE = {"type": "OrderRateLimitRule", "threshold": 5}
VOLUME = {"type": "AccountVolumeLimitRule", "daily_cap": 100}

FULL = {
    "contract_to_product": {"T2303": "T10Y"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 5, "window_ns": 500_000_000, "bucket_ns": 10_000_000},
        {"type": "AccountVolumeLimitRule", "daily_cap": 1000, "dimensions": ["account", "product"], "metric": "count"},
    ],
    "trading_day": {"timezone": "Asia/Shanghai", "start": "21:00"},
    "id_retention_days": 3,
}

YAML = """\
contract_to_product:
  T2303: T10Y
rules:
  - type: OrderRateLimitRule
    threshold: 5
    window_ns: 500000000
    bucket_ns: 10000000
  - type: AccountVolumeLimitRule
    daily_cap: 1000
    dimensions: [account, product]
    metric: count
trading_day:
  timezone: Asia/Shanghai
  start: "21:00"
id_retention_days: 3
"""

TOML = """\
id_retention_days = 3

[contract_to_product]
T2303 = "T10Y"

[trading_day]
timezone = "Asia/Shanghai"
start = "21:00"

[[rules]]
type = "OrderRateLimitRule"
threshold = 5
window_ns = 500_000_000
bucket_ns = 10_000_000

[[rules]]
type = "AccountVolumeLimitRule"
daily_cap = 1000
dimensions = ["account", "product"]
metric = "count"
"""


def check_full(config: EngineConfig) -> None:
    rate, volume = config.rules
    assert isinstance(rate, OrderRateLimitRule)
    assert (rate.threshold, rate.resume_threshold, rate.window_ns, rate.bucket_ns) == (5, 5, 500_000_000, 10_000_000)
    assert rate.dimensions == ("account",)
    assert rate.name == "OrderRateLimitRule"
    assert isinstance(volume, AccountVolumeLimitRule)
    assert (volume.daily_cap, volume.metric, volume.dimensions) == (1000, "count", ("account", "product"))
    assert config.contract_to_product == {"T2303": "T10Y"}
    assert (config.trading_day.timezone, config.trading_day.start) == ("Asia/Shanghai", time(21, 0))
    assert config.id_retention_days == 3


def test_build_config() -> None:
    check_full(build_config(FULL))


@pytest.mark.parametrize(
    ("suffix", "text"), [(".json", json.dumps(FULL)), (".yaml", YAML), (".yml", YAML), (".toml", TOML)]
)
def test_load_config_formats(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"risk{suffix}"
    path.write_text(text, encoding="utf-8")
    check_full(load_config(path))
    check_full(load_config(str(path)))


def test_defaults() -> None:
    config = build_config({"rules": [{"type": "OrderRateLimitRule", "threshold": 3}]})
    (rule,) = config.rules
    assert (rule.window_ns, rule.bucket_ns, rule.resume_threshold, rule.dimensions) == (10**9, 10**6, 3, ("account",))
    assert (config.trading_day.timezone, config.trading_day.start) == ("UTC", time(0, 0))
    assert config.contract_to_product == {}
    assert build_config({}).rules == []


def refused(data: Any, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ({**VOLUME, "daily_cap": 0}, "rules[1].daily_cap: must be greater than 0"),
        ({**VOLUME, "daily_cap": -5}, "rules[1].daily_cap: must be greater than 0"),
        ({"type": "AccountVolumeLimitRule"}, "rules[1].daily_cap: is required"),
        ({**VOLUME, "metric": "turnover"}, "rules[1].metric"),
        ({**VOLUME, "dimensions": ["account", "desk"]}, "rules[1].dimensions[1]"),
        ({**VOLUME, "dimensions": []}, "rules[1].dimensions"),
        ({**VOLUME, "dimensions": ["account", "account"]}, "rules[1].dimensions"),
        ({**VOLUME, "contract_multiplier": {"C1": "ten"}}, "rules[1].contract_multiplier.C1"),
        ({**VOLUME, "name": ""}, "rules[1].name"),
        ({**VOLUME, "daily_capp": 5}, "rules[1].daily_capp: unknown option"),
        ({**RATE, "threshold": 0}, "rules[1].threshold"),
        ({**RATE, "threshold": 2.5}, "rules[1].threshold: must be an integer"),
        ({"type": "OrderRateLimitRule"}, "rules[1].threshold: is required"),
        ({**RATE, "window_ns": 0}, "rules[1].window_ns: must be greater than 0"),
        ({**RATE, "bucket_ns": -1}, "rules[1].bucket_ns: must be greater than 0"),
        ({**RATE, "window_ns": 1000, "bucket_ns": 300}, "rules[1]"),
        ({**RATE, "resume_threshold": 6}, "rules[1]"),
        ({**RATE, "resume_threshold": -1}, "rules[1].resume_threshold"),
        ({"type": "NoSuchRule"}, "rules[1].type"),
        ({"threshold": 5}, "rules[1].type"),
    ],
)
def test_bad_rule_values_name_the_place(rule: dict[str, Any], fragment: str) -> None:
    refused({"rules": [RATE, rule]}, fragment)


def test_bucket_must_divide_the_window() -> None:
    refused({"rules": [{**RATE, "window_ns": 1000, "bucket_ns": 300}]}, "rules[0]", "bucket_ns", "window_ns")


def test_unknown_rule_type_lists_the_known_ones() -> None:
    refused({"rules": [{"type": "NoSuchRule"}]}, "NoSuchRule", "OrderRateLimitRule", "AccountVolumeLimitRule")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"rulez": []}, "rulez"),
        ({"rules": [RATE], "trading_day": {"timezone": "UTC", "begin": "21:00"}}, "trading_day.begin"),
        ({"trading_day": {"timezone": "Mars/Olympus"}}, "trading_day.timezone"),
        ({"trading_day": {"start": "25:00"}}, "trading_day.start"),
        ({"trading_day": {"start": "21:00:30"}}, "trading_day.start"),
        ({"contract_to_product": {"T2303": 5}}, "contract_to_product.T2303"),
        ({"rules": [RATE, "OrderRateLimitRule"]}, "rules[1]"),
        ({"rules": {"type": "OrderRateLimitRule"}}, "rules"),
        ({"id_retention_days": 0}, "id_retention_days"),
        ([RATE], "config"),
    ],
)
def test_bad_top_level_values_name_the_place(data: Any, fragment: str) -> None:
    refused(data, fragment)


def test_duplicate_rule_names() -> None:
    refused({"rules": [VOLUME, {**VOLUME, "metric": "count"}]}, "rules[1].name", "rules[0]")
    refused({"rules": [{**RATE, "name": "x"}, {**VOLUME, "name": "x"}]}, "rules[1].name")
    assert len(build_config({"rules": [VOLUME, {**VOLUME, "name": "trade count", "metric": "count"}]}).rules) == 2


def test_require_account_dimension() -> None:
    build_config({"rules": [RATE, {**VOLUME, "dimensions": ["product", "account"]}]}).require_account_dimension()
    config = build_config({"rules": [RATE, {**VOLUME, "dimensions": ["product"]}]})
    with pytest.raises(ConfigError) as info:
        config.require_account_dimension()
    assert "rules[1].dimensions" in str(info.value)
    assert "account" in str(info.value)


def test_load_config_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "risk.json"
    path.write_text(json.dumps({"rules": [RATE, {**VOLUME, "daily_cap": 0}]}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: rules[1].daily_cap: must be greater than 0")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "text"),
    [("bad.json", "{"), ("bad.yaml", "rules: [\n"), ("bad.toml", "rules = ["), ("list.yaml", "- 1\n")],
)
def test_load_config_unparsable(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


def test_yaml_unquoted_start_is_not_silently_misread(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 21:00 as the integer 1260 (sexagesimal).
    path = tmp_path / "risk.yaml"
    path.write_text("trading_day: {timezone: Asia/Shanghai, start: 21:00}\n", encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert "trading_day.start" in str(exc)
    else:
        assert config.trading_day.start == time(21, 0)


def test_config_is_frozen() -> None:
    config = build_config(FULL)
    with pytest.raises(ValueError, match="frozen"):
        config.trading_day.timezone = "UTC"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        config.rules[0].params.threshold = 1  # type: ignore[attr-defined]
