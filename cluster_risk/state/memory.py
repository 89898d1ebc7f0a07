"""In-memory state primitives: the executable specification of the Lua twins.

Transitions are small ints (cluster_risk/state/codes.py, shared with Lua) so the hot path
compares without allocating.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from itertools import islice
from typing import Any

from cluster_risk.state.codes import NO_CHANGE, PAUSED, RESUMED

__all__ = ["NO_CHANGE", "PAUSED", "RESUMED", "SlidingWindow", "DailySum", "IdRetention"]

# A daily sum saturates rather than drift (the Lua twin does the same, lua/daily_sum.lua): an
# integer sum that passes 2**53 (no longer exact as a double) becomes SATURATED_SUM, which is
# above every allowed cap (<= 2**53), so the group is paused as it would be; a float sum stays
# within +-the largest finite double (never inf or nan: every output line is valid JSON).
EXACT_SUM = 1 << 53
SATURATED_SUM = EXACT_SUM + 2  # the first double above 2**53
_FLOAT_MAX = 1.7976931348623157e308

_COMPACT_AT = 64  # drop expired timestamps in one slice once this many have piled up


class SlidingWindow:
    """One group's sliding window, exact to the contract's buckets.

    The contract counts bucket indices ``t // B`` in ``[X//B - K + 1, X//B]``.  Since every
    counted timestamp is ``<= high``, that is the same as counting raw timestamps
    ``>= (X//B - K + 1) * B``: a sorted list trimmed lazily with ``bisect`` is exact and cheaper
    than bucket arithmetic per order.  ``times[head:]`` are the live entries.
    """

    __slots__ = ("bucket_ns", "head", "high", "key", "paused", "quiet_len", "resume", "span", "threshold", "times")

    def __init__(self, key: tuple[str, ...], window_ns: int, bucket_ns: int, threshold: int, resume: int) -> None:
        self.key = key
        self.times: list[int] = []
        self.head = 0
        self.high = -1  # the group's high-water event time h_g
        self.paused = False
        self.bucket_ns = bucket_ns
        self.span = window_ns // bucket_ns - 1  # K - 1
        self.threshold = threshold
        self.resume = resume
        # While unpaused and len(times) <= quiet_len, even the untrimmed count is within the
        # threshold: an in-order hit only appends.  -1 while paused (every hit decides).
        self.quiet_len = threshold

    def hit(self, t: int) -> int:
        """Count an event at ``t`` (unless too late for the window) and re-check the pause."""
        times = self.times
        if t >= self.high:
            # The engine inlines these four lines for its first window rule.
            self.high = t
            times.append(t)
            if len(times) <= self.quiet_len:
                return NO_CHANGE
        else:
            bucket = self.bucket_ns
            if t >= (self.high // bucket - self.span) * bucket:
                insort(times, t, self.head)
            # else: too late for the window - not counted, but the pause is re-checked below
        return self.settle()

    def settle(self) -> int:
        """Trim what left the window at ``high``, then pause or resume on crossing."""
        times = self.times
        bucket = self.bucket_ns
        low = (self.high // bucket - self.span) * bucket
        head = self.head
        if head < len(times) and times[head] < low:
            head = bisect_left(times, low, head)
            if head >= _COMPACT_AT and head * 2 >= len(times):
                del times[:head]
                head = 0
            self.head = head
        n = len(times) - head
        if self.paused:
            if n <= self.resume:
                self._set_paused(False)
                return RESUMED
        elif n > self.threshold:
            self._set_paused(True)
            return PAUSED
        self.quiet_len = -1 if self.paused else head + self.threshold
        return NO_CHANGE

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.quiet_len = -1 if paused else self.head + self.threshold

    def count(self) -> int:
        """The window count at the group's own high-water time."""
        return self.count_at(self.high)

    def count_at(self, at: int) -> int:
        """The window count at ``max(at, high)`` (what a tick at ``at`` sees)."""
        at = max(at, self.high)
        bucket = self.bucket_ns
        low = (at // bucket - self.span) * bucket
        return len(self.times) - bisect_left(self.times, low, self.head)

    def try_resume(self, at: int) -> int:
        """Tick: lift the pause if the window at ``max(at, high)`` is at or below resume."""
        if self.paused and self.count_at(at) <= self.resume:
            self._set_paused(False)
            return RESUMED
        return NO_CHANGE


class DailySum:
    """One group's sum per trading day with a cap.

    ``day``/``total`` is the latest day the group has seen; ``earlier`` keeps the previous day
    (late trades count toward their own day).  Days before that are dropped at rollover.
    """

    __slots__ = ("account", "cap", "day", "earlier", "key", "paused", "total")

    def __init__(self, key: tuple[str, ...], account: str | None, cap: float) -> None:
        self.key = key
        self.account = account
        self.day = -1
        self.total: float = 0
        self.earlier: dict[int, float] = {}
        self.paused = False
        self.cap = cap

    def add(self, day: int, amount: float, current: bool) -> int:
        """Add ``amount`` to ``day``; on the group's current day, pause on crossing the cap."""
        if day == self.day:
            total = self.total + amount
            self.total = total if -_FLOAT_MAX <= total <= EXACT_SUM else saturated(total)
        elif day > self.day:
            if self.day >= 0:
                self.earlier = {self.day: self.total} if self.day == day - 1 else {}
            self.day = day
            self.total = saturated(0 + amount)
        else:
            self.earlier[day] = saturated(self.earlier.get(day, 0) + amount)
            return NO_CHANGE
        if current and not self.paused and self.total > self.cap:
            self.paused = True
            return PAUSED
        return NO_CHANGE

    def sum_on(self, day: int) -> float:
        if day == self.day:
            return self.total
        return self.earlier.get(day, 0)

    def zero(self, day: int) -> None:
        """``reset_daily``: the sum of ``day`` goes to zero."""
        if day == self.day:
            self.total = 0
        elif day in self.earlier:
            self.earlier[day] = 0


def saturated(total: float) -> float:
    """A daily sum within the bounds every backend holds (see SATURATED_SUM)."""
    if type(total) is int:
        return SATURATED_SUM if total > EXACT_SUM else total
    if -_FLOAT_MAX <= total <= _FLOAT_MAX:
        return total
    return _FLOAT_MAX if total > 0 else -_FLOAT_MAX  # inf, -inf or nan


class IdRetention:
    """Forgets ids (oid, tid) once they are more than ``days`` trading days old.

    The ids live in a dict owned by the caller (one probe on the hot path, nothing else to
    pay per event).  A dict keeps insertion order, ids are only ever added, and expiry
    removes from the front, so each latest-day generation is a contiguous run of keys: only
    the run lengths need remembering.
    """

    __slots__ = ("_generations", "_retained", "days", "ids")

    def __init__(self, ids: dict[int, Any], days: int) -> None:
        self.ids = ids
        self.days = days
        self._generations: deque[tuple[int, int]] = deque()  # (latest day, number of ids)
        self._retained = 0  # ids in closed generations still kept

    def new_day(self, previous_day: int, latest_day: int) -> int:
        """Close ``previous_day``'s generation, drop those out of retention; return how many."""
        ids = self.ids
        closed = len(ids) - self._retained
        self._generations.append((previous_day, closed))
        self._retained += closed
        dropped = 0
        while self._generations and latest_day - self._generations[0][0] > self.days:
            count = self._generations.popleft()[1]
            self._retained -= count
            for key in list(islice(ids, count)):
                del ids[key]
            dropped += count
        return dropped
