"""A fast, one-sided check that a FHIR R4 resource conforms to the model fhir.py checks it against.

Building the fhir.resources models of a resource costs some 30 times parsing its JSON, yet nearly every resource a
lab sends conforms. `conforms()` walks the resource's JSON once against a table drawn from the same models (each
element's JSON name, list or not, its model or primitive type, the required elements and the value[x] choices) and
checks each primitive value with the model's own pydantic type for it. It answers True only when the model is sure
to find nothing; anything it does not vouch for (a null, an empty list or object, an unknown element, a primitive
extension `_x`, a contained resource, a value the primitive type refuses, a missing required element, two value[x]
given) answers False, and fhir.py then runs the full model, which finds and words the problems as before. So the
problems reported are the model's own, whichever path ran (tests/test_formats_fhir_speed.py holds the two to agree).

`ProblemCache` keeps the model's findings for resources that recur verbatim across bundles (SimpleReport sends the
same Organization, Device and Provenance with every result), keyed by a digest of the resource's exact JSON value,
for a few resource types that carry no patient data; it is bounded in entries and in problems kept per entry.
"""

from __future__ import annotations

import hashlib
import threading
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

from cachetools import LRUCache
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import TypeAdapter

# Elements nested deeper than this are left to the model: it needs some seven stack frames a level and gives up
# (RecursionError: "nested too deeply to check") past about a hundred, so the fast check must not vouch for them.
# Real resources nest a few levels (an extension in an extension in a coding).
MAX_DEPTH = 32

Model = type[FHIRAbstractModel]  # a FHIR R4 model class: a resource's, or a complex element type's
Loc = tuple[int | str, ...]  # where a problem lies, as pydantic gives it: ('code', 'coding', 0, 'system')
Located = tuple[Loc, str, bool]  # (loc, value-free text, a wrong JSON type): one problem the model finds


class _Field(NamedTuple):
    many: bool
    model: Model | None  # the element's model class, or None for a primitive
    check: Callable[[Any], Any] | None  # a primitive's validator (raises when the model would refuse the value)


class _Spec(NamedTuple):
    fields: dict[str, _Field | None]  # JSON name -> how to check it; None: present means "ask the model"
    required: tuple[str, ...]  # JSON names that must be present (not null)
    choices: tuple[tuple[tuple[str, ...], bool], ...]  # value[x] groups: (JSON names, one required)
    choice_of: dict[str, int]  # JSON name -> its value[x] group (the index in `choices`)
    order: dict[str, int]  # JSON name -> position among the model's fields (the order pydantic reports them in)
    missing: frozenset[str]  # JSON names of the fields pydantic itself requires (`Field required`)
    names: frozenset[str]  # Python names that differ from the JSON name (pydantic also accepts them)
    whole: frozenset[str]  # the JSON names the whole-resource checks look at (none: nothing to check)


@cache
def _adapter(annotation: Any) -> Callable[[Any], Any]:
    return TypeAdapter(annotation).validator.validate_python


@cache
def spec(model: Model) -> _Spec:
    """The table `conforms` checks a model's JSON against, drawn from the model's own fields."""
    fields: dict[str, _Field | None] = {}
    names: dict[str, str] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        names[name] = alias
        fields[alias] = _field(info.annotation)
    # The model's own lists of required elements and value[x] groups are instance methods reading nothing of the
    # instance: an unvalidated one (model_construct) is enough to ask them.
    blank = model.model_construct()
    required = {names[name] for name, info in model.model_fields.items() if info.is_required()}
    required |= {names[name] for name, _ in blank.get_required_fields() if name in names}
    choices = []
    for group in blank.get_one_of_many_fields().values():
        extra = model.model_fields[group[0]].json_schema_extra
        one_required = isinstance(extra, dict) and extra.get("one_of_many_required") is True
        choices.append((tuple(names[n] for n in group), one_required))
    order = {names[name]: n for n, name in enumerate(model.model_fields)}
    missing = frozenset(names[name] for name, info in model.model_fields.items() if info.is_required())
    renamed = frozenset(name for name, alias in names.items() if name != alias) | {"resource_type"}
    choice_of = {alias: n for n, (group, _) in enumerate(choices) for alias in group}
    whole = frozenset(required).union(*(group for group, _ in choices))
    return _Spec(fields, tuple(sorted(required)), tuple(choices), choice_of, order, missing, renamed, whole)


