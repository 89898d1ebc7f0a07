"""User rules: the worked example (MaxOrderVolumeRule) and a DailyCapRule subclass registered
by name and used through config and engine."""

from __future__ import annotations

import uuid
from typing import ClassVar

import pytest
from pydantic import Field

from cluster_risk import (
    BatchError,
    ConfigError,
    DailyCapRule,
    Direction,
    Order,
    OrderRateLimitRule,
    RiskEngine,
    StatelessRule,
    register_rule,
)
from cluster_risk.rules import DailyCapParams, MaxOrderVolumeRule, RuleParams, rule_types
from tests.helpers import DAY, T0, act, make_engine, order, trade, views

MAX_VOLUME = {"type": "MaxOrderVolumeRule", "max_volume": 10}


@register_rule
class DailyOrderCountRule(DailyCapRule):
    """Counts the orders an account sends per trading day."""

    def order_amount(self, order: Order) -> float:
        return 1


class WeightedParams(DailyCapParams):
    weight: int = Field(default=1, ge=1)


@register_rule
class WeightedOrderRule(DailyCapRule):
    Params: ClassVar[type[RuleParams]] = WeightedParams
    params: WeightedParams

    def order_amount(self, order: Order) -> float:
        return self.params.weight * order.volume


def test_max_order_volume_rejects_single_orders() -> None:
    engine = make_engine(MAX_VOLUME)
    assert engine.process_order(order(1, T0, volume=10)) == []
    out = engine.process_order(order(2, T0 + 1, volume=11))
    assert views(out) == [act("REJECT", "MaxOrderVolumeRule", {"account": "A"}, T0 + 1, 11, 10)]
    assert engine.paused_scopes() == []  # stateless: nothing to lift later
    assert engine.process_trade(trade(1, T0 + 2, 500)) == []  # orders only


def test_max_order_volume_scope_follows_its_dimensions() -> None:
    engine = make_engine({**MAX_VOLUME, "dimensions": ["account", "product"]}, contract_to_product={"C1": "P"})
    (action,) = engine.process_order(order(1, T0, volume=11))
    assert action.scope == {"account": "A", "product": "P"}


@pytest.mark.parametrize("rate_first", [True, False])
def test_actions_for_one_order_come_in_rule_order(rate_first: bool) -> None:
    rate = {"type": "OrderRateLimitRule", "threshold": 1}
    rules = [rate, MAX_VOLUME] if rate_first else [MAX_VOLUME, rate]
    engine = make_engine(*rules)
    engine.process_order(order(1, T0))
    kinds = [a.type.value for a in engine.process_order(order(2, T0 + 1, volume=50))]
    assert kinds == (["PAUSE_ORDER", "REJECT_ORDER"] if rate_first else ["REJECT_ORDER", "PAUSE_ORDER"])


def test_max_order_volume_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]\.max_volume"):
        make_engine({"type": "MaxOrderVolumeRule"})
    with pytest.raises(ConfigError, match=r"rules\[0\]\.max_volumes: unknown option"):
        make_engine({**MAX_VOLUME, "max_volumes": 3})
    assert MaxOrderVolumeRule(max_volume=3).params.max_volume == 3


def test_user_daily_cap_rule_through_config_and_engine() -> None:
    engine = make_engine({"type": "DailyOrderCountRule", "daily_cap": 3})
    out = [engine.process_order(order(i, T0 + i)) for i in range(1, 5)]
    assert out[:3] == [[], [], []]
    assert views(out[3]) == [act("PAUSE", "DailyOrderCountRule", {"account": "A"}, T0 + 4, 4, 3)]
    assert engine.process_trade(trade(1, T0 + 5, 100)) == []  # trades are not counted
    assert engine.daily_sum("DailyOrderCountRule", {"account": "A"}) == 4
    # Next day: rolled over by the account's own order, which then counts 1 on the new day.
    assert views(engine.process_order(order(9, T0 + DAY + 7))) == [
        act("RESUME", "DailyOrderCountRule", {"account": "A"}, T0 + DAY, 0, 3)
    ]
    assert engine.daily_sum("DailyOrderCountRule", {"account": "A"}) == 1


def test_user_daily_cap_rule_is_lifted_by_reset() -> None:
    engine = make_engine({"type": "DailyOrderCountRule", "daily_cap": 1, "dimensions": ["account", "contract"]})
    engine.process_order(order(1, T0))
    assert len(engine.process_order(order(2, T0 + 1))) == 1
    assert views(engine.reset_daily(T0 + 2)) == [
        act("RESUME", "DailyOrderCountRule", {"account": "A", "contract": "C1"}, T0 + 2, 0, 1)
    ]


def test_user_rule_with_its_own_option() -> None:
    engine = make_engine({"type": "WeightedOrderRule", "daily_cap": 10, "weight": 3})
    assert engine.process_order(order(1, T0, volume=3)) == []  # 9
    assert views(engine.process_order(order(2, T0 + 1, volume=1))) == [
        act("PAUSE", "WeightedOrderRule", {"account": "A"}, T0 + 1, 12, 10)
    ]
    with pytest.raises(ConfigError, match=r"rules\[0\]\.weight"):
        make_engine({"type": "WeightedOrderRule", "daily_cap": 10, "weight": 0})


def test_registry() -> None:
    types = rule_types()
    assert types["DailyOrderCountRule"] is DailyOrderCountRule
    assert {"OrderRateLimitRule", "AccountVolumeLimitRule", "MaxOrderVolumeRule"} <= types.keys()
    assert register_rule(DailyOrderCountRule) is DailyOrderCountRule  # registering again is harmless
    types.clear()  # a copy: the registry itself is untouched
    assert "DailyOrderCountRule" in rule_types()


def test_two_classes_under_one_name_are_refused() -> None:
    name = f"ClashingUserRule{uuid.uuid4().hex}"  # the registry is global: a fresh name per run

    @register_rule
    class Clash(StatelessRule):
        type_name = name

    class Other(StatelessRule):
        type_name = name

    with pytest.raises(ValueError, match=name):
        register_rule(Other)
    assert rule_types()[name] is Clash


def test_a_batch_applies_every_valid_event_and_reports_the_rejected_ones() -> None:
    engine = RiskEngine([OrderRateLimitRule(threshold=1)])
    good = [Order(i, "A1", "T2303", Direction.BID, 1.0, 1, 1_000 + i) for i in (1, 2)]
    bad = Order(3, "A1", "T2303", Direction.BID, 1.0, 0, 1_003)
    outcomes = engine.apply_batch([good[0], bad, good[1]])
    assert outcomes[0] == [] and isinstance(outcomes[1], Exception) and len(outcomes[2]) == 1
    engine = RiskEngine([OrderRateLimitRule(threshold=1)])
    try:
        engine.process_batch([good[0], bad, good[1]])
    except BatchError as exc:
        assert [(i, e.field) for i, e in exc.errors] == [(1, "volume")]
        assert [a.type.value for a in exc.actions] == ["PAUSE_ORDER"]  # the third order still counted
    else:
        raise AssertionError("a batch with a rejected event raises BatchError")
