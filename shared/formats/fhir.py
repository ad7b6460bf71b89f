"""FHIR R4 reports: one Bundle (`application/fhir+json`) or one Bundle per NDJSON line, read leniently and streamed.

Each entry is read on its own (ijson), checked against the FHIR R4 model (fhir.resources R4B, the R4-compatible
release it ships) and dropped unless the ELR core needs it, so memory follows what is kept, not what is sent.
Model problems in elements the service reads reject the item (`fhir.invalid`); elsewhere they are warnings
(`fhir.nonconformant`), as ReportStream's lenient HAPI parser treats them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ijson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from shared.formats import ItemResult
from shared.formats.fhir_core import READ_ELEMENTS, READ_EXTENSIONS, normalise
from shared.models import Issue

# A report's items are capped at 10,000 (DESIGN section 5); a Bundle's entries likewise, so that one item cannot
# hold more than a report may. An entry may hold at most this many JSON values: a bound on the memory one entry's
# model check takes (about 30 bytes of models per byte of JSON), far above any real resource (RS's largest: ~3,000).
MAX_ENTRIES = 10_000
MAX_ENTRY_VALUES = 50_000
BUNDLE_TYPES = frozenset({"message", "collection", "transaction", "batch"})
_MAX_LISTED = 10  # model problems listed per item; the rest are counted
_SAFE_TOKEN = re.compile(r"[^A-Za-z0-9_.-]")
_UTF8_BOM = b"\xef\xbb\xbf"
# Extensions inside an element (`identifier[0].extension[1].valueOid`, `_birthDate`) are never read.
_NESTED_EXTENSION = re.compile(r"[.\]](?:extension|modifierExtension)\b|(?:^|\.)_|__ext")


def parse_bundle(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """A single Bundle: always exactly one item."""
    yield _item(raw, 0, report_id, "the body")


def parse_ndjson(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """One Bundle per non-empty line; blank lines are not items."""
    index = 0
    for line_no, line in _lines(raw):
        if not line.strip():
            continue
        yield _item(line, index, report_id, f"line {line_no}")
        index += 1


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Split on LF (CR before LF is whitespace to the JSON parser)."""
    start, line_no = 0, 1
    while start < len(raw):
        end = raw.find(b"\n", start)
        if end == -1:
            end = len(raw)
        yield line_no, raw[start:end]
        start, line_no = end + 1, line_no + 1


class _Refused(Exception):
    """The item cannot be read as a Bundle; carries the item error."""

    def __init__(self, field: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code = field, code


@dataclass
class Bundle:
    """What the ELR core needs of one Bundle: its header values and the resources of the types it reads."""

    head: dict[str, Any] = field(default_factory=dict)
    resources: list[tuple[int, str | None, dict[str, Any]]] = field(default_factory=list)  # (entry, fullUrl, resource)
    # (entry, path, text, id() of the resource when kept and the problem lies in an element the core reads)
    problems: list[tuple[int, str, str, int | None]] = field(default_factory=list)
    entries: int = 0


def _item(data: bytes, index: int, report_id: str, where: str) -> ItemResult:
    result = ItemResult(index=index, item=None)
    try:
        bundle = _read(data[len(_UTF8_BOM) :] if data.startswith(_UTF8_BOM) else data, where)
    except _Refused as exc:
        result.errors.append(_issue(index, exc.field, exc.code, str(exc)))
        return result
    item, errors, read = normalise(bundle.head, [r for _, _, r in bundle.resources],
                                   {url: r for _, url, r in bundle.resources if url}, index, report_id)
    strict = [p for p in bundle.problems if p[3] in read.used and (p[3], _element(p[1])) not in read.lenient]
    result.errors.extend(_listed(strict, index, "fhir.invalid") + errors)
    result.warnings.extend(_listed([p for p in bundle.problems if p not in strict], index, "fhir.nonconformant"))
    result.warnings.extend(read.warnings)
    result.item = None if result.errors else item
    return result


def _read(data: bytes, where: str) -> Bundle:
    """Stream the Bundle: top-level values kept, each entry built, checked and kept only when the core reads it."""
    bundle = Bundle()
    events = ijson.basic_parse(data, use_float=False)
    try:
        event, _ = next(events)
        if event != "start_map":
            raise _Refused("resourceType", "fhir.not_bundle", "the item is not a JSON object")
        for event, key in events:
            if event == "end_map":
                break
            if key == "entry":
                _read_entries(events, bundle)
            else:
                bundle.head[key] = _build(events, None, MAX_ENTRY_VALUES)
        if next(events, None) is not None:
            raise ijson.JSONError("trailing data")
    except (ijson.JSONError, UnicodeDecodeError, RecursionError):
        raise _Refused(None, "fhir.invalid_json", f"{where} is not valid JSON{_position(data)}") from None
    _check_head(bundle.head)
    return bundle


def _position(data: bytes) -> str:
    """Where the JSON breaks, from the standard parser (it stops there, so it costs at most what was read)."""
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        return f" (at line {exc.lineno}, column {exc.colno})"
    except (ValueError, RecursionError):
        pass
    return ""


def _check_head(head: dict[str, Any]) -> None:
    kind = head.get("resourceType")
    if kind != "Bundle":
        shown = _SAFE_TOKEN.sub("?", kind[:40]) if isinstance(kind, str) else "missing"
        raise _Refused("resourceType", "fhir.not_bundle", f"resourceType is {shown}, expected Bundle")
    bundle_type = head.get("type")
    if bundle_type is not None and bundle_type not in BUNDLE_TYPES:
        shown = _SAFE_TOKEN.sub("?", str(bundle_type)[:40])
        raise _Refused("type", "fhir.unsupported_bundle_type",
                       f"Bundle.type {shown} does not carry results (message, collection, transaction, batch)")


def _read_entries(events: Iterator[tuple[str, Any]], bundle: Bundle) -> None:
    event, value = next(events)
    if event != "start_array":
        bundle.problems.append((-1, "entry", "Bundle.entry is not a list", None))
        _build(events, (event, value), MAX_ENTRY_VALUES)
        return
    for event, value in events:
        if event == "end_array":
            return
        if bundle.entries == MAX_ENTRIES:
            raise _Refused("entry", "fhir.too_many_entries",
                           f"the Bundle has more than {MAX_ENTRIES:,} entries; split it into several Bundles")
        _keep(bundle, bundle.entries, _build(events, (event, value), MAX_ENTRY_VALUES))
        bundle.entries += 1


def _keep(bundle: Bundle, position: int, entry: Any) -> None:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict):
        bundle.problems.append((position, "", "the entry has no resource", None))
        return
    read = READ_ELEMENTS.get(resource.get("resourceType"))
    # Only the elements the core reads are kept; problems there are tied to the kept copy, to be judged later.
    kept = {k: v for k, v in resource.items() if k in read or k in ("resourceType", "id")} if read else None
    bundle.problems.extend(
        (position, path, text, id(kept) if kept is not None and _is_read(resource, path) else None)
        for path, text in _model_problems(resource)
    )
    if kept is not None:
        full_url = entry.get("fullUrl")
        bundle.resources.append((position, full_url if isinstance(full_url, str) else None, kept))


