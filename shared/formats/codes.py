"""The ELR code sets, defined once: sex letters, result and specimen-type SNOMED CT codes, CDC race and ethnicity.

Every parser maps what its format carries (a FHIR gender word, an HL7 code, a CSV name) through these tables, so
the same result normalises to the same ELR core values whatever the source format (docs/formats.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

SNOMED_SYSTEMS = frozenset({"SCT", "SNM", "SNOMED", "SNOMED-CT", "SNOMEDCT", "HTTP://SNOMED.INFO/SCT", "2.16.840.1.113883.6.96"})
SNOMED_ID = re.compile(r"\d{6,18}")
CLIA = re.compile(r"\d{2}D\d{7}")  # CLIA numbers: two digits, D, seven digits
NPI = re.compile(r"\d{10}")


# Codes and code names are short. Only values up to this long are cached: the cache holds raw field values (a
# sender may put anything, patient data included, in a code field), so it is bounded in bytes (4,096 entries of at
# most 64 characters), not only in entries, and a long value is never kept after its report.
_CACHED_CHARS = 64


def _fold(value: str) -> str:
    return " ".join(value.replace("_", " ").split()).casefold()


_cached_fold = lru_cache(maxsize=4096)(_fold)  # the same few codes come in every message


def _key(value: str) -> str:
    """Case-, space- and underscore-insensitive lookup key: 'Not  Detected' and 'not_detected' meet."""
    return _cached_fold(value) if len(value) <= _CACHED_CHARS else _fold(value)


@dataclass(frozen=True)
class CodeSet:
    """A code system subset: code -> preferred name, plus other names senders use for the same code."""

    names: Mapping[str, str]
    aliases: Mapping[str, str] = field(default_factory=dict)
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup = {_key(code): code for code in self.names}
        lookup.update({_key(name): code for code, name in self.names.items()})
        lookup.update({_key(alias): code for alias, code in self.aliases.items()})
        object.__setattr__(self, "_lookup", lookup)

    def code(self, value: str | None) -> str | None:
        """The code for a code or a known name (any case); None when the value is not in the set."""
        if not value:
            return None
        return self._lookup.get(_key(value))

    def name(self, code: str | None) -> str | None:
        return self.names.get(code) if code else None

    def extended(self, names: Mapping[str, str] | None = None, aliases: Mapping[str, str] | None = None) -> CodeSet:
        """A copy with more codes or names (a format adds the spellings its senders use)."""
        return CodeSet({**self.names, **(names or {})}, {**self.aliases, **(aliases or {})})


# HL7 table 0001 (administrative sex). v2.5.1 also has A (ambiguous) and N (not applicable): HL7's own v2 -> FHIR
# concept map sends both to `other`, so they become O here.
Sex = Literal["F", "M", "O", "U"]
_SEX: dict[str, Sex] = {
    "f": "F", "female": "F", "m": "M", "male": "M", "o": "O", "other": "O", "a": "O", "n": "O",
    "ambiguous": "O", "not applicable": "O", "u": "U", "unknown": "U", "unk": "U",
}


def sex(value: str | None) -> Sex | None:
    """F, M, O or U from an HL7 0001 letter or a FHIR AdministrativeGender word; None when it is neither."""
    return _SEX.get(_key(value)) if value else None


# Qualitative results (SNOMED CT), as SimpleReport and ReportStream's COVID-19 schemas use them.
RESULTS = CodeSet(
    {
        "260373001": "Detected",
        "260415000": "Not detected",
        "10828004": "Positive",
        "260385009": "Negative",
        "455371000124106": "Invalid result",
        "419984006": "Inconclusive",
        "720735008": "Presumptive positive",
        "125154007": "Specimen unsatisfactory for evaluation",
        "82334004": "Indeterminate",
        "11214006": "Reactive",
        "131194007": "Non-Reactive",
        "895231008": "Not detected in pooled specimen",
        "42425007": "Equivocal",
        "373121007": "Test not done",
    },
    {"undetected": "260415000", "invalid": "455371000124106", "nonreactive": "131194007",
     "non reactive": "131194007"},
)

# Specimen types (SNOMED CT) most ELR senders use; the CSV format adds its own list of names.
SPECIMEN_TYPES = CodeSet(
    {
        "258500001": "Nasopharyngeal swab",
        "871810001": "Mid-turbinate nasal swab",
        "697989009": "Anterior nares swab",
        "258411007": "Nasopharyngeal aspirate",
        "258467004": "Nasopharyngeal washings",
        "433801000124107": "Nasopharyngeal and oropharyngeal swab",
        "461911000124106": "Oropharyngeal swab",
        "258529004": "Throat swab",
        "445297001": "Swab of internal nose",
        "119297000": "Blood specimen",
        "122555007": "Venous blood specimen",
        "258580003": "Whole blood sample",
        "119361006": "Plasma specimen",
        "119364003": "Serum specimen",
        "119342007": "Saliva specimen",
        "258607008": "Bronchoalveolar lavage fluid sample",
        "122575003": "Urine specimen",
    }
)

# Specimen names SimpleReport's bulk upload takes for a specimen_type (its ResultsUploaderCachingService list; its
# device database adds more). Where SimpleReport picks another code than SPECIMEN_TYPES for a name (saliva,
# oropharyngeal, mid-turbinate), a SimpleReport CSV means SimpleReport's code.
SIMPLEREPORT_SPECIMEN_NAMES: Mapping[str, str] = {
    "swab of internal nose": "445297001", "nasal swab": "445297001", "nasal": "445297001", "varied": "445297001",
    "nasopharyngeal swab": "258500001", "mid-turbinate nasal swab": "1293160008",
    "anterior nares swab": "697989009", "anterior nasal swab": "697989009",
    "nasopharyngeal aspirate": "258411007", "nasopharyngeal washings": "258467004",
    "nasopharyngeal wash": "258467004", "nasal aspirate": "429931000124105",
    "nasal aspirate specimen": "429931000124105", "throat swab": "258529004", "oropharyngeal swab": "258529004",
    "oral swab": "418932006", "sputum specimen": "119334006", "sputum": "119334006",
    "saliva specimen": "258560004", "saliva": "258560004", "serum specimen": "119364003", "serum": "119364003",
    "plasma specimen": "119361006", "plasma": "119361006", "whole blood sample": "258580003",
    "whole blood": "258580003", "venous blood specimen": "122555007", "venous whole blood": "122555007",
    "blood specimen": "119297000", "capillary blood specimen": "122554006", "fingerstick whole blood": "122554006",
    "dried blood spot specimen": "440500007", "dried blood spot": "440500007",
    "fingerstick blood dried blood spot": "440500007",
    "nasopharyngeal and oropharyngeal swab": "433801000124107",
    "nasal and throat swab combination": "433801000124107", "nasal and throat swab": "433801000124107",
    "lower respiratory fluid sample": "309171007", "lower respiratory tract aspirates": "309171007",
    "bronchoalveolar lavage fluid sample": "258607008", "bronchoalveolar lavage fluid": "258607008",
    "bronchoalveolar lavage": "258607008",
}

# Residence types (SNOMED CT) of SimpleReport's ask-on-entry questions.
RESIDENCE_TYPES = CodeSet(
    {
        "22232009": "Hospital", "2081004": "Hospital ship", "32074000": "Long term care hospital",
        "224929004": "Secure hospital", "42665001": "Nursing home", "30629002": "Retirement home",
        "74056004": "Orphanage", "722173008": "Prison-based care site", "20078004": "Substance abuse treatment center",
        "257573002": "Boarding house", "224683003": "Military accommodation", "284546000": "Hospice",
        "257628001": "Hostel", "310207003": "Sheltered housing", "57656006": "Penal institution",
        "285113009": "Religious institutional residence", "285141008": "Work (environment)", "32911000": "Homeless",
    }
)

# CDC Race & Ethnicity code set (PHIN VADS; HL7 v3 Race), plus the null flavours senders use for "not given".
RACE = CodeSet(
    {
        "1002-5": "American Indian or Alaska Native",
        "2028-9": "Asian",
        "2054-5": "Black or African American",
        "2076-8": "Native Hawaiian or Other Pacific Islander",
        "2106-3": "White",
        "2131-1": "Other Race",
        "ASKU": "Asked but unknown",
        "UNK": "Unknown",
    },
    {"black": "2054-5", "other": "2131-1", "unknown": "UNK", "refused": "ASKU", "ask, but unknown": "ASKU"},
)

# HL7 table 0189 letters (H, N, U) are the v2 spelling of the same concepts.
ETHNICITY = CodeSet(
    {"2135-2": "Hispanic or Latino", "2186-5": "Not Hispanic or Latino", "ASKU": "Asked but unknown", "UNK": "Unknown"},
    {"H": "2135-2", "N": "2186-5", "U": "UNK", "hispanic": "2135-2", "not hispanic": "2186-5", "unknown": "UNK",
     "refused": "ASKU"},
)


def coded_or_text(codes: CodeSet, code: str | None, text: str | Callable[[], str] | None = None) -> str | None:
    """The set's code for a code or name when known, else the sender's code or text as given (never a guess).
    `text` may be a function, asked only when the code alone does not settle it."""
    found = codes.code(code)
    if found:
        return found
    text = text() if callable(text) else text
    return codes.code(text) or (code or text or "").strip() or None


def _snomed(code: str | None, system: str | None) -> str | None:
    """The code when its system says SNOMED CT and it has the shape of a SNOMED CT id (6 to 18 digits)."""
    if code and system and system.strip().upper() in SNOMED_SYSTEMS and SNOMED_ID.fullmatch(code):
        return code
    return None


def result_values(value: str, display: str | None = None, system: str | None = None) -> tuple[str, str | None, str | None]:
    """(result, result_code, result_text) of one result value, the same whatever format carried it.

    A qualitative result known by its SNOMED CT code or its name gives that code as both `result` and
    `result_code`, and its preferred name as `result_text`; a code the sender labels SNOMED CT is kept as such.
    Anything else (a number, free text, a local code) stays as sent, with the sender's display text.
    """
    code = _snomed(value, system) or RESULTS.code(value) or RESULTS.code(display)
    if code:
        return code, code, RESULTS.name(code) or display or None
    return value or display or "", None, display or None


def specimen_type(code: str | None, name: str | None = None, system: str | None = None) -> str | None:
    """SNOMED CT code of a specimen type given by code (labelled SNOMED or known) or by known name; else None."""
    return _snomed(code, system) or SPECIMEN_TYPES.code(code) or SPECIMEN_TYPES.code(name)



def identifier(candidates: Iterable[tuple[str, bool | Callable[[], bool]]], shape: re.Pattern[str]) -> str | None:
    """Among (value, is it typed as this kind of identifier?) in order of preference: the first value of the right
    shape, else the first typed one. A sender's own code typed CLIA still counts; a well-formed CLIA/NPI wins over it.
    The type is asked for (lazily) only when the shape does not already settle it."""
    typed = None
    for value, is_typed in candidates:
        if not value:
            continue
        if shape.fullmatch(value):
            return value
        if typed is None and (is_typed() if callable(is_typed) else is_typed):
            typed = value
    return typed
