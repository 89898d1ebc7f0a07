"""Random event streams for differential tests: the in-memory engine is the executable spec,
the Redis-backed engine must print exactly the same records (reasons included)."""

from __future__ import annotations

import copy
import random
from typing import Any

from cluster_risk import Order
from cluster_risk.rules import (
    AccountVolumeLimitRule,
    BaseRule,
    DailyCapRule,
    MaxOrderVolumeRule,
    OrderRateLimitRule,
    WindowRule,
)
from tests.helpers import DAY, MS, T0

CONTRACTS = {"C1": "P1", "C2": "P1", "C3:x": "P%3"}  # C3:x is unmapped-looking on purpose: escaping


class BidsOnlyRule(WindowRule):
    """A window rule that counts only BID orders (a counts_order override)."""

    def counts_order(self, order: Order) -> bool:
        return order.direction == "BID"


class HalfVolumeRule(DailyCapRule):
    """A daily rule fed by orders, with float amounts (an order_amount override)."""

    def order_amount(self, order: Order) -> float:
        return order.volume * 0.5


def rules(seed: int) -> list[BaseRule]:
    rnd = random.Random(seed)
    contract_dim = rnd.choice([["account"], ["account", "contract"], ["account", "product"]])
    return [
        OrderRateLimitRule(
            threshold=rnd.randint(2, 5), window_ns=10 * MS, bucket_ns=MS, resume_threshold=rnd.randint(0, 2)
        ),
        AccountVolumeLimitRule(daily_cap=rnd.randint(5, 30), dimensions=contract_dim),
        MaxOrderVolumeRule(max_volume=8),
        AccountVolumeLimitRule(name="notional", daily_cap=2_000.5, metric="notional", contract_multiplier={"C1": 0.3}),
        BidsOnlyRule(threshold=3, window_ns=4 * MS, bucket_ns=2 * MS, dimensions=["contract", "account"]),
        HalfVolumeRule(daily_cap=12, dimensions=["account", "product"]),
        AccountVolumeLimitRule(name="trade_count", daily_cap=4, metric="count"),
    ]


def stream(seed: int, n: int = 400, days: int = 3, accounts: int = 5) -> list[dict[str, Any]]:
    """Wire-format events: bursts, late and very late orders, duplicates, trades with and
    without account (some for unknown oids), ticks, resets, day changes, a few bad events."""
    rnd = random.Random(seed)
    names = [f"A{i}" for i in range(accounts)] + ["acc:with%colon"]
    t = T0
    oid = tid = 0
    orders: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    day_every = max(1, n // days)
    for i in range(n):
        t += rnd.choice([1, 50_000, 300_000, MS, 3 * MS, 20 * MS])
        if i and i % day_every == 0:
            t += DAY * rnd.choice([1, 1, 2])
        roll = rnd.random()
        late = t - rnd.choice([MS, 5 * MS, 30 * MS, DAY])
        if roll < 0.50:
            oid += 1
            event = {
                "type": "order",
                "oid": oid if rnd.random() > 0.02 else 2**64 - oid,
                "account_id": rnd.choice(names),
                "contract_id": rnd.choice(list(CONTRACTS)),
                "direction": rnd.choice(["BID", "ASK"]),
                "price": rnd.choice([99.5, 100.0, 101.25]),
                "volume": rnd.randint(1, 10),
                "timestamp": late if rnd.random() < 0.1 else t,
            }
            orders.append(event)
            out.append(event)
        elif roll < 0.78 and orders:
            tid += 1
            parent = rnd.choice(orders[-30:])
            event = {"type": "trade", "tid": tid, "oid": parent["oid"], "price": parent["price"]}
            event |= {"volume": rnd.randint(1, 6), "timestamp": late if rnd.random() < 0.1 else t}
            shape = rnd.random()
            if shape < 0.25:
                event |= {"account_id": parent["account_id"], "contract_id": parent["contract_id"]}
            elif shape < 0.30:
                event |= {"account_id": parent["account_id"]}  # contract from the index
            elif shape < 0.35:
                event["oid"] = 10**9 + tid  # an order never seen
            out.append(event)
        elif roll < 0.88 and out:
            out.append(copy.deepcopy(rnd.choice(out[-20:])))  # a redelivery (or a repeated tick)
        elif roll < 0.95:
            out.append({"type": "tick", "timestamp": t + rnd.choice([0, 5 * MS, 50 * MS])})
        elif roll < 0.97:
            out.append({"type": "reset_daily", "timestamp": t})
        else:
            out.append(rnd.choice([{"type": "order", "oid": -1}, {"type": "trade"}, {"type": "nope"}, [1]]))
    return out
