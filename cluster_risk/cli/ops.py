"""The operator's subcommands of ``cluster-risk`` (registered by :func:`register_ops_commands`
from :mod:`cluster_risk.cli.app`): inspect, pause, resume, audit, reset-daily, recover (:mod:`cluster_risk.cluster.ops`
does the work).  A table for people, ``--json`` for scripts.

Exit codes: 0 done; 1 refused because of the state, nothing changed (``pause`` of a scope
already paused by hand, ``resume`` of one that is not, ``recover`` of a shard not lost);
2 unusable arguments, config or Redis (one line on stderr), as the other commands, and
``pause`` of an account the shard has no state of (never seen, or idle past the id
retention: likely a typo) unless ``--force`` (a pre-emptive kill switch is legitimate:
then a warning, and exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from cluster_risk.calendar import calendar_for
from cluster_risk.cli.common import add_common, connect, fail, guarded, when
from cluster_risk.cluster.ops import Ops, operator, scope_text
from cluster_risk.cluster.shards import Deployment
from cluster_risk.config import load_config

__all__ = ["register_ops_commands"]

REFUSED = 1


def _ops(args: argparse.Namespace) -> Any:
    return Ops(connect(args.redis_url), args.prefix)


def _config(args: argparse.Namespace) -> Any:
    if not getattr(args, "config", None):
        return None

    config = load_config(args.config)
    config.require_account_dimension()

    Deployment(connect(args.redis_url), args.prefix).check_config(config)  # the fleet's, or refused
    return config


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _scope(scope: dict[str, str]) -> str:
    return scope_text(scope)


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# ---------------------------------------------------------------------- inspect


def _inspect(args: argparse.Namespace) -> int:
    if not args.account:
        return fail("--account: must not be empty")
    ops = _ops(args)
    report = ops.inspect(args.account, ops.rules(_config(args)), args.at)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"account {report['account']}   shard {report['shard']}   trading day {report['day'] or '-'}")
    print(f"window counts at {when(report['at'])}:")
    if report["windows"]:
        rows = [
            [w["rule"], _scope(w["scope"]), str(w["count"]), str(w["threshold"]), str(w["resume"])]
            for w in report["windows"]
        ]
        _table(["rule", "scope", "count", "threshold", "resume at"], rows)
    else:
        print("  (none)")
    print(f"daily sums of {report['day'] or '-'}:")
    if report["sums"]:
        rows = [[s["rule"], _scope(s["scope"]), str(s["sum"]), str(s["cap"])] for s in report["sums"]]
        _table(["rule", "scope", "sum", "cap"], rows)
    else:
        print("  (none)")
    print("pauses:")
    if report["pauses"]:
        rows = []
        for p in report["pauses"]:
            reason = p["reason"] if p["rule"] != "manual" else f"{p['reason']} (by {p['who']})"
            rows.append([p["rule"], _scope(p["scope"]), when(p["since"]), _text(p["value"]), _text(p["limit"]), reason])
        _table(["rule", "scope", "since", "value", "limit", "reason"], rows)
    else:
        print("  (none)")
    return 0


# ---------------------------------------------------------------------- pause / resume


def _manual_scope(args: argparse.Namespace) -> dict[str, str] | str:
    if not args.account:
        return "--account: must not be empty"
    scope = {"account": args.account}
    if args.contract is not None:
        if not args.contract:
            return "--contract: must not be empty"
        scope["contract"] = args.contract
    elif args.product is not None:
        if not args.product:
            return "--product: must not be empty"
        scope["product"] = args.product
    return scope


def _manual(args: argparse.Namespace) -> int:
    scope = _manual_scope(args)
    if isinstance(scope, str):
        return fail(scope)
    if not args.reason.strip():
        return fail("--reason: must not be empty (it goes to the audit stream)")
    who = args.who or operator()
    ops = _ops(args)
    if args.command == "pause" and not ops.seen(scope["account"]):
        unknown = f"account {scope['account']!r} has no state on its shard (never seen, or idle past the id retention)"
        if not args.force:
            return fail(f"{unknown}; nothing changed (--force pauses it anyway, e.g. a pre-emptive kill switch)")
        print(f"cluster-risk: warning: {unknown}; pausing it anyway (--force)", file=sys.stderr)
    do = ops.pause if args.command == "pause" else ops.resume
    result = do(scope, args.reason, who)
    if args.json:
        print(json.dumps(result.to_dict()))
    if result.status == "already":
        current = result.current
        print(
            f"cluster-risk: {_scope(result.scope)} is already paused by hand since {when(current.get('since'))} "
            f"(by {current.get('who')}: {current.get('reason')}); nothing changed",
            file=sys.stderr,
        )
        return REFUSED
    if result.status == "not_paused":
        print(
            f"cluster-risk: {_scope(result.scope)} has no manual pause to resume; nothing changed "
            "(rule pauses are lifted by their rules, or by reset-daily for daily caps)",
            file=sys.stderr,
        )
        return REFUSED
    if not args.json:
        verb = "paused" if args.command == "pause" else "resumed"
        print(f"{verb} {_scope(result.scope)} (shard {result.shard}) by {who}: {args.reason}")
        print(f"  action {result.action_id}: {json.dumps(result.action)}")
        print(f"  audit  {result.audit_id}")
    return 0


# ---------------------------------------------------------------------- audit


def _audit(args: argparse.Namespace) -> int:
    records = _ops(args).audit(args.account or None)
    if args.json:
        for record in records:
            print(json.dumps(record))
        return 0
    if not records:
        print("no audit records")
        return 0
    rows = [[when(r["when"]), r["who"], r["what"], _scope(r["scope"]) or "(every account)", r["why"]] for r in records]
    _table(["when", "who", "what", "scope", "why"], rows)
    return 0


# ---------------------------------------------------------------------- reset-daily


def _reset_daily(args: argparse.Namespace) -> int:
    if args.account is not None and not args.account:
        return fail("--account: must not be empty")

    config = _config(args)
    done = _ops(args).reset_daily(args.account, args.at, args.who or operator(), args.reason)
    if config is not None:
        done["day"] = date.fromordinal(calendar_for(config.trading_day).day_of(done["timestamp"])).isoformat()
    if args.json:
        print(json.dumps(done))
        return 0
    what = "every account" if args.account is None else f"account {args.account}"
    day = f" (trading day {done['day']})" if "day" in done else ""
    shards = ", ".join(str(s) for s in done["shards"])
    print(f"reset_daily of {what} at {when(done['timestamp'])}{day} published to shard(s) {shards}")
    print("  the workers apply it in order with the shards' events; see `cluster-risk actions` for the RESUMEs")
    return 0


# ---------------------------------------------------------------------- recover


def _recover(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        return fail("--reason: must not be empty (it goes to the audit stream)")
    who = args.who or operator()
    ops = _ops(args)
    if not args.all and 0 <= args.shard < ops.keys.shards and args.shard not in ops.lost_shards():
        print(f"cluster-risk: shard {args.shard} has not lost its state; nothing changed", file=sys.stderr)
        return REFUSED
    done = ops.recover(None if args.all else [args.shard], args.reason, who)
    if args.json:
        print(json.dumps(done))
    elif done["recovered"]:
        shards = ", ".join(str(s) for s in done["recovered"])
        print(f"recovered shard(s) {shards} by {who}: {args.reason}")
        print("  they count afresh from the state Redis holds now; see `cluster-risk audit`")
    else:
        print("no shard has lost its state; nothing changed")
    return 0


# ---------------------------------------------------------------------- registration


def register_ops_commands(commands: Any) -> None:
    """Add inspect, pause, resume, audit and reset-daily to the ``cluster-risk`` subparsers."""
    inspect = commands.add_parser("inspect", help="one account: window counts, today's sums, pauses")
    inspect.add_argument("--account", required=True, help="the account id")
    add_common(inspect)
    inspect.add_argument("--config", help="engine config (default: the rules the workers stored)")
    inspect.add_argument("--at", type=int, help="count the windows at this time, ns (default: now)")
    inspect.add_argument("--json", action="store_true", help="one JSON document (default: tables)")
    inspect.set_defaults(handler=guarded(_inspect))

    for name, verb in (("pause", "pause an account's orders by hand (kill switch)"), ("resume", "lift a manual pause")):
        manual = commands.add_parser(name, help=verb)
        manual.add_argument("--account", required=True, help="the account id")
        scope = manual.add_mutually_exclusive_group()
        scope.add_argument("--contract", help="only this contract of the account (default: the whole account)")
        scope.add_argument("--product", help="only this product of the account (default: the whole account)")
        manual.add_argument("--reason", required=True, help="why (recorded in the audit stream)")
        manual.add_argument("--who", help="who (default: $USER@hostname)")
        add_common(manual)
        manual.add_argument("--json", action="store_true", help="one JSON document (default: text)")
        if name == "pause":
            manual.add_argument(
                "--force",
                action="store_true",
                help="pause an account its shard has no state of (default: refuse, exit 2: likely a typo)",
            )
        manual.set_defaults(handler=guarded(_manual))

    audit = commands.add_parser("audit", help="manual pauses, resumes and resets: who, why, when, what")
    add_common(audit)
    audit.add_argument("--account", help="only this account (default: every account)")
    audit.add_argument("--json", action="store_true", help="JSON Lines (default: a table)")
    audit.set_defaults(handler=guarded(_audit))

    reset = commands.add_parser("reset-daily", help="publish a daily reset (every account, or --account)")
    add_common(reset)
    reset.add_argument("--config", help="engine config (checked; shows the trading day reset) (default: none)")
    reset.add_argument("--account", help="only this account, an ops extension (default: every account)")
    reset.add_argument("--at", type=int, help="the reset's timestamp, ns (default: now)")
    reset.add_argument("--reason", default="", help="why (recorded in the audit stream) (default: empty)")
    reset.add_argument("--who", help="who (default: $USER@hostname)")
    reset.add_argument("--json", action="store_true", help="one JSON document (default: text)")
    reset.set_defaults(handler=guarded(_reset_daily))

    recover = commands.add_parser("recover", help="start shards whose Redis state was lost afresh (audited)")
    which = recover.add_mutually_exclusive_group(required=True)
    which.add_argument("--shard", type=int, help="this lost shard (default: none; or --all)")
    which.add_argument("--all", action="store_true", help="every lost shard (default: off; or --shard)")
    recover.add_argument("--reason", required=True, help="why, recorded in the audit stream (required, no default)")
    recover.add_argument("--who", help="who (default: $USER@hostname)")
    add_common(recover)
    recover.add_argument("--json", action="store_true", help="one JSON document (default: text)")
    recover.set_defaults(handler=guarded(_recover))
