"""The public API is a short, curated list (httpx-style): changing it is a deliberate act."""

from __future__ import annotations

from importlib.metadata import version

import cluster_risk

EXPORTED = [
    "RiskEngine",
    "Order",
    "Trade",
    "Tick",
    "ResetDaily",
    "Direction",
    "Action",
    "ActionType",
    "BaseRule",
    "StatelessRule",
    "WindowRule",
    "DailyCapRule",
    "Verdict",
    "register_rule",
    "OrderRateLimitRule",
    "AccountVolumeLimitRule",
    "EngineConfig",
    "TradingDay",
    "build_config",
    "load_config",
    "RiskError",
    "ConfigError",
    "EventError",
    "BatchError",
]


def test_all_is_pinned() -> None:
    assert sorted(cluster_risk.__all__) == sorted(EXPORTED)
    assert len(set(cluster_risk.__all__)) == len(cluster_risk.__all__)


def test_every_exported_member_exists_and_is_public() -> None:
    for name in cluster_risk.__all__:
        member = getattr(cluster_risk, name)
        assert not name.startswith("_")
        assert getattr(member, "__module__", "").startswith("cluster_risk."), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cluster_risk import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPORTED)


def test_errors_share_one_root() -> None:
    assert issubclass(cluster_risk.ConfigError, cluster_risk.RiskError)
    assert issubclass(cluster_risk.EventError, cluster_risk.RiskError)
    assert issubclass(cluster_risk.ConfigError, ValueError)
    assert issubclass(cluster_risk.EventError, ValueError)


def test_version_matches_the_installed_distribution() -> None:
    assert cluster_risk.__version__ == version("cluster-risk")
