"""Operators' CLI: `python -m shared.admin senders ...|poison ...|reconcile|index rebuild`.

Reads AzureWebJobsStorage (a connection string, or the identity-based AzureWebJobsStorage__* settings) from the
environment, else from local.settings.json, like the local host does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from azure.core.exceptions import AzureError, ClientAuthenticationError, DecodeError, ResourceModifiedError
from azure.storage.queue import QueueMessage as StoredMessage
from pydantic import ValidationError

from shared import activity, index, reconcile, reindex, senders, status, work
from shared.config import APP_ROOT, SettingsError, get_settings
from shared.connection import overlay
from shared.models import QueueMessage
from shared.status import Status
from shared.storage import Storage, get_storage

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
        print(json.dumps({"sender": args.name, "key": senders.rotate(table, args.name)}))
    elif args.action in ("disable", "enable"):
        senders.set_enabled(table, args.name, args.action == "enable")
        print(json.dumps({"sender": args.name, "enabled": args.action == "enable"}))
    else:
        for sender in senders.list_senders(table):
            print(json.dumps({"sender": sender.name, "enabled": sender.enabled, "active_keys": sender.keys,
                              "created_at": sender.created_at}))


# --- poison ------------------------------------------------------------------------------------------------------


def _poison_messages(storage: Storage, hide_seconds: int) -> Iterator[tuple[StoredMessage, QueueMessage | None]]:
    """Every poison message once (hidden for `hide_seconds` while we look), with its parsed body if it has one."""
    while True:
        try:
            batch = list(storage.poison.receive_messages(messages_per_page=32, max_messages=32,
                                                         visibility_timeout=hide_seconds))
        except DecodeError:
            raise AdminError("a poison message is not base64; inspect the queue with Storage Explorer") from None
        if not batch:
            return
        for stored in batch:
            try:
                yield stored, QueueMessage.model_validate_json(stored.content)
            except (ValidationError, ValueError):
                yield stored, None


def cmd_poison_list(storage: Storage) -> int:
    seen = []
    for stored, message in _poison_messages(storage, hide_seconds=30):
        seen.append(stored)
        row = status.read(storage.reports, message.sender, message.id) if message else None
        print("\t".join([
            message.id if message else "(unreadable)",
            message.sender if message else "-",
            row.status.value if row else "-",
            f"dequeued={stored.dequeue_count}",
            f"inserted={stored.inserted_on.isoformat() if stored.inserted_on else '-'}",
        ]))
    for stored in seen:  # listing must not hide them
        storage.poison.update_message(stored.id, pop_receipt=stored.pop_receipt, visibility_timeout=0)
    print(f"{len(seen)} poison message(s)", file=sys.stderr)
    return 0


def _find_row(storage: Storage, report_id: str, sender: str | None) -> status.Row:
    if not index.REPORT_ID.match(report_id):
        raise AdminError(f"{report_id!r} is not a report id")
    # An operator rarely knows the sender: the senders that stored reports in the id's minute are the candidates.
    candidates = [sender] if sender else sorted(activity.senders_at(storage.activity, report_id))
    for name in candidates:
        row = status.read(storage.reports, name, report_id)
        if row is not None:
            return row
    hint = "" if sender else " (for reports stored before the index, run `index rebuild` first, or give --sender)"
    raise AdminError(f"no report {report_id}{hint}")


def replay_report(storage: Storage, row: status.Row) -> None:
    """Mark the report `queued`, then send its work message. In that order: a processor that got the message
    while the row still said `failed` would take it for finished and drop it."""
    if row.status not in REPLAYABLE:
        raise AdminError(f"report {row.id} is {row.status.value}; only failed or unfinished reports are replayed")
    try:
        row = status.write(storage.reports, row, {"status": Status.QUEUED})
    except ResourceModifiedError:
        raise AdminError(f"report {row.id} changed while replaying; run the command again") from None
    work.send(storage, row)


def cmd_poison_replay(args: argparse.Namespace, storage: Storage) -> int:
    replayed = failed = 0
    if args.id:
        row = _find_row(storage, args.id, args.sender)
        replay_report(storage, row)
        print(f"replayed {row.id} ({row.sender})")
        replayed = 1
        for stored, message in _poison_messages(storage, hide_seconds=30):
            if message and message.id == args.id:
                storage.poison.delete_message(stored)
            else:
                storage.poison.update_message(stored.id, pop_receipt=stored.pop_receipt, visibility_timeout=0)
    else:
        for stored, message in _poison_messages(storage, hide_seconds=300):
            if message is None:
                print(f"skipped unreadable poison message {stored.id}", file=sys.stderr)
                failed += 1
                continue
            try:
                replay_report(storage, _find_row(storage, message.id, message.sender))
            except AdminError as exc:
                print(f"skipped {message.id}: {exc}", file=sys.stderr)
                failed += 1
                continue
            storage.poison.delete_message(stored)
            print(f"replayed {message.id} ({message.sender})")
            replayed += 1
    print(f"{replayed} replayed, {failed} skipped", file=sys.stderr)
    return 1 if failed else 0


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
    for action, text in (("add", "register a sender; prints its first key"),
                         ("rotate", "issue a new key and revoke the old ones"),
                         ("disable", "refuse the sender's keys"), ("enable", "accept the sender's keys again")):
        s_actions.add_parser(action, help=text).add_argument("name")
    s_actions.add_parser("list", help="one JSON line per sender")

    p = groups.add_parser("poison", help="inspect and replay the poison queue")
    p_actions = p.add_subparsers(dest="action", required=True)
    p_actions.add_parser("list", help="one line per poison message: report id, sender, status")
    replay = p_actions.add_parser("replay", help="send poison messages (or a report by id) back for processing")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="replay this report, even if its poison message is gone")
    which.add_argument("--all", action="store_true", help="replay every poison message")
    replay.add_argument("--sender", help="the report's sender (optional; found from the id otherwise)")

    groups.add_parser("reconcile", help="re-enqueue reports stored but never enqueued, now")

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
        if args.group == "poison":
            return cmd_poison_list(storage) if args.action == "list" else cmd_poison_replay(args, storage)
        if args.group == "index":
            return cmd_index_rebuild(args, storage)
        print(f"{reconcile.reconcile(storage, get_settings())} report(s) re-enqueued")
        return 0
    except (AdminError, senders.SenderError, SettingsError) as exc:
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
