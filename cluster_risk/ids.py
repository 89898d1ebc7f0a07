"""Ids on their way to Redis and back: one shard function, one byte encoding, one order-index value.

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

__all__ = ["UNICODE_ERRORS", "index_pair", "index_value", "shard_of", "to_bytes", "to_text"]

UNICODE_ERRORS = "surrogatepass"


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
