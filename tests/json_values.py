"""JSON values written one after another (pretty-printed, as SimpleReport stores its NDJSON fixtures, or one per
line), read back as a list: tests and bench/samples.py send them as NDJSON, one value per line, as senders do."""

from __future__ import annotations

import json
from typing import Any


def json_values(text: str) -> list[Any]:
    """Every JSON value in `text`, in order; ValueError if something between them is not JSON."""
    decoder, at, values = json.JSONDecoder(), 0, []
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values
