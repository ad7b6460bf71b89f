"""FHIR R4 reports: one Bundle (`application/fhir+json`) or one Bundle per NDJSON line, read leniently and streamed.

Each entry is read on its own (ijson), checked against the FHIR R4 model (fhir.resources R4B, the R4-compatible
release it ships) and dropped unless the ELR core needs it, so memory follows what is kept, not what is sent.
Model problems in elements the service reads reject the item (`fhir.invalid`, or `fhir.invalid_type` for a value
of the wrong JSON type); elsewhere they are warnings (`fhir.nonconformant`), as ReportStream's lenient HAPI parser
treats them. Whatever a Bundle holds, reading it is an item outcome, never an exception, and its cost is linear.
"""

from __future__ import annotations

import datetime
import json
import re
import types
import typing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple, NoReturn

import ijson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from shared import registry
from shared.formats.fhir_core import READ_ELEMENTS, READ_EXTENSIONS, normalise
from shared.formats.fhir_fast import CACHEABLE, Loc, Located, Model, ProblemCache, by_element, conforms
from shared.formats.items import ContentError, ItemResult
from shared.formats.items import item_issue as _issue
from shared.models import Issue

# A report's items are capped at 10,000; a Bundle's entries likewise, so that one item cannot
# hold more than a report may. An entry may hold at most this many JSON values: a bound on the memory one entry's
# model check takes (about 30 bytes of models per byte of JSON), far above any real resource (RS's largest: ~3,000).
MAX_ENTRIES = 10_000
MAX_ENTRY_VALUES = 50_000
# Results per Bundle: a panel is a few dozen (RS's largest sample: 26); more is no lab report, and each costs work.
MAX_OBSERVATIONS = 1_000
# Model problems checked per item (RS's worst sample: 110). Past this the entries left are not model-checked, which
# bounds the work a malformed Bundle costs (the model check takes ~7 us per problem); a resource the core then
# reads unchecked rejects the item (`fhir.too_many_problems`), as its elements could not be vouched for.
MAX_PROBLEMS = 1_000
BUNDLE_TYPES = frozenset({"message", "collection", "transaction", "batch"})
_MAX_LISTED = 20  # model problems listed per item and severity; one more issue counts the rest
_SAFE_TOKEN = re.compile(r"[^A-Za-z0-9_.-]")
_UTF8_BOM = b"\xef\xbb\xbf"
# The model's findings for the sender's own resources that recur verbatim between bundles (fhir_fast.ProblemCache).
PROBLEMS = registry.cache(ProblemCache())


