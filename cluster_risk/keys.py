"""The key layout, in one place: key names, the scope encoding, ``shard_of`` and how ids travel.

``lua/keys.lua`` builds the same shard keys in Lua (tests/unit/test_keys.py checks that they
agree); :class:`Keys` names every key of a deployment, :class:`cluster_risk.state.redis.RedisStore`
and the cluster use it.

**Keys** (readable with ``redis-cli``; ``P`` = prefix, default ``risk``; ``N`` = shard =
``crc32(account_id) % num_shards``; the hash tag ``{sN}`` puts a shard in one cluster slot)::

    P:{sN}:meta                        hwm (last applied batch), clock, latest, gens, maxo, maxt, touched,
                                       blocks ("-1 <lasto> <lastt> ": lua/seen_ids.lua);
                                       rseq<k>, result<k>, digest<k>: the last 4 batches (k = seq % 4), for retries
    P:{sN}:acct                        account -> current trading day (ordinal; "p": daily pauses)
    P:{sN}:paused:<rule>               scope -> "since=<ns> value=<v> limit=<l> ... account=<id>"
    P:{sN}:win:<rule>                  scope -> sliding window: recent buckets, then its count (lua/window.lua)
    P:{sN}:winc:<rule>                 "<n>:<scope>" -> a chunk of a window's older buckets
    P:{sN}:day:<YYYY-MM-DD>:<rule>     scope -> that trading day's sum (lua/daily_sum.lua)
    P:{sN}:ids:<YYYY-MM-DD>:<block>    o<oid> -> <len(account)>:<account><contract> (the order index, below),
                                       t<tid> -> 1 (seen ids), 1,000 ids a block: o12 holds o12000..o12999
                                       (lua/seen_ids.lua)
    P:{sN}:ids:<YYYY-MM-DD>:blocks     set: the day's blocks

A scope is the rule's dimension values joined by ``:`` (``%``, ``:`` and control characters
percent-encoded, so the split is exact), e.g. ``HGETALL 'risk:{s3}:paused:OrderRateLimitRule'``
answers "who is paused by the rate rule on shard 3, since when, why".

Deployment-wide keys: ``P:deployment`` (the deployment record), ``P:workers`` (live workers),
``P:actions`` (the pub/sub channel of action hints), ``P:state_lost``; per shard also
``P:{sN}:in`` (input stream), ``P:{sN}:actions``, ``P:{sN}:dead``, ``P:{sN}:lease``,
``P:{sN}:audit``, ``P:{sN}:pub:<publisher>``, ``P:{sN}:paused:manual`` (kill switches); order
routes ``P:{rM}:route:<day>`` (``M = crc32(str(oid)) % S``).

An id (account, contract) is any non-empty JSON string, so it may hold control characters,
braces, ``:``, U+001F or a lone surrogate (``"\\ud800"`` is valid JSON).  Every place that
sends an id to Redis or reads one back goes through this module, so all shapes agree:

- **Bytes.**  An id travels as UTF-8 with ``surrogatepass``: a lone surrogate becomes its
  3-byte form (``"\\ud800"`` -> ``ED A0 80``) and comes back as the same code point.  Every
  other string is plain UTF-8.  (:func:`to_bytes`, :func:`to_text`; msgpack blobs use the same
  error handler, :data:`UNICODE_ERRORS`.)
- **Shard.**  ``shard_of(account, S) = crc32(to_bytes(account)) mod S`` (:func:`shard_of`),
  the only definition: the store, the publisher, the worker and the ops commands call it.
- **Order index.**  The value of ``o<oid>`` is ``"<n>:<account><contract>"``, ``n`` the
  account's length in code points (:func:`index_value`, :func:`index_pair`): no separator an
  id could contain.  Lua stores and returns it as opaque bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = [
    "MANUAL",
    "UNICODE_ERRORS",
    "Keys",
    "index_pair",
    "index_value",
    "scope_key",
    "scope_values",
    "shard_base",
    "shard_of",
    "to_bytes",
    "to_text",
]

UNICODE_ERRORS = "surrogatepass"
MANUAL = "manual"  # the rule name of manual pauses; no configured rule may take it in the cluster


def to_bytes(value: str) -> bytes:
    """An id (or any text holding ids) as Redis receives it: UTF-8, lone surrogates passed."""
    return value.encode("utf-8", UNICODE_ERRORS)


def to_text(value: object) -> str:
    """A Redis reply (bytes) as text, the inverse of :func:`to_bytes`; bytes that are not
    even that (written by something else) come back with U+FFFD, never an exception."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8", UNICODE_ERRORS)
        except UnicodeDecodeError:
            return value.decode("utf-8", "replace")
    return str(value)


