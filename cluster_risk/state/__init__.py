"""State primitives: the only places where risk state changes.

Each primitive has one in-memory implementation (:mod:`.memory`, the executable spec and the
embedded default) and, for the Redis store, one Lua implementation of the same semantics.

===========================  ============================================================
primitive                    does, atomically
===========================  ============================================================
sliding window + threshold   add an event at its time, count the window, set/clear the
                             pause flag on crossing; return the transition
daily sum + cap              add to the trading day's sum, set the pause flag on crossing
seen-set / order index       first-seen test for oid / tid, oid -> (account, contract),
                             kept for ``id_retention_days`` trading days (default 7)
tick / rollover / reset      lift pauses whose condition ended
===========================  ============================================================
"""

from cluster_risk.state.memory import NO_CHANGE, PAUSED, RESUMED, DailySum, IdRetention, SlidingWindow

__all__ = ["NO_CHANGE", "PAUSED", "RESUMED", "SlidingWindow", "DailySum", "IdRetention"]
