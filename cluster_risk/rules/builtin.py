"""The two built-in rules of the contract (SEMANTICS.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cluster_risk.events import Trade
from cluster_risk.rules.base import (
    DailyCapParams,
    DailyCapRule,
    RuleParams,
    WindowParams,
    WindowRule,
    register_rule,
)

__all__ = ["OrderRateLimitRule", "AccountVolumeLimitRule", "VolumeParams"]


@register_rule
class OrderRateLimitRule(WindowRule):
    """Orders per group in a sliding window of ``window_ns`` made of ``bucket_ns`` buckets."""

    Params: ClassVar[type[RuleParams]] = WindowParams


class VolumeParams(DailyCapParams):
    metric: Literal["volume", "count", "notional"] = "volume"
    contract_multiplier: dict[str, float] = Field(default_factory=dict)
    """For ``notional``: contract -> multiplier (default 1)."""


@register_rule
class AccountVolumeLimitRule(DailyCapRule):
    """Daily sum of trade volume (or trade count, or notional) per group, capped."""

    Params: ClassVar[type[RuleParams]] = VolumeParams
    params: VolumeParams

    def __init__(self, params: RuleParams | None = None, /, **options: object) -> None:
        super().__init__(params, **options)
        self.metric = self.params.metric
        self._multiplier = self.params.contract_multiplier

    def trade_amount(self, trade: Trade, contract_id: str) -> float:
        if self.metric == "volume":
            return trade.volume
        if self.metric == "count":
            return 1
        return trade.price * trade.volume * self._multiplier.get(contract_id, 1.0)