def shard_of(account_id: str, shards: int) -> int:
    """The shard of an account: ``crc32(utf-8 surrogatepass bytes) mod shards``."""
    return zlib.crc32(account_id.encode("utf-8", UNICODE_ERRORS)) % shards


def index_value(account_id: str, contract_id: str) -> str:
    """The order index's value for an order of (account, contract): ``"<len>:<account><contract>"``."""
    return f"{len(account_id)}:{account_id}{contract_id}"


def index_pair(value: str) -> tuple[str, str]:
    """(account, contract) from an order-index value (:func:`index_value`).  A value that is
    not one was not written by this package: :class:`ValueError`, never a guess."""
    head, sep, rest = value.partition(":")
    if sep and head.isascii() and head.isdigit() and head == str(int(head)):
        n = int(head)
        if 0 < n < len(rest):  # both ids are non-empty
            return rest[:n], rest[n:]
    raise ValueError(f"not an order-index value: {value[:80]!r}")


_ESCAPE = {c: f"%{c:02X}" for c in [*range(32), 127, ord("%"), ord(":")]}


def scope_key(values: Iterable[str]) -> str:
    """The scope part of a key or field: values joined by ``:``, each percent-escaped."""
    return ":".join(v.translate(_ESCAPE) for v in values)


def scope_values(key: str) -> tuple[str, ...]:
    """The values of a scope key (:func:`scope_key`), exactly."""
    return tuple(unquote(part) for part in key.split(":"))


def shard_base(prefix: str, shard: int) -> str:
    """What every key of the shard starts with: ``P:{sN}:`` (the hash tag: one cluster slot)."""
    return f"{prefix}:{{s{shard}}}:"


class Keys:
    """Key names of one deployment (prefix) and shard count."""

    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards
        self.deployment = f"{prefix}:deployment"
        self.workers = f"{prefix}:workers"
        self.channel = f"{prefix}:actions"
        self.state_lost = f"{prefix}:state_lost"

    def shard_of(self, account_id: str) -> int:
        """:func:`shard_of` with this deployment's shard count."""
        return shard_of(account_id, self.shards)

    def route_shard(self, oid: int) -> int:
        return zlib.crc32(str(oid).encode()) % self.shards

    def base(self, shard: int) -> str:
        return shard_base(self.prefix, shard)

    def meta(self, shard: int) -> str:
        return self.base(shard) + "meta"

    # The rule state (written by the scripts: lua/keys.lua builds the same names)

    def acct(self, shard: int) -> str:
        return self.base(shard) + "acct"

    def window(self, shard: int, rule_key: str) -> str:
        return self.base(shard) + "win:" + rule_key

    def window_chunks(self, shard: int, rule_key: str) -> str:
        return self.base(shard) + "winc:" + rule_key

    def day(self, shard: int, iso_day: str, rule_key: str) -> str:
        return self.base(shard) + "day:" + iso_day + ":" + rule_key

    def pauses(self, shard: int, rule_key: str) -> str:
        """Current pauses of a rule (``rule_key``: the rule's name as a scope key)."""
        return self.base(shard) + "paused:" + rule_key

    def ids_block(self, shard: int, iso_day: str, block: str) -> str:
        return self.base(shard) + "ids:" + iso_day + ":" + block

    def ids_blocks(self, shard: int, iso_day: str) -> str:
        return self.base(shard) + "ids:" + iso_day + ":blocks"

    # The cluster's streams and records

    def input(self, shard: int) -> str:
        return self.base(shard) + "in"

    def lease(self, shard: int) -> str:
        return self.base(shard) + "lease"

    def actions(self, shard: int) -> str:
        return self.base(shard) + "actions"

    def dead(self, shard: int) -> str:
        return self.base(shard) + "dead"

    def paused(self, shard: int, rule_name: str) -> str:
        return self.pauses(shard, scope_key([rule_name]))

    def manual(self, shard: int) -> str:
        """Manual pauses (kill switches) of the shard's accounts (``lua/manual.lua``)."""
        return self.base(shard) + "paused:" + MANUAL

    def audit(self, shard: int) -> str:
        return self.base(shard) + "audit"

    def publisher(self, shard: int, publisher_id: str) -> str:
        """A publisher's last sequence number on the shard (``lua/publish.lua``)."""
        return self.base(shard) + "pub:" + publisher_id

    def route(self, oid: int, day: int) -> str:
        return f"{self.prefix}:{{r{self.route_shard(oid)}}}:route:{day}"
