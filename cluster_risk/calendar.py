"""Trading-day calendar: which trading day an instant belongs to, and where that day starts.

The trading day of an instant is the calendar date of ``local_time + (24h - start) mod 24h``
(start 21:00: 21:30 on the 26th belongs to the 27th).  Days are proleptic ordinals
(``date.toordinal()``).  Callers cache the returned ``[lo, hi)`` instant range and only call
again when a timestamp leaves it: zoneinfo per event would cost three times the rest of the
engine.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = ["TradingCalendar", "calendar_for"]

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class TradingCalendar:
    """``day_range(t_ns) -> (day, lo_ns, hi_ns)`` with ``lo <= t < hi`` and ``day(t) == day``."""

    __slots__ = ("_is_utc", "_last", "_shift", "_shift_ns", "_tz", "start", "timezone")

    def __init__(self, timezone_name: str = "UTC", start: time = time(0, 0)) -> None:
        self.timezone = timezone_name
        self.start = start
        self._tz = ZoneInfo(timezone_name)
        start_delta = timedelta(hours=start.hour, minutes=start.minute)
        self._shift = (timedelta(days=1) - start_delta) % timedelta(days=1)
        self._shift_ns = self._shift // timedelta(microseconds=1) * 1000
        # UTC (the common case) is pure integer arithmetic.
        self._is_utc = timezone_name in ("UTC", "Etc/UTC")
        self._last = (0, 0, 0)

    def day_range(self, t_ns: int) -> tuple[int, int, int]:
        last = self._last
        if last[1] <= t_ns < last[2]:
            return last
        if self._is_utc:
            days = (t_ns + self._shift_ns) // _DAY_NS
            lo = days * _DAY_NS - self._shift_ns
            result = (days + _EPOCH_ORDINAL, lo, lo + _DAY_NS)
        else:
            local = datetime.fromtimestamp(t_ns // _NS, self._tz).replace(tzinfo=None)
            day = (local + self._shift).date().toordinal()
            result = (day, self.start_of(day), self.start_of(day + 1))
        self._last = result
        return result

    def day_of(self, t_ns: int) -> int:
        return self.day_range(t_ns)[0]

    def start_of(self, day: int) -> int:
        """The first instant (ns) of trading day ``day``."""
        naive = datetime.combine(date.fromordinal(day), time(0, 0)) - self._shift
        aware = naive.replace(tzinfo=self._tz)
        return int(aware.astimezone(UTC).timestamp()) * _NS

    def __repr__(self) -> str:
        return f"TradingCalendar({self.timezone!r}, start={self.start.strftime('%H:%M')})"


class _HasCalendar(Protocol):
    def calendar(self) -> TradingCalendar: ...


def calendar_for(trading_day: _HasCalendar | TradingCalendar | None) -> TradingCalendar:
    """The calendar of a config's ``trading_day`` (default: UTC, days start at 00:00)."""
    if trading_day is None:
        return TradingCalendar()
    if isinstance(trading_day, TradingCalendar):
        return trading_day
    return trading_day.calendar()
