"""The front half is defined once: compiled rules, reason texts and actions serve the memory
executor, the Redis executor and a worker's emit step (render.py -> lua/emit.lua)."""

from __future__ import annotations

from cluster_risk import AccountVolumeLimitRule, OrderRateLimitRule, build_config
from cluster_risk.cluster.render import rule_table
from cluster_risk.engine import RiskEngine
from cluster_risk.engines import open_engine
from cluster_risk.events import ActionType, Order, Trade
from cluster_risk.front import DAILY, STATELESS, WINDOW, CompiledRule, compile_rules, rule_action
from cluster_risk.rules.examples import MaxOrderVolumeRule
from cluster_risk.state.codes import PAUSE, RESET_REASON, RESET_RESUME, RESUME, ROLLOVER, ROLLOVER_REASON

RULES = [
    OrderRateLimitRule(threshold=2, window_ns=10_000_000, bucket_ns=1_000_000, resume_threshold=1),
    AccountVolumeLimitRule(daily_cap=3, dimensions=("account", "contract")),
    AccountVolumeLimitRule(name="trade_count", metric="count", daily_cap=1),
    MaxOrderVolumeRule(max_volume=5),
]


def test_compiled_kinds_and_limits() -> None:
    compiled = compile_rules(RULES, CompiledRule)
    assert [c.kind for c in compiled] == [WINDOW, DAILY, DAILY, STATELESS]
    assert [c.limit for c in compiled[:3]] == [2, 3, 1]
    assert compiled[0].counts_every_order and compiled[0].on_orders
    assert compiled[3].judges_orders and not compiled[3].judges_trades


def test_emit_texts_are_the_compiled_texts() -> None:
    """What emit.lua puts around a value (rule_table) is what rule_action writes."""
    table = rule_table(RULES)
    compiled = compile_rules(RULES, CompiledRule)
    assert [row[0] for row in table] == [0, 1, 2]  # stateful rules only, by config index
    for row, rule in zip(table, compiled, strict=False):
        pause = rule_action(rule, PAUSE, {"account": "A"}, 1, 7)
        assert pause.reason == f"{row[5]}7{row[6]}"
        if rule.kind == WINDOW:
            resume = rule_action(rule, RESUME, {"account": "A"}, 1, 0)
            assert resume.reason == f"{row[7]}0{row[8]}"
    assert rule_action(compiled[1], ROLLOVER, {}, 0, 0, 738000).reason == ROLLOVER_REASON + "2021-07-29"
    assert rule_action(compiled[1], RESET_RESUME, {}, 0, 0).reason == RESET_REASON


def test_the_memory_executor_writes_the_compiled_texts() -> None:
    engine = RiskEngine(RULES)
    actions = []
    for i in range(4):
        actions += engine.process_order(Order(i, "A", "C", "BID", 1.0, 1, 1_000 + i))
    actions += engine.process_trade(Trade(1, 0, 1.0, 2, 2_000))
    actions += engine.process_trade(Trade(2, 1, 1.0, 2, 3_000))
    pauses = [a for a in actions if a.type == ActionType.PAUSE_ORDER]
    assert [a.rule for a in pauses] == ["OrderRateLimitRule", "AccountVolumeLimitRule", "trade_count"]
    assert pauses[0].reason == "3 orders in 10000000 ns > threshold 2"
    assert pauses[1].reason == "daily volume 4 > cap 3"
    assert pauses[2].reason == "daily count 2 > cap 1"


def test_open_engine_without_a_store_is_in_process() -> None:
    config = build_config({"rules": [{"type": "OrderRateLimitRule", "threshold": 5}]})
    engine = open_engine(config)
    assert isinstance(engine, RiskEngine)
    assert not hasattr(engine, "remote")
