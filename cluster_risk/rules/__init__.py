"""Rules: the extension API (:mod:`.base`), the built-in rules and a worked example."""

from cluster_risk.rules.base import (
    BaseRule,
    DailyCapParams,
    DailyCapRule,
    RuleParams,
    Scope,
    StatelessRule,
    Verdict,
    WindowParams,
    WindowRule,
    register_rule,
    rule_types,
)
from cluster_risk.rules.builtin import AccountVolumeLimitRule, OrderRateLimitRule
from cluster_risk.rules.examples import MaxOrderVolumeRule

__all__ = [
    "BaseRule",
    "StatelessRule",
    "WindowRule",
    "DailyCapRule",
    "RuleParams",
    "WindowParams",
    "DailyCapParams",
    "Scope",
    "Verdict",
    "register_rule",
    "rule_types",
    "OrderRateLimitRule",
    "AccountVolumeLimitRule",
    "MaxOrderVolumeRule",
]
