"""The seed's quick start, as written, and the behaviour the seed promises."""

from __future__ import annotations

import time

from cluster_risk import Direction, Order, RiskEngine, Trade
from cluster_risk.config import build_config
from tests.helpers import DAY, MS, T0, S


def quick_start_engine(threshold: int = 50) -> RiskEngine:
    cfg = build_config(
        {
            "contract_to_product": {"T2303": "T10Y", "T2306": "T10Y"},
            "rules": [
                {"type": "OrderRateLimitRule", "threshold": threshold, "window_ns": 1_000_000_000},
                {"type": "AccountVolumeLimitRule", "daily_cap": 1000, "dimensions": ["account", "product"]},
            ],
        }
    )
    return RiskEngine(rules=cfg.rules, contract_to_product=cfg.contract_to_product)


def seed_order(oid: int, t: int, contract: str = "T2303") -> Order:
    return Order(
        oid=oid,
        account_id="ACC001",
        contract_id=contract,
        direction=Direction.BID,
        price=101.5,
        volume=5,
        timestamp=t,
    )


def seed_trade(tid: int, oid: int, t: int, volume: int = 250) -> Trade:
    return Trade(tid=tid, oid=oid, price=101.5, volume=volume, timestamp=t)


def test_quick_start_runs_as_written() -> None:
    engine = quick_start_engine()
    order = Order(
        oid=1,
        account_id="ACC001",
        contract_id="T2303",
        direction=Direction.BID,
        price=101.5,
        volume=3,
        timestamp=1_795_000_000_000_000_000,
    )
    assert engine.process_order(order) == []
    assert engine.process_trade(Trade(tid=1, oid=1, price=101.5, volume=3, timestamp=1_795_000_000_100_000_000)) == []
    assert engine.tick() == []  # the wall clock: nothing is paused
    assert engine.reset_daily() == []
    assert engine.paused_scopes() == []


def test_seven_orders_ten_ms_apart_pause_once_on_the_sixth() -> None:
    engine = quick_start_engine(threshold=5)
    out = [engine.process_order(seed_order(i, T0 + i * 10 * MS)) for i in range(7)]
    assert [len(a) for a in out] == [0, 0, 0, 0, 0, 1, 0]
    (pause,) = out[5]
    assert (pause.type.value, pause.rule, pause.scope) == ("PAUSE_ORDER", "OrderRateLimitRule", {"account": "ACC001"})
    assert (pause.value, pause.limit, pause.timestamp) == (6, 5, T0 + 50 * MS)


def test_trades_of_250_pause_when_the_day_first_exceeds_1000() -> None:
    engine = quick_start_engine()
    contracts = ["T2303", "T2306"]  # one product, T10Y
    for oid in range(6):
        engine.process_order(seed_order(oid, T0 + oid * 100 * MS, contracts[oid % 2]))
    out = [engine.process_trade(seed_trade(tid, tid, T0 + S + tid)) for tid in range(6)]
    assert [len(a) for a in out] == [0, 0, 0, 0, 1, 0]
    (pause,) = out[4]
    assert (pause.type.value, pause.rule) == ("PAUSE_ORDER", "AccountVolumeLimitRule")
    assert pause.scope == {"account": "ACC001", "product": "T10Y"}
    assert (pause.value, pause.limit, pause.timestamp) == (1250, 1000, T0 + S + 4)


def test_wall_clock_tick_lifts_old_pauses() -> None:
    engine = quick_start_engine(threshold=5)
    for i in range(6):
        engine.process_order(seed_order(i, T0 + i * 10 * MS))
    engine.process_trade(seed_trade(1, 1, T0 + DAY // 2, volume=1001))
    assert len(engine.paused_scopes()) == 2
    before = time.time_ns()
    out = engine.tick()
    # Now is long after the 2023 events: a new trading day (rollover first), an empty window.
    assert [(a.type.value, a.rule) for a in out] == [
        ("RESUME_ORDER", "AccountVolumeLimitRule"),
        ("RESUME_ORDER", "OrderRateLimitRule"),
    ]
    rollover, window = out
    assert rollover.timestamp % DAY == 0  # start of a UTC trading day
    assert before - DAY < rollover.timestamp <= before + DAY
    assert window.timestamp >= before and window.value == 0
    assert engine.paused_scopes() == []
