"""Generated HL7 v2 ORU^R01 reports: ~1 KB single messages and a ~50 MB batch, all valid (every item accepted)."""

from __future__ import annotations

HL7 = "application/hl7-v2"
MAX_ITEMS = 10_000  # the app rejects a report with more items

_TESTS = (
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "NM", "mg/dL", "70-99"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "NM", "mg/dL", "0.6-1.3"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "NM", "g/dL", "12.0-16.0"),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "NM", "10*3/uL", "4.5-11.0"),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "NM", "mmol/L", "136-145"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "NM", "mmol/L", "3.5-5.1"),
)


def _message(n: int, observations: int, note: str = "") -> str:
    """One ORU^R01 message (MSH, PID, OBR, `observations` OBX), segments separated by CR."""
    day = 1 + n % 28
    segments = [
        f"MSH|^~\\&|BENCHLIS|BENCH HOSPITAL LAB^05D0000001^CLIA|INTAKE|STATE DOH|202611{day:02d}083000||"
        f"ORU^R01^ORU_R01|BENCH-{n:09d}|P|2.5.1",
        f"PID|1||MRN{n:09d}^^^BENCH HOSP^MR||DOE^JANE^Q||19840512|F|||{n % 900 + 1} Elm St^^Springfield^IL^62701",
        f"OBR|1|ORD{n:09d}|ACC{n:09d}|24323-8^Comprehensive metabolic panel^LN|||202611{day:02d}071500",
    ]
    for i in range(observations):
        code, name, kind, unit, ref = _TESTS[i % len(_TESTS)]
        value = f"{(n * 7 + i * 13) % 90 + 10}.{(n + i) % 10}"
        segments.append(
            f"OBX|{i + 1}|{kind}|{code}^{name}^LN||{value}|{unit}^{unit}^UCUM|{ref}||||F|||202611{day:02d}080000"
        )
        if note:
            segments.append(f"NTE|{i + 1}|L|{note}")
    return "\r".join(segments) + "\r"


def small_report(n: int) -> bytes:
    """A valid ~1 KB ORU^R01 report (one message, 6 observations); `n` makes it unique."""
    return _message(n, 6).encode("ascii")


def big_report(target_bytes: int, start: int = 1) -> tuple[bytes, int]:
    """A valid FHS/BHS batch just under `target_bytes`, with at most MAX_ITEMS messages. Returns (body, messages).

    Messages are sized so the batch stays under the item limit: about target/9,500 bytes each.
    """
    messages = min(9_500, MAX_ITEMS - 1)
    per_message = max(600, target_bytes // messages)
    # One message with 5 observations and no notes is ~800 bytes; notes on each observation fill the rest.
    base = len(_message(start, 5, "x"))
    note_len = max(1, (per_message - base) // 5)
    note = ("Specimen received in good condition; result verified by second technologist. " * 200)[:note_len]
    head = "FHS|^~\\&|BENCHLIS|BENCH HOSPITAL LAB|INTAKE|STATE DOH|20261120083000\r" \
           "BHS|^~\\&|BENCHLIS|BENCH HOSPITAL LAB|INTAKE|STATE DOH|20261120083000\r"
    parts = [head]
    size = len(head)
    count = 0
    tail_reserve = 64
    while count < messages:
        msg = _message(start + count, 5, note)
        if size + len(msg) + tail_reserve > target_bytes:
            break
        parts.append(msg)
        size += len(msg)
        count += 1
    parts.append(f"BTS|{count}\rFTS|1\r")
    return "".join(parts).encode("ascii"), count
