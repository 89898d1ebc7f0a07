"""A worked example of a user rule (documented in the README and tested).

A stateless check: any single order above ``max_volume`` is answered with ``REJECT_ORDER``.
It needs no state, so it runs unchanged in every shape of the engine.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cluster_risk.events import ActionType, Order
from cluster_risk.rules.base import RuleParams, Scope, StatelessRule, Verdict, register_rule

__all__ = ["MaxOrderVolumeRule"]


class MaxOrderVolumeParams(RuleParams):
    max_volume: int = Field(ge=1)


@register_rule
class MaxOrderVolumeRule(StatelessRule):
    Params: ClassVar[type[RuleParams]] = MaxOrderVolumeParams
    params: MaxOrderVolumeParams

    def evaluate_order(self, order: Order, scope: Scope) -> Verdict | None:
        limit = self.params.max_volume
        if order.volume <= limit:
            return None
        return Verdict(ActionType.REJECT_ORDER, order.volume, limit, f"order volume {order.volume} > {limit}")
