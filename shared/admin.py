"""Operators' CLI: `python -m shared.admin senders ...|keys ...|poison ...|reconcile|index rebuild`.

Reads AzureWebJobsStorage (a connection string, or the identity-based AzureWebJobsStorage__* settings) from the
environment, else from local.settings.json, like the local host does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, ClientAuthenticationError, ResourceModifiedError

from shared import activity, errors, index, keys, lookup, poison, reconcile, reindex, retention, senders, status, work
from shared.clock import to_iso
from shared.config import APP_ROOT, SettingsError, get_settings
from shared.connection import overlay
from shared.lifecycle import Status
from shared.models import Delivery
from shared.storage import Storage, get_storage, raw_blob_name

REPLAYABLE = frozenset({Status.FAILED, Status.RECEIVED, Status.QUEUED, Status.PROCESSING})


class AdminError(RuntimeError):
    """Something the operator asked for cannot be done; the message says why."""


def load_local_settings() -> None:
    """Fill in settings missing from the environment from local.settings.json (cwd, else the app root), as the
    host does: the environment wins, for the storage connection as a whole."""
    for folder in (Path.cwd(), APP_ROOT):
        path = folder / "local.settings.json"
        if path.is_file():
            values = json.loads(path.read_text()).get("Values", {})
            merged = overlay({k: str(v) for k, v in values.items()}, os.environ)
            for key, value in merged.items():
                os.environ.setdefault(key, value)
            return


# --- senders -----------------------------------------------------------------------------------------------------


def cmd_senders(args: argparse.Namespace, storage: Storage) -> None:
    table = storage.senders
    if args.action == "add":
        print(json.dumps({"sender": args.name, "key": senders.add(table, args.name)}))
    elif args.action == "rotate":
        grace = parse_duration(args.grace)
        key = senders.rotate(table, args.name, grace_seconds=grace)
        print(json.dumps({"sender": args.name, "key": key, "old_keys_work_for_seconds": int(grace)}))
    elif args.action in ("disable", "enable"):
        senders.set_enabled(table, args.name, args.action == "enable")
        print(json.dumps({"sender": args.name, "enabled": args.action == "enable"}))
    elif args.action == "set":
        allow = args.allow_duplicates == "true"
        senders.set_allow_duplicates(table, args.name, allow)
        print(json.dumps({"sender": args.name, "allow_duplicates": allow}))
    else:
        default = get_settings().allow_duplicates_default
        for sender in senders.list_senders(table):
            allow = default if sender.allow_duplicates is None else sender.allow_duplicates
            print(json.dumps({"sender": sender.name, "enabled": sender.enabled, "active_keys": sender.keys,
                              "allow_duplicates": allow, "created_at": sender.created_at}))


DURATION = re.compile(r"^(\d{1,6})([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None) -> float:
    """`90s`, `30m`, `24h`, `7d` (or `0`) as seconds."""
    if not text or text == "0":
        return 0
    match = DURATION.match(text.strip())
    if match is None:
        raise AdminError(f"invalid duration {text!r}: use a number and s, m, h or d, e.g. 24h")
    return int(match[1]) * UNIT_SECONDS[match[2]]


# --- public keys (ReportStream's token authentication) -----------------------------------------------------------


def cmd_keys(args: argparse.Namespace, storage: Storage) -> None:
    table = storage.keys
    if args.action == "add":
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise AdminError(f"cannot read {args.file}: {exc.strerror}") from None
        print(json.dumps(_describe_key(keys.add(table, args.scope, args.kid, data))))
    elif args.action == "remove":
        keys.remove(table, args.scope, args.kid)
        print(json.dumps({"scope": keys.parse_scope(args.scope).text, "kid": args.kid, "removed": True}))
    else:
        for key in keys.list_keys(table, args.scope):
            print(json.dumps(_describe_key(key)))


def _describe_key(key: keys.PublicKey) -> dict[str, Any]:
    return {"scope": key.scope, "kid": key.kid, "kty": key.kty, "algorithms": list(key.algorithms),
            "thumbprint": keys.thumbprint(key), "created_at": key.created_at}


# --- poison ------------------------------------------------------------------------------------------------------

# What replay --all does with a poison message, by the status of its report.
CLEAR_WHEN = frozenset({Status.PROCESSED, Status.REJECTED})


def cmd_poison_list(storage: Storage, limit: int) -> int:
    """The reports waiting for an operator, as the poison trigger recorded them; reading changes nothing."""
    shown = 0
    for waiting in poison.waiting(storage.poisoned):
        if shown >= limit:
            print(f"more than {limit} waiting; `poison list --limit N` shows more, `poison replay --all` handles "
                  "them all", file=sys.stderr)
            break
        row = status.read(storage.reports, waiting.sender, waiting.report_id)
        record = row.record() if row else None
        print("\t".join([
            waiting.report_id, waiting.sender, row.status.value if row else "-",
            f"tries={record.attempts if record else '-'}", f"poisoned={waiting.arrived_at}",
        ]))
        shown += 1
    print(f"{shown} report(s) waiting in the poison record", file=sys.stderr)
    return 0


def _find_row(storage: Storage, report_id: str, sender: str | None) -> status.Row:
    if not index.REPORT_ID.match(report_id):
        raise AdminError(f"{report_id!r} is not a report id")
    # An operator rarely knows the sender: the senders that stored reports in the id's minute are the candidates.
    candidates = [sender] if sender else sorted(activity.senders_at(storage.activity, report_id))
    row = lookup.find_among(storage, report_id, candidates)
    if row is not None:
        return row
    hint = "" if sender else " (for reports stored before the index, run `index rebuild` first, or give --sender)"
    raise AdminError(f"no report {report_id}{hint}")


def replay_report(storage: Storage, row: status.Row, force: bool = False) -> None:
    """Set the report back to `received`, then enqueue it (send, then `queued`), as intake does. A send that fails
    leaves it `received`, which the reconciler re-enqueues: never `queued` with no message. The record drops what
    belonged to the outcome being replayed (completion time, errors; a delivery goes back to pending); exceptions
    stay. A report already `queued` or `processing` has a message at work: replaying it again would run two copies
    at once, so only `--force` does, and for `processing` only once its invocation can no longer be running."""
    if row.status not in REPLAYABLE:
        raise AdminError(f"report {row.id} is {row.status.value}; only failed or unfinished reports are replayed")
    _check_not_at_work(row, force)
    if not retention.raw_is_kept(storage, str(row.entity.get("blob") or raw_blob_name(row.sender, row.id))):
        raise AdminError(f"report {row.id} cannot be replayed: its raw body is gone (kept RAW_RETENTION_DAYS="
                         f"{get_settings().raw_retention_days} days, or deleted); the sender must send it again")
    if row.status in (Status.FAILED, Status.PROCESSING):
        row = _reset_to_received(storage, row)
    try:
        work.enqueue(storage, row)
    except AzureError as exc:
        raise AdminError(f"report {row.id} is set to received but its message could not be sent "
                         f"({type(exc).__name__}); the reconciler will send it") from None


def _reset_to_received(storage: Storage, row: status.Row) -> status.Row:
    changes: status.Changes = {"status": Status.RECEIVED, "completed_at": None, "errors": []}
    if row.record().delivery is not None:
        changes["delivery"] = Delivery(status="pending").model_dump()
    try:
        row = status.write(storage.reports, row, changes)
    except ResourceModifiedError:
        raise AdminError(f"report {row.id} changed while replaying; run the command again") from None
    # The reconciler looks at the senders active since its checkpoint: mark this one, so a failed send is found.
    activity.record_now(storage.activity, row.sender)
    return row


def _check_not_at_work(row: status.Row, force: bool) -> None:
    if row.status not in (Status.QUEUED, Status.PROCESSING):
        return
    if not force:
        raise AdminError(f"report {row.id} is {row.status.value}: its message is at work, and a replay would run a "
                         "second copy beside it. If it is stuck, replay it with --force")
    if row.status is Status.PROCESSING:
        settings = get_settings()
        free_at = (row.written_at or datetime.now(UTC)) + reconcile.settled_after(settings)
        if datetime.now(UTC) < free_at:
            raise AdminError(f"report {row.id} is processing and its invocation may still be running "
                             f"(functionTimeout): --force works from {to_iso(free_at)}")


def cmd_poison_replay(args: argparse.Namespace, storage: Storage) -> int:
    if args.id:
        row = _find_row(storage, args.id, args.sender)
        replay_report(storage, row, force=args.force)
        poison.close(storage, row.sender, row.id)
        print(f"replayed {row.id} ({row.sender})")
        return 0
    counts = {"replayed": 0, "cleared": 0, "skipped": 0}
    for waiting in list(poison.waiting(storage.poisoned)):
        counts[_replay_waiting(storage, waiting)] += 1
    print(", ".join(f"{n} {what}" for what, n in counts.items()), file=sys.stderr)
    return 1 if counts["skipped"] else 0


def _replay_waiting(storage: Storage, waiting: poison.Waiting) -> str:
    """Replay one waiting report, or clear it from the record if it finished meanwhile."""
    row = status.read(storage.reports, waiting.sender, waiting.report_id)
    if row is None or row.status in CLEAR_WHEN:
        poison.close(storage, waiting.sender, waiting.report_id)
        print(f"cleared {waiting.report_id} ({waiting.sender}): "
              f"{'already ' + row.status.value if row else 'no such report'}")
        return "cleared"
    try:
        replay_report(storage, row)
    except AdminError as exc:
        print(f"skipped {waiting.report_id}: {exc}", file=sys.stderr)
        return "skipped"
    poison.close(storage, waiting.sender, waiting.report_id)
    print(f"replayed {waiting.report_id} ({waiting.sender})")
    return "replayed"


# --- retention -----------------------------------------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace, storage: Storage) -> int:
    settings = get_settings()
    if args.action == "policy":
        print(json.dumps(retention.policy(settings), indent=2))
        return 0
    done = retention.apply(storage, settings)
    print(json.dumps({"raw_deleted": done.raw, "results_deleted": done.results,
                      "raw_retention_days": settings.raw_retention_days,
                      "results_retention_days": settings.results_retention_days}))
    return 0


# --- index ---------------------------------------------------------------------------------------------------------


def cmd_index_rebuild(args: argparse.Namespace, storage: Storage) -> int:
    def progress(line: str) -> None:
        print(f"index rebuild: {line}", file=sys.stderr, flush=True)

    totals = reindex.rebuild(storage, progress, restart=args.restart)
    print(json.dumps({"senders": totals.senders, "rows_read": totals.rows, "rows_indexed": totals.indexed}))
    return 0


# --- entry point -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.admin", description=__doc__.splitlines()[0])
    groups = parser.add_subparsers(dest="group", required=True)

    s = groups.add_parser("senders", help="register senders and manage their API keys")
    s_actions = s.add_subparsers(dest="action", required=True)
    for action, text in (("add", "register a sender (name or org.name); prints its first key"),
                         ("rotate", "issue a new key; the old ones stop working at once, or after --grace"),
                         ("disable", "refuse the sender's keys and tokens"),
                         ("enable", "accept the sender's keys again")):
        action_parser = s_actions.add_parser(action, help=text)
        action_parser.add_argument("name")
        if action == "rotate":
            action_parser.add_argument("--grace", default="0",
                                       help="how long the old keys keep working, e.g. 24h (default: not at all)")
    s_actions.add_parser("list", help="one JSON line per sender")
    s_set = s_actions.add_parser("set", help="change a sender's settings")
    s_set.add_argument("name")
    s_set.add_argument("--allow-duplicates", required=True, choices=("true", "false"),
                       help="false: results the sender already sent (within DUPLICATE_WINDOW_DAYS) are not delivered "
                            "again (ReportStream's allowDuplicates)")

    k = groups.add_parser("keys", help="senders' public keys for ReportStream-style token authentication")
    k_actions = k.add_subparsers(dest="action", required=True)
    k_add = k_actions.add_parser("add", help="register a public key (PEM, JWK or one-key JWKS) for a scope")
    k_add.add_argument("scope", help="org.sender.report (one sender) or org.*.report (every sender of org)")
    k_add.add_argument("--kid", required=True, help="the key id the sender puts in its JWT header")
    k_add.add_argument("file", help="the public key file")
    k_list = k_actions.add_parser("list", help="one JSON line per key")
    k_list.add_argument("scope", nargs="?", help="only this scope's keys")
    k_remove = k_actions.add_parser("remove", help="remove a key; its tokens stop within AUTH_CACHE_SECONDS")
    k_remove.add_argument("scope")
    k_remove.add_argument("--kid", required=True)

    p = groups.add_parser("poison", help="the reports the host gave up on (recorded from the poison queue)")
    p_actions = p.add_subparsers(dest="action", required=True)
    p_list = p_actions.add_parser("list", help="one line per waiting report: id, sender, status, tries, when")
    p_list.add_argument("--limit", type=int, default=1000, help="show at most this many (default 1000)")
    replay = p_actions.add_parser("replay", help="send poison messages (or a report by id) back for processing")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="replay this report, even if its poison message is gone")
    which.add_argument("--all", action="store_true",
                       help="replay every waiting report; clear those already processed or rejected")
    replay.add_argument("--sender", help="the report's sender (optional; found from the id otherwise)")
    replay.add_argument("--force", action="store_true",
                        help="with --id: replay a report that is queued, or processing but no longer running")

    groups.add_parser("reconcile", help="what the timer does, now: re-enqueue reports stored but never enqueued")

    r = groups.add_parser("retention", help="how long raw bodies and results are kept")
    r_actions = r.add_subparsers(dest="action", required=True)
    r_actions.add_parser("policy", help="print the Azure lifecycle management policy for the settings")
    r_actions.add_parser("apply", help="delete what the policy would, now (for Azurite, which has no lifecycle "
                                       "management)")

    i = groups.add_parser("index", help="the listing index of table reports")
    i_actions = i.add_subparsers(dest="action", required=True)
    rebuild = i_actions.add_parser("rebuild", help="index rows stored before the index existed (resumable)")
    rebuild.add_argument("--restart", action="store_true", help="ignore earlier runs' checkpoints")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_local_settings()
    try:
        storage = get_storage()
        if args.group == "senders":
            cmd_senders(args, storage)
            return 0
        if args.group == "keys":
            cmd_keys(args, storage)
            return 0
        if args.group == "poison":
            return cmd_poison_list(storage, args.limit) if args.action == "list" else cmd_poison_replay(args, storage)
        if args.group == "index":
            return cmd_index_rebuild(args, storage)
        if args.group == "retention":
            return cmd_retention(args, storage)
        print(f"{reconcile.reconcile(storage, get_settings())} report(s) re-enqueued")
        return 0
    except (AdminError, senders.SenderError, keys.KeyRegistryError, SettingsError, errors.Refused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClientAuthenticationError as exc:
        # No token (no managed identity here, not logged in) or a refused one: the first line says which.
        print(f"error: cannot authenticate to storage: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
        return 3
    except AzureError as exc:
        print(f"error: storage unavailable ({type(exc).__name__}); is AzureWebJobsStorage (or, with an identity, "
              f"AzureWebJobsStorage__*, the identity and its data roles) right?", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
