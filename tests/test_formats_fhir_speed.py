"""The FHIR parser's fast paths (the standard JSON parser for small bodies, fhir._loaded; shared/formats/fhir_fast.py:
the one-sided model check, the element-wise model, the findings kept for recurring resources) give exactly what
streaming and the full model give: every item, error and warning, on every real sample and on many mutations of
them. Correctness only: bench/fhir_speed.py measures the speed."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from shared.formats import ContentError, ItemResult, fhir, fhir_fast
from shared.formats.fhir_fast import ProblemCache, by_element, conforms

SAMPLES = Path(__file__).parent / "samples"
REAL = SAMPLES / "real"


def _real_documents() -> list[Any]:
    documents = []
    for path in sorted(REAL.glob("**/*")):
        if path.suffix not in (".fhir", ".json", ".ndjson"):
            continue
        text = path.read_text()
        decoder, at = json.JSONDecoder(parse_float=Decimal), 0
        while True:  # one JSON value after another (SimpleReport's NDJSON fixtures are pretty-printed)
            while at < len(text) and text[at].isspace():
                at += 1
            if at >= len(text):
                break
            try:
                value, at = decoder.raw_decode(text, at)
            except ValueError:
                break
            documents.append(value)
    return documents


DOCUMENTS = _real_documents()
RESOURCES = [entry["resource"] for doc in DOCUMENTS if isinstance(doc, dict)
             for entry in doc.get("entry", []) if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)]


def _dump(results: list[ItemResult]) -> list[Any]:
    return [(r.index, r.item.model_dump(mode="json") if r.item is not None else None,
             [i.model_dump(mode="json") for i in r.errors], [i.model_dump(mode="json") for i in r.warnings])
            for r in results]


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser as it was: streamed, every resource through the full model, nothing kept."""
    monkeypatch.setattr(fhir, "_loaded", lambda data: None)
    monkeypatch.setattr(fhir, "conforms", lambda model, resource: False)
    monkeypatch.setattr(fhir, "by_element", lambda model, resource, validate: None)
    monkeypatch.setattr(fhir, "PROBLEMS", ProblemCache(size=0))


def _outcome(parse_name: str, raw: bytes) -> Any:
    """What parsing gives: the dumped items, or the report-level refusal (e.g. a pretty-printed NDJSON body)."""
    try:
        return _dump(list(getattr(fhir, parse_name)(raw, "r1")))
    except ContentError as refused:
        return ("refused", refused.issue.code)


def _both(bodies: list[tuple[str, bytes]]) -> tuple[list[Any], list[Any]]:
    fhir.PROBLEMS.clear()
    fast = [_outcome(parse_name, raw) for parse_name, raw in bodies]
    again = [_outcome(parse_name, raw) for parse_name, raw in bodies]
    assert fast == again  # with the findings kept from the first pass
    with pytest.MonkeyPatch.context() as patch:
        _slow(patch)
        slow = [_outcome(parse_name, raw) for parse_name, raw in bodies]
    return fast, slow


def test_every_sample_gives_what_the_full_model_gives() -> None:
    bodies = []
    for path in sorted(p for p in SAMPLES.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        bodies += [("parse_bundle", raw), ("parse_ndjson", raw)]
    for doc in DOCUMENTS:  # SimpleReport's wire form: one compact bundle per line
        bodies.append(("parse_ndjson", json.dumps(doc, default=str, separators=(",", ":")).encode() + b"\n"))
    fast, slow = _both(bodies)
    assert fast == slow


def test_the_real_samples_take_the_fast_path() -> None:
    """Not a speed test: that the fast paths are taken for real bundles (else they only cost time)."""
    vouched = sum(conforms(get_fhir_model_class(r["resourceType"]), r) for r in RESOURCES)
    assert vouched >= 0.8 * len(RESOURCES)
    for path in sorted((REAL / "simplereport-fhir").glob("*.json")) + [REAL / "reportstream" / "fhir" / "valid.fhir"]:
        assert fhir._loaded(path.read_bytes()) is not None, path.name


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _nodes(child, path + (key,))


CHANGES = ["5", "x", "null", "[]", "{}", "list", "delete", "wrap", "true", "1.5", "str5", "empty", "spaces",
           "none_in_list", "ext", "python_name", "unknown", "second_choice", "bad_date", "leap", "deep", "dup"]


def _mutated(rng: random.Random, doc: Any) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 4)):
        paths = [p for p in _nodes(doc) if p]
        if not paths:
            break
        path = rng.choice(paths)
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        key, node = path[-1], parent[path[-1]]
        change = rng.choice(CHANGES)
        if change == "delete":
            if isinstance(parent, dict):
                del parent[key]
        elif change == "none_in_list":
            if isinstance(node, list):
                node.insert(rng.randint(0, len(node)), None)
        elif change == "dup":
            if isinstance(parent, list):
                parent.append(copy.deepcopy(node))
        elif change in ("ext", "python_name", "unknown", "second_choice"):
            target = node if isinstance(node, dict) else parent if isinstance(parent, dict) else None
            if target is None:
                continue
            name = str(rng.choice(list(target) or ["status"]))
            choices: dict[str, dict[str, Any]] = {
                "ext": {f"_{name}": rng.choice([{"extension": [{"url": "u", "valueString": "v"}]}, {}, 5])},
                "python_name": {rng.choice([f"{name}__ext", "resource_type", "class_fhir"]): {"extension": []}},
                "unknown": {"notAnElement": "x"},
                "second_choice": {rng.choice(["valueString", "effectiveDateTime", "valueBoolean"]): "2024-01-01"},
            }
            target.update(choices[change])
        else:
            parent[key] = {
                "5": 5, "x": "x", "null": None, "[]": [], "{}": {}, "list": [node, node], "wrap": [node], "true": True,
                "1.5": Decimal("1.5"), "str5": "5", "empty": "", "spaces": " a  b ", "bad_date": "2023-02-30",
                "leap": "2016-12-31T23:59:60Z", "deep": [[[[[{"a": [node]}]]]]],
            }[change]
    return doc


