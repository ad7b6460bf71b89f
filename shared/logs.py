"""What the app lets into logs: no report value, wherever a record goes (on Azure the Python worker forwards the root
logger to Application Insights, and the host records the message and stack of every exception an invocation
raises).

Every log record passes one filter, installed as the process's record factory so that it applies whatever handler
the worker or a host attaches: an exception that is not the app's own (a parser's, a library's, the SDKs') keeps
its type and the place it was raised, never its message or traceback, which can quote the values being handled.
The Azure SDKs and httpx log every request at INFO; they are held at WARNING.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

QUIET_LOGGERS = ("azure", "httpx", "httpcore", "urllib3")
_ROOT = Path(__file__).resolve().parent.parent


class TryAgain(Exception):  # noqa: N818 - named for what the host does with it
    """Raised out of an invocation so the host retries it; it names the failure's type and place, never its
    message (the host records both this message and its stack)."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(describe(failure))
        self.failure_type = type(failure).__name__
        self.http_status = getattr(failure, "http_status", None)  # a downstream's answer, for telemetry


OWN_PACKAGES = ("shared", "devhost")  # devhost's: the local host's own, as the real host's are not the worker's


def is_own(exc: BaseException) -> bool:
    """The app's own exceptions carry messages written to hold no report values."""
    package = type(exc).__module__.split(".", 1)[0]
    return package in OWN_PACKAGES


def describe(exc: BaseException) -> str:
    """`ValueError at shared/formats/hl7v2.py:123`: what failed and where, and nothing it was handling."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    try:
        where = str(Path(last.filename).resolve().relative_to(_ROOT))
    except ValueError:
        where = Path(last.filename).name
    return f"{type(exc).__name__} at {where}:{last.lineno}"


def safe_message(exc: BaseException) -> str:
    """An exception's message where it is the app's own (its causes are not part of it), else its type and place."""
    return str(exc) if is_own(exc) else describe(exc)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _foreign_in_chain(exc: BaseException) -> bool:
    return any(not is_own(link) for link in _chain(exc))


def scrub(record: logging.LogRecord) -> logging.LogRecord:
    """Drop the message and traceback of foreign exceptions from a record: logged with exc_info, or passed as an
    argument to be formatted into the message. The local host's own records (logger `devhost`, in the same process
    as the app here) are the host's, which the worker's logging never touches on Azure."""
    if record.name == "devhost" or record.name.startswith("devhost."):
        return record
    if record.exc_info and record.exc_info[1] is not None and _foreign_in_chain(record.exc_info[1]):
        exc = record.exc_info[1]
        record.msg = f"{record.msg} [{describe(exc).replace('%', '%%')}]"
        record.exc_info, record.exc_text = _bare(exc), None
    if isinstance(record.args, tuple) and any(isinstance(a, BaseException) for a in record.args):
        record.args = tuple(safe_message(a) if isinstance(a, BaseException) else a for a in record.args)
    elif isinstance(record.args, dict) and any(isinstance(a, BaseException) for a in record.args.values()):
        record.args = {k: safe_message(v) if isinstance(v, BaseException) else v for k, v in record.args.items()}
    return record


def _bare(exc: BaseException) -> tuple[type[BaseException], BaseException, None] | None:
    """An exc_info of the same type with no message and no traceback, so handlers still record the exception's type
    (Application Insights' exception.type); None where the type cannot be made empty."""
    try:
        empty = type(exc).__new__(type(exc))
        str(empty)
    except Exception:  # noqa: BLE001 - a type that needs its arguments: record no exception at all
        return None
    return type(exc), empty, None


_installed = False


def install() -> None:
    """Make every record of the process pass `scrub`, and quiet the per-request loggers. Idempotent."""
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        return scrub(base(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _installed = True
