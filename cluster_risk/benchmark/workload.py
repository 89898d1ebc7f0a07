"""The seed's workload, shared by every benchmark: 300k orders over 1,000 accounts plus one trade
per four orders, and the seed's two rules (rate limit 500/s per account, daily volume cap 10,000
per account)."""

from __future__ import annotations

from typing import Any

from cluster_risk.events import Direction, Order, Trade

__all__ = ["SEED_CONFIG", "make_workload"]

SEED_CONFIG: dict[str, Any] = {
    "contract_to_product": {"T2303": "T10Y", "T2306": "T10Y", "TF2303": "TF5Y", "TF2306": "TF5Y"},
    "rules": [
        {"type": "OrderRateLimitRule", "threshold": 500, "window_ns": 1_000_000_000},
        {"type": "AccountVolumeLimitRule", "daily_cap": 10_000, "dimensions": ["account"]},
    ],
}
_CONTRACTS = ("T2303", "T2306", "TF2303", "TF2306", "IF2312")
_START_NS = 1_795_000_000_000_000_000


def make_workload(orders: int, trades: int, accounts: int) -> tuple[list[Order], list[Order | Trade]]:
    """Orders only, and orders with trades interleaved (each trade after its order)."""
    names = [f"ACC{i:04d}" for i in range(accounts)]
    order_list = [
        Order(
            oid=i + 1,
            account_id=names[i % accounts],
            contract_id=_CONTRACTS[(i // accounts) % len(_CONTRACTS)],
            direction=Direction.BID if i % 2 else Direction.ASK,
            price=100.0 + (i % 7) * 0.5,
            volume=1 + i % 5,
            timestamp=_START_NS + i * 1_000,
        )
        for i in range(orders)
    ]
    every = max(1, orders // trades) if trades else 0
    mixed: list[Order | Trade] = []
    tid = 0
    for i, order in enumerate(order_list):
        mixed.append(order)
        if every and i % every == every - 1 and tid < trades:
            tid += 1
            mixed.append(Trade(tid, order.oid, order.price, 1, order.timestamp + 500))
    return order_list, mixed