@pytest.mark.parametrize("seed", range(2))
def test_mutations_give_what_the_full_model_gives(seed: int) -> None:
    rng = random.Random(seed)
    bodies = []
    for _ in range(150):
        raw = json.dumps(_mutated(rng, rng.choice(DOCUMENTS)), default=str).encode()
        bodies.append(("parse_bundle", raw))
        if rng.random() < 0.1:  # a broken or trailing byte, an escape, a constant, a second entry
            cut = rng.randint(0, len(raw))
            bodies.append(("parse_bundle", raw[:cut] + rng.choice([b"", b"}", b"x", b"\xff", b" {}", b"\\u00e9", b"\\ud800",
                                                                  b"NaN", b'"entry":[],', b"\x0c"]) + raw[cut:]))
    fast, slow = _both(bodies)
    assert fast == slow


@pytest.mark.parametrize("seed", range(2))
def test_the_fast_check_never_vouches_for_a_resource_the_model_faults(seed: int) -> None:
    """One-sided: conforms() True means the model finds nothing; by_element() gives the model's own list."""
    rng = random.Random(100 + seed)
    for n in range(1200):
        resource = RESOURCES[n % len(RESOURCES)] if n < len(RESOURCES) else _mutated(rng, rng.choice(RESOURCES))
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        try:
            model = get_fhir_model_class(kind) if isinstance(kind, str) else None
        except (KeyError, ValueError, TypeError):
            model = None
        if model is None:
            continue
        try:
            full = fhir._validated(model, resource)
        except Exception:  # noqa: BLE001 - the library failing: by_element must not answer
            full = None
        if conforms(model, resource):
            assert full == [], (resource, full)
        try:
            found = by_element(model, resource, fhir._validated)
        except RecursionError:
            continue
        if found is not None:
            assert found == full, (resource, found, full)


def test_the_cache_keeps_no_patient_and_is_bounded() -> None:
    assert "Patient" not in fhir_fast.CACHEABLE and "Observation" not in fhir_fast.CACHEABLE
    cache = ProblemCache(size=3, max_problems=2)
    for n in range(10):
        cache.put(ProblemCache.key({"resourceType": "Device", "id": str(n)}), [((), "x", False)])
    cache.put(ProblemCache.key({"resourceType": "Device", "id": "many"}), [((), "x", False)] * 3)
    assert len(cache._kept) == 3
    assert cache.get(ProblemCache.key({"resourceType": "Device", "id": "many"})) is None
    assert cache.get(ProblemCache.key({"resourceType": "Device", "id": "9"})) == [((), "x", False)]
    # The exact JSON value: types differ, so do keys.
    keys = {ProblemCache.key({"a": v}) for v in (1, "1", True, Decimal("1.0"), Decimal("1.00"), 1.0, None)}
    assert len(keys) == 7


def test_the_standard_parser_is_left_out_where_streaming_must_decide() -> None:
    entry = b'{"resource":{"resourceType":"Device"}}'
    assert fhir._loaded(b'{"resourceType":"Bundle","entry":[' + entry + b"]}") is not None
    for body in (
        b'{"resourceType":"Bundle","entry":[],"entry":[' + entry + b"]}",  # a second entry: streaming joins them
        b'{"resourceType":"Bundle","\\u0065ntry":[],"entry":[' + entry + b"]}",  # the same, spelled otherwise
        b'{"resourceType":"Bundle","entry":{}}',
        b'{"resourceType":"Bundle","entry":null}',
        b'[{"resourceType":"Bundle"}]',
        b'{"resourceType":"Bundle"} x',
        b'{"resourceType":"Bundle","id":NaN}',
        b'{"resourceType":"Bundle","id":"\\ud800"}',
        b'{"resourceType":"Bundle","id":"\xc3("}',
        b'{"resourceType":"Bundle","entry":[' + b",".join([entry] * 10_001) + b"]}",  # past MAX_ENTRY_VALUES
        b'{"resourceType":"Bundle","entry":[' + b",".join([b"{}"] * 10_001) + b"]}",  # past MAX_ENTRIES
        b'{"resourceType":"Bundle","entry":[' + b",".join(
            [b'{"resource":{"resourceType":"Observation"}}'] * 1_001) + b"]}",  # past MAX_OBSERVATIONS
    ):
        assert fhir._loaded(body) is None, body[:60]


@pytest.mark.parametrize("depth", [5, 30, 40, 200])
def test_deep_nesting_is_left_to_the_model(depth: int) -> None:
    extension: dict[str, Any] = {"url": "x"}
    for _ in range(depth):
        extension = {"url": "x", "extension": [extension]}
    patient = {"resourceType": "Patient", "extension": [extension]}
    model = get_fhir_model_class("Patient")
    assert conforms(model, patient) == (depth < fhir_fast.MAX_DEPTH)
    body = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}).encode()
    fast, slow = _both([("parse_bundle", body)])
    assert fast == slow