def _field(annotation: Any) -> _Field | None:
    """How to check one element's JSON value; None when only the model can tell (left to it)."""
    annotation = _optional(annotation)
    many = typing.get_origin(annotation) is list
    if many:
        annotation = _optional(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        return None  # fhir_comments (a string or a list of them): rare, left to the model
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        if issubclass(annotation, FhirElementOrResourceBase):
            return None  # a resource of any type (contained, Bundle.entry.resource)
        model = annotation.get_model_klass()
        if model.__name__ == "FHIRPrimitiveExtension":
            return None  # `_birthDate`: its model has validators of its own
        return _Field(many, model, None)
    try:
        return _Field(many, None, _adapter(annotation))
    except Exception:  # noqa: BLE001 - a type pydantic cannot adapt alone: left to the model
        return None


def _optional(annotation: Any) -> Any:
    """`Optional[X]` / `X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def conforms(model: Model, resource: dict[str, Any]) -> bool:
    """True only when validating `resource` with `model` is sure to find no problem (False: ask the model)."""
    try:
        return _conforms(spec(model), resource, True)
    except RecursionError:
        return False


def _conforms(table: _Spec, node: Any, top: bool = False, depth: int = 0) -> bool:
    if type(node) is not dict or not node or depth > MAX_DEPTH:
        return False
    fields = table.fields
    for key, value in node.items():
        field = fields.get(key)
        if field is None:
            if top and key == "resourceType":
                continue  # the caller chose the model by it
            return False
        if not _element_conforms(field, value, depth):
            return False
    return not table.whole or _whole_conforms(table, node)


def _element_conforms(field: _Field, value: Any, depth: int = 0) -> bool:
    """True only when the model is sure to find nothing in this one element's value."""
    if value is None:
        return False
    items: list[Any] | tuple[Any]
    if field.many:
        if type(value) is not list or not value:
            return False
        items = value
    else:
        items = (value,)
    if field.model is not None:
        inner = spec(field.model)
        return all(_conforms(inner, item, False, depth + 1) for item in items)
    check = field.check
    if check is None:  # neither a model nor a validator: nothing here can vouch for it
        return False
    for item in items:
        if item is None or type(item) in (dict, list):
            return False
        try:
            if check(item) is None:  # a value the model would hold as absent: its own checks then decide
                return False
        except Exception:  # noqa: BLE001 - refused (or the validator failed): the model will tell
            return False
    return True


def _whole_conforms(table: _Spec, node: dict[str, Any]) -> bool:
    """The checks the model makes of the whole once each element passed: required elements, one value[x]."""
    for key in table.required:
        if node.get(key) is None:
            return False
    if not table.choices:
        return True
    given = [0] * len(table.choices)
    for key, value in node.items():  # a node has few elements; a value[x] group may have fifty
        group = table.choice_of.get(key)
        if group is not None and value is not None:
            given[group] += 1
    return all(n <= 1 and (n or not one_required) for n, (_, one_required) in zip(given, table.choices, strict=True))


def by_element(model: Model, resource: dict[str, Any],
               validate: Callable[[Model, dict[str, Any]], list[Located]]) -> list[Located] | None:
    """The model's problems in a resource `conforms` did not vouch for, found by validating with `validate` (the
    full model) only the top-level elements this module cannot vouch for, each alone in a resource of its own.

    pydantic reports a model's problems field by field, in the order of its fields (a required field absent:
    `Field required`), then each unknown element in the order sent; a field's problems are its value's own. The
    whole-resource checks (a required primitive, one value[x], a null in a list) run only once no field has a
    problem. So this gives the model's list; None whenever it cannot be sure (then the caller validates the whole
    resource): no element at fault but a whole-resource check this module cannot vouch for, a null in a list, a
    Python name pydantic would also take, or the library failing on an element."""
    table = spec(model)
    kind = resource.get("resourceType")
    placed: list[tuple[int, int, list[Located]]] = []  # (field position or past the last, order sent, problems)
    asked: list[str] = []  # the elements the model was asked about
    for sent, (key, value) in enumerate(resource.items()):
        if key == "resourceType":
            continue
        if value is None or key in table.names or (type(value) is list and any(item is None for item in value)):
            return None
        field = table.fields.get(key)
        if field is not None and _element_conforms(field, value):
            continue
        asked.append(key)
        try:
            found = [p for p in validate(model, {"resourceType": kind, key: value}) if p[0][:1] == (key,)]
        except Exception:  # noqa: BLE001 - RecursionError or the library failing: the caller decides
            return None
        if found:
            placed.append((table.order.get(key, len(table.order)), sent, found))
    absent = [key for key in table.missing if key not in resource]
    if absent:
        try:
            empty = validate(model, {"resourceType": kind})
        except Exception:  # noqa: BLE001 - the model refusing an empty resource: fall back to the full check
            return None
        for key in absent:
            found = [p for p in empty if p[0] == (key,)]
            if not found:
                return None
            placed.append((table.order[key], -1, found))
    if not placed:
        # No element at fault: the whole-resource checks then run, and pass when these do.
        # Only when no element the model was asked about takes part in them (what the model made of its value,
        # null or not, is not known here).
        return [] if _whole_conforms(table, resource) and table.whole.isdisjoint(asked) else None
    placed.sort(key=lambda x: (x[0], x[1]))
    return [p for _, _, found in placed for p in found]


# Resource types whose findings may be kept between bundles: they describe the sender, never a patient or a result.
CACHEABLE = frozenset({"Organization", "Practitioner", "PractitionerRole", "Device", "Provenance", "MessageHeader",
                       "Location", "Endpoint"})


class ProblemCache:
    """The model's findings for recurring resources, by a digest of the exact JSON value (types and key order
    included: `1`, `"1"`, `true` and `1.0` differ). At most `size` entries (least recently used go first) of at
    most `max_problems` findings each."""

    def __init__(self, size: int = 512, max_problems: int = 25) -> None:
        self.size, self.max_problems = size, max_problems
        self._kept: LRUCache[bytes, list[Located]] = LRUCache(maxsize=size)
        self._lock = threading.Lock()  # the host may parse reports on several threads

    @staticmethod
    def key(resource: dict[str, Any]) -> bytes:
        return hashlib.blake2b(repr(resource).encode("utf-8", "surrogatepass"), digest_size=20).digest()

    def get(self, key: bytes) -> list[Located] | None:
        with self._lock:
            found = self._kept.get(key)
        return None if found is None else list(found)

    def put(self, key: bytes, problems: list[Located]) -> None:
        if len(problems) > self.max_problems or self.size == 0:  # (a cache of size 0 refuses every entry)
            return
        with self._lock:
            self._kept[key] = list(problems)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
