"""cluster_risk: a pre-trade risk-control engine, in-process or on a Redis cluster."""

from cluster_risk.config import EngineConfig, TradingDay, build_config, load_config
from cluster_risk.engine import RiskEngine
from cluster_risk.errors import BatchError, ConfigError, EventError, RiskError
from cluster_risk.events import Action, ActionType, Direction, Order, ResetDaily, Tick, Trade
from cluster_risk.rules import (
    AccountVolumeLimitRule,
    BaseRule,
    DailyCapRule,
    OrderRateLimitRule,
    StatelessRule,
    Verdict,
    WindowRule,
    register_rule,
)

__version__ = "0.1.0"

__all__ = [
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
