"""A seeded event stream for the fault tests: enough accounts, bursts and trades that many
scopes pause and resume, plus duplicates, fills without account, ticks, a day change and a
few malformed lines.  ``resets=False`` leaves out reset_daily (a publisher retry after a
failover may repeat an entry, which dedup absorbs for everything but a reset)."""

from __future__ import annotations

import random
from typing import Any

from tests.helpers import DAY, MS, T0

CONFIG: dict[str, Any] = {
    "contract_to_product": {"C1": "P1", "C2": "P1", "C3": "P2"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 12, "window_ns": 100 * MS, "bucket_ns": MS, "resume_threshold": 6},
        {"type": "AccountVolumeLimitRule", "daily_cap": 400, "dimensions": ["account", "product"]},
        {"type": "AccountVolumeLimitRule", "name": "trades", "metric": "count", "daily_cap": 60},
        {"type": "MaxOrderVolumeRule", "max_volume": 9},
    ],
}


def events(n: int, seed: int = 7, accounts: int = 40, resets: bool = True) -> list[Any]:
    rnd = random.Random(seed)
    names = [f"ACC{i:03d}" for i in range(accounts)]
    out: list[Any] = []
    orders: list[dict[str, Any]] = []
    t = T0
    oid = tid = 0
    for i in range(n):
        t += rnd.choice([10_000, 200_000, MS, 3 * MS])
        if i == n // 2:
            t += DAY  # a new trading day half-way
        roll = rnd.random()
        if roll < 0.70:
            oid += 1
            order = {
                "type": "order",
                "oid": oid,
                "account_id": rnd.choice(names[: 1 + (i * 7) % accounts]),  # bursts on few accounts
                "contract_id": rnd.choice(["C1", "C2", "C3"]),
                "direction": rnd.choice(["BID", "ASK"]),
                "price": 100.0 + rnd.randint(0, 8) * 0.25,
                "volume": rnd.randint(1, 10),
                "timestamp": t,
            }
            orders.append(order)
            out.append(order)
        elif roll < 0.93 and orders:
            tid += 1
            parent = rnd.choice(orders[-50:])
            trade: dict[str, Any] = {"type": "trade", "tid": tid, "oid": parent["oid"], "price": parent["price"]}
            trade |= {"volume": rnd.randint(1, 8), "timestamp": t}
            if rnd.random() < 0.3:
                trade |= {"account_id": parent["account_id"], "contract_id": parent["contract_id"]}
            out.append(trade)
        elif roll < 0.96 and out:
            out.append(dict(rnd.choice(out[-30:])))  # a redelivery
        elif roll < 0.985:
            out.append({"type": "tick", "timestamp": t + 150 * MS})
        elif roll < 0.99 and resets:
            out.append({"type": "reset_daily", "timestamp": t})
        else:
            out.append(rnd.choice([{"type": "order", "oid": -1}, {"type": "nope"}, {"type": "trade", "tid": 1}]))
    return out
