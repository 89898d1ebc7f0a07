"""apply.lua as a Redis Function: the libraries it includes are defined once per server.

An EVALSHA runs the whole script on every call, so every call re-creates the ~90 closures
and module tables of the libraries it includes (keys, cache, window, ...) before it does any
work: for a one-event call that is about a quarter of the call's instructions, and it still
shows in batches of 20 (the sizes a cluster worker sends at moderate rates).  A Redis Function
library runs its top level once, at ``FUNCTION LOAD``; each FCALL
then runs only the script's body.

The library is generated from the same source as the EVALSHA script (one code path, one
set of tests): the libraries' text first, then the script's body wrapped in a function of
``(KEYS, ARGV)``, registered under a name that carries the source's SHA-1, so that workers of
two versions, during a rolling upgrade, each call their own.  Old versions stay loaded until
someone runs ``FUNCTION DELETE`` (``FUNCTION LIST LIBRARYNAME "cluster_risk_*"`` lists them).

Where a server cannot take the library - Redis 6.2, fakeredis, an ACL without
``function|load`` - the call falls back to EVALSHA of the same script, once per process.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

__all__ = ["LuaOperation", "is_missing"]

log = logging.getLogger(__name__)

_BODY = "--@body"  # the line of a script where its body starts, after its libraries
_UNSUPPORTED = ("unknown command", "unknown subcommand", "noperm", "no permissions")


def is_missing(reply: Any) -> bool:
    """A reply saying the server lacks the script or function, so the call ran nothing."""
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and "function not found" in str(reply).lower()
    )


class LuaOperation:
    """One atomic operation (a ``lua/`` script with a ``--@body`` line), run by FCALL where the
    server has Functions, else by EVALSHA; :meth:`command` gives the command to send."""

    def __init__(self, name: str, source: str, *, functions: bool = True) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.function = f"cluster_risk_{name.removesuffix('.lua')}_{self.sha[:16]}"
        self.library = _library(self.function, source) if functions else ""
        self.functions = functions

    def command(self, *args: Any) -> tuple[Any, ...]:
        """``args`` = numkeys, keys..., argv...: the FCALL or EVALSHA command."""
        if self.functions:
            return ("FCALL", self.function, *args)
        return ("EVALSHA", self.sha, *args)

    def load(self, conn: Any) -> None:
        """Load on the server behind ``conn`` (a node, on a cluster; replicas get it by
        replication).  Falls back to EVALSHA for good when the server refuses Functions."""
        if self.functions:
            try:
                conn.execute_command("FUNCTION", "LOAD", "REPLACE", self.library)
                return
            except ResponseError as exc:
                if not any(word in str(exc).lower() for word in _UNSUPPORTED):
                    raise
                log.warning("Redis Functions unavailable (%s): apply.lua runs by EVALSHA", exc)
                self.functions = False
        conn.script_load(self.source)


def _library(function: str, source: str) -> str:
    lines = source.splitlines(keepends=True)
    body = next((i for i, line in enumerate(lines) if line.startswith(_BODY)), None)
    if body is None:
        raise ValueError(f"{function}: the script has no {_BODY} line")
    return "".join(
        [
            f"#!lua name={function}\n",
            "local KEYS, ARGV -- set by each call (the libraries below read them as upvalues)\n",
            *lines[1:body],
            "local function main(keys_, argv_)\nKEYS, ARGV = keys_, argv_\n",
            *lines[body + 1 :],
            f"\nend\nredis.register_function('{function}', main)\n",
        ]
    )