def parse_bundle(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """A single Bundle: always exactly one item."""
    yield _item(raw, 0, report_id, "the body")


def parse_ndjson(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """One Bundle per non-empty line; blank lines are not items."""
    index = 0
    for line_no, line in _lines(raw):
        if not line.strip():
            continue
        if index == 0 and _opens_a_pretty_printed_value(line):
            # Thousands of "line N is not valid JSON" would hide the one mistake: the file is not NDJSON.
            raise ContentError(
                "fhir.not_ndjson", "The body looks like pretty-printed JSON: application/fhir+ndjson needs each "
                "Bundle on one line (or send one Bundle as application/fhir+json).")
        yield _item(line, index, report_id, f"line {line_no}")
        index += 1


def _opens_a_pretty_printed_value(line: bytes) -> bool:
    """A first line that only opens an object or a list, as a pretty-printer writes it (`{`, `[`, `{"a": {`)."""
    text = line.strip().lstrip(_UTF8_BOM).strip()
    return text in (b"{", b"[") or (text.startswith(b"{") and text.endswith((b"{", b"[")) and text.count(b"\"") <= 2)


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


class _Kept(NamedTuple):
    """A resource kept for the ELR core: only the elements it reads (with resourceType and id)."""

    entry: int
    full_url: str | None
    resource: dict[str, Any]


class _Problem(NamedTuple):
    """One way a resource departs from the model. `tie` is the id() of the kept copy when the problem lies in an
    element the ELR core reads (judged once the core has run); `element` is the top-level element it lies in."""

    entry: int
    path: str
    text: str
    tie: int | None
    element: str
    wrong_type: bool


@dataclass
class Bundle:
    """What the ELR core needs of one Bundle: its header values and the resources of the types it reads."""

    head: dict[str, Any] = field(default_factory=dict)
    resources: list[_Kept] = field(default_factory=list)
    problems: list[_Problem] = field(default_factory=list)  # the first _MAX_LISTED tied and untied ones
    listed: list[int] = field(default_factory=lambda: [0, 0])  # problems listed: [untied, tied]
    overflow: Counter[tuple[int | None, str]] = field(default_factory=Counter)  # the rest, by (tie, element)
    found: int = 0  # problems found, listed or not
    unchecked: dict[int, int] = field(default_factory=dict)  # id() of a kept copy not model-checked -> its entry
    observations: int = 0
    entries: int = 0

    def add(self, entry: int, loc: Loc, text: str, tie: int | None, wrong_type: bool = False) -> None:
        """Keep the problem when under the cap, else only count it: memory stays bounded whatever is sent."""
        self.found += 1
        element = str(loc[0]) if loc else ""
        if self.listed[tie is not None] < _MAX_LISTED:
            self.listed[tie is not None] += 1
            self.problems.append(_Problem(entry, _path(loc), text, tie, element, wrong_type))
        else:
            self.overflow[(tie, element)] += 1


def _item(data: bytes, index: int, report_id: str, where: str) -> ItemResult:
    try:
        return _judged(data, index, report_id, where)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one item's fault never stops the report
        # Only the exception's type: its text may quote the sender's data.
        message = f"{where} could not be read (internal {type(exc).__name__}); please report this"
        return ItemResult(index=index, item=None, errors=[_issue(index, None, "fhir.unreadable", message)])


def _judged(data: bytes, index: int, report_id: str, where: str) -> ItemResult:
    result = ItemResult(index=index, item=None)
    try:
        bundle = _read(data[len(_UTF8_BOM) :] if data.startswith(_UTF8_BOM) else data, where)
    except _Refused as exc:
        result.errors.append(_issue(index, exc.field, exc.code, str(exc)))
        return result
    item, errors, read = normalise(bundle.head, [r for _, _, r in bundle.resources],
                                   {url: r for _, url, r in bundle.resources if url}, index, report_id)

    def strict(tie: int | None, element: str, wrong_type: bool) -> bool:
        # A value of the wrong JSON type is an error wherever the core looked, even in an Observation it then
        # passed over (a result with `"coding": 5` is not silently dropped); other problems only where it read.
        read_there = tie in read.used or (wrong_type and tie in read.examined)
        return tie is not None and read_there and (tie, element) not in read.lenient

    failed = [p for p in bundle.problems if strict(p.tie, p.element, p.wrong_type)]
    passed = [p for p in bundle.problems if not strict(p.tie, p.element, p.wrong_type)]
    failed_more = sum(n for (tie, element), n in bundle.overflow.items() if strict(tie, element, False))
    passed_more = sum(bundle.overflow.values()) - failed_more
    result.errors.extend(_listed(failed, failed_more, index, "fhir.invalid") + errors)
    result.warnings.extend(_listed(passed, passed_more, index, "fhir.nonconformant"))
    result.errors.extend(_unchecked(bundle, read.used, index))
    result.warnings.extend(read.warnings)
    result.item = None if result.errors else item
    return result


def _unchecked(bundle: Bundle, used: set[int], index: int) -> list[Issue]:
    """The error for a resource the core read although, past MAX_PROBLEMS, it was not model-checked."""
    entries = sorted(entry for tie, entry in bundle.unchecked.items() if tie in used)
    if not entries:
        return []
    where = f"entry[{entries[0]}]"
    return [_issue(index, where, "fhir.too_many_problems",
                   f"{where} and later entries were not checked against the FHIR R4 model: the Bundle departs from it "
                   f"in more than {MAX_PROBLEMS:,} places")]


def _read(data: bytes, where: str) -> Bundle:
    """The Bundle's top-level values and kept resources: from the standard parser when that is sure to give what
    streaming gives (_loaded), else streamed."""
    bundle = _loaded(data)
    if bundle is None:
        bundle = _streamed(data, where)
    _check_head(bundle.head)
    return bundle


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(name)  # NaN, Infinity: not JSON (the streaming parser refuses them)


def _loaded(data: bytes) -> Bundle | None:
    """The Bundle read whole by the standard parser (json.loads: some ten times the streaming parser's speed with
    the values built), for a body too small for any value in it to reach MAX_ENTRY_VALUES: memory then stays
    bounded as when streamed, and building cannot be refused. Where both parsers take a body they give the same
    values (numbers as int or Decimal, last of duplicate keys in the first one's place); None whenever streaming
    could answer otherwise, which it then does: a body json.loads refuses (bad JSON or UTF-8, NaN, too deep), a
    `\\u` escape (lone surrogates, a key spelled with escapes), a second `entry` (streaming reads both), `entry`
    not a list, not an object, or more entries or Observations than the caps (refused mid-stream, in order)."""
    count = data.count
    # Parser events in the whole body, bounded from above: every value but the first follows `[`, `,` or `:`;
    # each container has a start and an end; each key is followed by `:` (characters in strings only add).
    if 1 + 2 * count(b"[") + count(b"{") + count(b",") + 2 * count(b":") > MAX_ENTRY_VALUES:
        return None
    if b"\\u" in data or count(b'"entry"') > 1:
        return None
    try:
        top = json.loads(data.decode("utf-8"), parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    if type(top) is not dict:
        return None
    entries = top.pop("entry", [])
    if type(entries) is not list or len(entries) > MAX_ENTRIES:
        return None
    observations = sum(1 for entry in entries if type(entry) is dict and type(entry.get("resource")) is dict
                       and entry["resource"].get("resourceType") == "Observation")
    if observations > MAX_OBSERVATIONS:
        return None
    bundle = Bundle(head=top)
    for position, entry in enumerate(entries):
        _keep(bundle, position, entry)
    bundle.entries = len(entries)
    return bundle


def _streamed(data: bytes, where: str) -> Bundle:
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
    return bundle


# Where JSON breaks is found by parsing it again with the standard parser, which builds what it reads (about 6.5x the
# bytes before the break): only small bodies get a position, so a malformed 50 MB body costs no second copy.
MAX_POSITION_BYTES = 1_000_000


def _position(data: bytes) -> str:
    """Where the JSON breaks (line and column, never its text), for bodies up to MAX_POSITION_BYTES."""
    if len(data) > MAX_POSITION_BYTES:
        return ""
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
    if bundle_type is not None and (not isinstance(bundle_type, str) or bundle_type not in BUNDLE_TYPES):
        shown = _SAFE_TOKEN.sub("?", str(bundle_type)[:40])
        raise _Refused("type", "fhir.unsupported_bundle_type",
                       f"Bundle.type {shown} does not carry results (message, collection, transaction, batch)")


def _read_entries(events: Iterator[tuple[str, Any]], bundle: Bundle) -> None:
    event, value = next(events)
    if event != "start_array":
        bundle.add(-1, (), "Bundle.entry is not a list", None, wrong_type=True)
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
        bundle.add(position, (), "the entry has no resource", None)
        return
    kind = resource.get("resourceType")
    read = READ_ELEMENTS.get(kind) if isinstance(kind, str) else None
    # Only the elements the core reads are kept; problems there are tied to the kept copy, to be judged later.
    kept = {k: v for k, v in resource.items() if k in read or k in ("resourceType", "id")} if read else None
    if kind == "Observation":
        bundle.observations += 1
        if bundle.observations > MAX_OBSERVATIONS:
            raise _Refused("entry", "fhir.too_many_observations",
                           f"the Bundle has more than {MAX_OBSERVATIONS:,} Observations; no lab report holds as many")
    if bundle.found > MAX_PROBLEMS:
        if kept is not None:
            bundle.unchecked[id(kept)] = position
    else:
        for loc, text, wrong_type in _model_problems(resource, read or frozenset()):
            tie = id(kept) if kept is not None and _is_read(resource, loc) else None
            bundle.add(position, loc, text, tie, wrong_type)
    if kept is not None:
        full_url = entry.get("fullUrl")
        bundle.resources.append(_Kept(position, full_url if isinstance(full_url, str) else None, kept))


def _build(events: Iterator[tuple[str, Any]], first: tuple[str, Any] | None, budget: int) -> Any:
    """Build one JSON value from parser events (iteratively: nesting depth costs no stack)."""
    event, value = next(events) if first is None else first
    if event not in ("start_map", "start_array"):
        return value  # a scalar (map_key, end_* never come first from a well-formed parser)
    root: Any = {} if event == "start_map" else []
    stack: list[Any] = [root]
    parent, key, count = root, None, 1
    # A for loop rather than next() per event: the parser's events are most of the work a large body costs.
    for event, value in events:
        count += 1
        if count > budget:
            raise _Refused("entry", "fhir.too_large",
                           f"an entry holds more than {budget:,} JSON values; no real resource is that large")
        if event == "map_key":
            key = value
            continue
        if event == "end_map" or event == "end_array":
            stack.pop()
            if not stack:
                return root
            parent = stack[-1]
            continue
        node: Any = {} if event == "start_map" else [] if event == "start_array" else value
        if type(parent) is dict:
            parent[key] = node
        else:
            parent.append(node)
        if event == "start_map" or event == "start_array":
            stack.append(node)
            parent = node
    raise ijson.IncompleteJSONError("the value ends early")


# Pydantic error types saying the JSON value has the wrong type (rather than a wrong value of the right type).
_TYPE_ERRORS = re.compile(r".*_type|.*_parsing|date_from_datetime_inexact|int_from_float|model_validation_format")


def _model_problems(resource: dict[str, Any], read: frozenset[str]) -> list[Located]:
    """Each way the resource departs from the FHIR R4 model. The model library coerces some wrong JSON types it is
    given (`"7"` for an integer, `true` for a decimal): in the elements the core reads those are found here too."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or (model := _model(kind)) is None:
        shown = _SAFE_TOKEN.sub("?", kind[:40]) if isinstance(kind, str) else "missing"
        wrong_type = kind is not None and not isinstance(kind, str)
        return [(("resourceType",), f"resourceType {shown} is not an R4 resource", wrong_type)]
    problems = [] if conforms(model, resource) else _found(model, resource, kind)
    if problems is None:
        return [((), "nested too deeply to check", False)]
    typed = _type_problems(model, resource, read)
    if not typed:
        return problems
    # The same value found twice: the type problem says more than what the library made of the value.
    found = {loc for loc, _, _ in typed}
    return typed + [p for p in problems if not any(p[0][:n] in found for n in range(1, len(p[0]) + 1))]


def _model(kind: str) -> Model | None:
    """The R4 model class of a resource type; None when the type is not an R4 resource."""
    try:
        return get_fhir_model_class(kind)
    except (KeyError, ValueError, TypeError):
        return None


def _found(model: Model, resource: dict[str, Any], kind: str) -> list[Located] | None:
    """The full model's findings (None: nested too deeply to check), kept for resources that recur verbatim."""
    key = PROBLEMS.key(resource) if kind in CACHEABLE else None
    if key is not None:
        problems = PROBLEMS.get(key)
        if problems is not None:
            return problems
    problems = by_element(model, resource, _validated)
    if problems is None:
        try:
            problems = _validated(model, resource)
        except RecursionError:
            return None
        except Exception:  # noqa: BLE001 - the library's own validators fail on some wrong types (a number for a url)
            problems = _validated_by_element(model, resource)
    if key is not None:
        PROBLEMS.put(key, problems)
    return problems


def _validated(model: Model, resource: dict[str, Any]) -> list[Located]:
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems: list[Located] = []
        for err in exc.errors(include_url=False):
            text, value, kind = str(err.get("msg", "")), err.get("input"), str(err.get("type", ""))
            if isinstance(value, (str, int, float, Decimal)) and str(value) and str(value) in text:
                text = kind or "invalid value"  # never repeat the sender's value
            problems.append((tuple(err.get("loc", ())), text[:200], bool(_TYPE_ERRORS.fullmatch(kind))))
        return problems
    return []


def _validated_by_element(model: Model, resource: dict[str, Any]) -> list[Located]:
    """Element by element, when the library fails on the whole: an element it fails on is a wrong JSON type."""
    kind = resource.get("resourceType")
    problems = [p for p in _validated(model, {"resourceType": kind}) if p[0][:1] and p[0][0] not in resource]
    for key, value in resource.items():
        if key == "resourceType":
            continue
        try:
            problems += [p for p in _validated(model, {"resourceType": kind, key: value}) if p[0][:1] == (key,)]
        except RecursionError:
            problems.append(((key,), "nested too deeply to check", False))
        except Exception:  # noqa: BLE001 - as above
            problems.append(((key,), "a value in this element has the wrong JSON type", True))
    return problems


class _JSONType(NamedTuple):
    """The JSON type a FHIR primitive is sent as."""

    name: str  # as the problem words it: "a string"
    types: tuple[type, ...]  # what the JSON parsers give for it


_STRING = _JSONType("a string", (str,))
_BOOLEAN = _JSONType("a boolean", (bool,))
# The JSON type of FHIR primitives, by the Python type the model gives them.
_JSON_TYPES: dict[object, _JSONType] = {
    str: _STRING, datetime.date: _STRING, datetime.datetime: _STRING, datetime.time: _STRING, bool: _BOOLEAN,
    int: _JSONType("an integer", (int,)), Decimal: _JSONType("a number", (int, Decimal)),
}
# (a list of them, the complex type's model or the primitive's JSON type): what an element's JSON value must be.
_Element = tuple[bool, Model | _JSONType]


@cache
def _fields(model: Model) -> dict[str, _Element]:
    """JSON name -> what its value must be, for each element of a model that is a complex type or a primitive."""
    fields: dict[str, _Element] = {}
    for name, info in model.model_fields.items():
        many, annotation = _unwrapped(info.annotation)
        getter = getattr(annotation, "get_model_klass", None)  # the complex types' (fhir_core.types.FhirBase)
        target = _JSON_TYPES.get(annotation) or (getter() if getter is not None else None)
        if target is not None:
            fields[info.alias or name] = (many, target)
    return fields


def _unwrapped(annotation: Any) -> tuple[bool, Any]:
    """`Optional[List[Annotated[str, String()]]]` -> (True, str); a union with str (a url) is a str."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is typing.Annotated or (origin is list and not many):
            many = many or origin is list
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = str if str in args else args[0] if len(args) == 1 else None
        else:
            return many, annotation


def _type_problems(model: Model, resource: dict[str, Any], read: frozenset[str]) -> list[Located]:
    """Values of the wrong JSON type (null where a value belongs included) in the elements the core reads. At most
    _MAX_LISTED + 1 are looked for: past that, the element is already known bad and the rest only costs time."""
    problems: list[Located] = []
    fields = _fields(model)
    # (the parent's loc, key or index, value, what it must be); a loc is built only for a problem or a container.
    stack: list[tuple[Loc, str | int, Any, _Element]] = [
        ((), key, resource[key], fields[key])
        for key in sorted(read, reverse=True) if key in resource and key in fields]
    while stack and len(problems) <= _MAX_LISTED:
        parent, key, value, (many, target) = stack.pop()
        if value is None:
            problems.append((parent + (key,), "null where a value belongs", True))
        elif many:
            if type(value) is not list:
                problems.append((parent + (key,), "expected a list", True))
                continue
            loc = parent + (key,)
            # Pushed last item first, so that the first items are checked (and listed) first.
            stack.extend((loc, i, value[i], (False, target)) for i in range(len(value) - 1, -1, -1)
                         if value[i] is not None)
        elif isinstance(target, _JSONType):
            if _wrong_json_type(value, target):
                problems.append((parent + (key,), f"expected {target.name}", True))
        elif type(value) is not dict:
            problems.append((parent + (key,), "expected an object", True))
        else:
            loc, inner = parent + (key,), _fields(target)
            for name, child in reversed(value.items()):
                spec = inner.get(name)
                if spec is None:
                    continue
                expected = spec[1]
                if child is not None and not spec[0] and isinstance(expected, _JSONType):  # a primitive: checked here
                    if _wrong_json_type(child, expected):
                        problems.append((loc + (name,), f"expected {expected.name}", True))
                else:
                    stack.append((loc, name, child, spec))
    return sorted(problems)


def _wrong_json_type(value: Any, expected: _JSONType) -> bool:
    # A JSON true or false is a Python int too: only a boolean takes it.
    return not isinstance(value, expected.types) or (type(value) is bool and expected is not _BOOLEAN)


def _path(loc: Loc) -> str:
    """('code', 'coding', 0, 'system') -> 'code.coding[0].system'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_read(resource: dict[str, Any], loc: Loc) -> bool:
    """Whether a problem at `loc` lies in an element the ELR core reads (for its extensions: only ones it reads)."""
    kind = resource.get("resourceType")
    name = loc[0] if loc else ""
    if not isinstance(kind, str) or name not in READ_ELEMENTS.get(kind, ()):
        return False
    # Extensions inside an element (`identifier[0].extension[1].valueOid`, `_birthDate`) are never read.
    if any(isinstance(part, str) and (part in ("extension", "modifierExtension") or part.startswith("_")
                                      or "__ext" in part) for part in loc[1:]):
        return False
    if name == "extension":
        # The element itself, or an extension too broken to tell its url, may be the one the core looks for.
        extensions = resource.get("extension")
        if len(loc) < 2 or not isinstance(extensions, list):
            return True
        extension = extensions[loc[1]] if isinstance(loc[1], int) and loc[1] < len(extensions) else None
        url = extension.get("url") if isinstance(extension, dict) else None
        return not isinstance(url, str) or url in READ_EXTENSIONS
    return True


def _listed(problems: list[_Problem], more: int, index: int, code: str) -> list[Issue]:
    """One issue per problem (field `entry[i].resource.path`), at most _MAX_LISTED; one more counts the rest."""
    issues = []
    for problem in problems[:_MAX_LISTED]:
        where = "entry" if problem.entry < 0 else f"entry[{problem.entry}]" + (
            f".resource.{problem.path}" if problem.path else "")
        kind = "fhir.invalid_type" if problem.wrong_type and code == "fhir.invalid" else code
        issues.append(_issue(index, where, kind, f"{where}: {problem.text}"[:300]))
    more += max(0, len(problems) - _MAX_LISTED)
    if more:
        issues.append(_issue(index, "entry", code, f"{more:,} more problems of this kind are not listed"))
    return issues