def _build(events: Iterator[tuple[str, Any]], first: tuple[str, Any] | None, budget: int) -> Any:
    """Build one JSON value from parser events (iteratively: nesting depth costs no stack)."""
    stack: list[Any] = []
    key: str | None = None
    root: Any = None
    count = 0
    if first is None:
        first = next(events)
    event, value = first
    while True:
        count += 1
        if count > budget:
            raise _Refused("entry", "fhir.too_large",
                           f"an entry holds more than {budget:,} JSON values; no real resource is that large")
        if event == "map_key":
            key = value
        elif event in ("end_map", "end_array"):
            root = stack.pop()
            if not stack:
                return root
        else:
            node: Any = {} if event == "start_map" else [] if event == "start_array" else value
            if stack:
                parent = stack[-1]
                if type(parent) is dict:
                    parent[key] = node
                else:
                    parent.append(node)
            if event in ("start_map", "start_array"):
                stack.append(node)
            elif not stack:
                return node
        event, value = next(events)


def _model_problems(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, value-free text) of each way the resource departs from the FHIR R4 model."""
    kind = resource.get("resourceType")
    try:
        get_fhir_model_class(kind).model_validate(resource)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            text, value = str(err.get("msg", "")), err.get("input")
            if isinstance(value, (str, int, float, Decimal)) and str(value) and str(value) in text:
                text = str(err.get("type", "invalid value"))  # never repeat the sender's value
            problems.append((_path(err.get("loc", ())), text[:200]))
        return problems
    except (KeyError, ValueError, TypeError):
        shown = _SAFE_TOKEN.sub("?", kind[:40]) if isinstance(kind, str) else "missing"
        return [("resourceType", f"resourceType {shown} is not an R4 resource")]
    except RecursionError:
        return [("", "nested too deeply to check")]
    return []


def _path(loc: tuple[Any, ...]) -> str:
    """('code', 'coding', 0, 'system') -> 'code.coding[0].system'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_read(resource: dict[str, Any], path: str) -> bool:
    """Whether a problem at `path` lies in an element the ELR core reads (for its extensions: only ones it reads)."""
    kind = resource.get("resourceType")
    name = _element(path)
    if name not in READ_ELEMENTS.get(kind, ()) or _NESTED_EXTENSION.search(path):
        return False
    if name == "extension":
        match = re.match(r"extension\[(\d+)\]", path)
        extensions = resource.get("extension")
        if match is None or not isinstance(extensions, list) or int(match.group(1)) >= len(extensions):
            return False
        extension = extensions[int(match.group(1))]
        return isinstance(extension, dict) and extension.get("url") in READ_EXTENSIONS
    return True


def _element(path: str) -> str:
    """'birthDate' of 'birthDate', 'code' of 'code.coding[0].system'."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _listed(problems: list[tuple[int, str, str, int | None]], index: int, code: str) -> list[Issue]:
    """One issue per problem (field `entry[i].resource.path`), at most _MAX_LISTED, the rest counted."""
    issues = []
    for position, path, text, _ in problems[:_MAX_LISTED]:
        where = "entry" if position < 0 else f"entry[{position}]" + (f".resource.{path}" if path else "")
        issues.append(_issue(index, where, code, f"{where}: {text}"[:300]))
    if len(problems) > _MAX_LISTED:
        issues[-1].message += f" (and {len(problems) - _MAX_LISTED} more)"
    return issues


def _issue(index: int, field: str | None, code: str, message: str) -> Issue:
    return Issue(scope="item", index=index, field=field, code=code, message=message)
