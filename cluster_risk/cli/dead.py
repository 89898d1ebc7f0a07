"""``cluster-risk dead``: the dead letters of every shard (entries a worker could not apply:
malformed, ``unknown_order``, ``wrong_shard``, ...), oldest first, as readable lines or JSON
Lines; ``--follow`` keeps printing new ones (Ctrl-C ends it quietly).

A dead letter (``P:{sN}:dead``, written by ``lua/emit.lua`` with the batch) holds the input
entry's id and line index, the error code, field and reason, the first KiB of the raw entry
(``event``) and the raw entry's length in bytes (``length``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from cluster_risk.cli.common import add_common, connect, fail, guarded, when
from cluster_risk.cluster.shards import Client, Deployment, Keys, text

__all__ = ["dead_letters", "register_dead_command"]

_SHOWN = 160  # characters of the excerpt a readable line shows


def dead_letters(client: Client, keys: Keys, after: list[str]) -> list[dict[str, Any]]:
    """Every shard's dead letters after ``after[shard]`` ("-": from the start), oldest first
    (by entry id); ``after`` moves on to the last one read."""
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.xrange(keys.dead(shard), min=after[shard] if after[shard] == "-" else f"({after[shard]}")
    out: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for shard, entries in enumerate(pipe.execute()):
        for entry_id, fields in entries:
            eid = text(entry_id)
            ms, seq = eid.split("-")
            out.append(((int(ms), int(seq)), _record(shard, eid, fields)))
            after[shard] = eid
    out.sort(key=lambda pair: pair[0])
    return [record for _, record in out]


def _record(shard: int, eid: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    fields = {text(k): v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for k, v in raw.items()}
    event = fields.get("event", "")
    index = fields.get("index", "")
    length = fields.get("length", "")
    return {
        "shard": shard,
        "id": eid,
        "entry": fields.get("entry", ""),
        "index": int(index) if index.isdigit() else None,
        "error": fields.get("error", ""),
        "field": fields.get("field", ""),
        "reason": fields.get("reason", ""),
        "length": int(length) if length.isdigit() else len(event.encode()),
        "event": event,
    }


def _line(record: Mapping[str, Any]) -> str:
    """One readable line (control characters escaped, the excerpt shortened)."""
    ms = int(record["id"].split("-")[0])
    event = _escaped(record["event"])
    if len(event) > _SHOWN:
        event = event[:_SHOWN] + "..."
    where = f"line {record['index']}" if record["index"] is not None else "no line index"
    what = record["error"] + (f" {record['field']}" if record["field"] else "")
    return (
        f"{when(ms * 1_000_000)[:23]} UTC  shard {record['shard']}  entry {record['entry']} ({where})  "
        f"{what}: {_escaped(record['reason'])}  [{record['length']} bytes] {event}"
    )


def _escaped(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _dead(args: argparse.Namespace) -> int:
    client = connect(args.redis_url)
    shards = Deployment(client, args.prefix).stored_shards()
    if shards is None:
        return 0 if not args.follow else fail(f"no deployment under prefix {args.prefix!r} yet")
    keys = Keys(args.prefix, shards)
    after = ["-"] * shards
    try:
        while True:
            for record in dead_letters(client, keys, after):
                sys.stdout.write((json.dumps(record, ensure_ascii=False) if args.json else _line(record)) + "\n")
            sys.stdout.flush()
            if not args.follow:
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C on --follow: the way to stop it, not an error
        return 130


def register_dead_command(commands: Any) -> None:
    dead = commands.add_parser("dead", help="every shard's dead letters (entries the workers rejected), oldest first")
    add_common(dead)
    dead.add_argument(
        "--follow", action="store_true", help="keep printing new dead letters until Ctrl-C (default: print and exit)"
    )
    dead.add_argument(
        "--json", action="store_true", help="JSON Lines, one dead letter per line (default: readable lines)"
    )
    dead.set_defaults(handler=guarded(_dead))
