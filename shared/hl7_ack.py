"""The HL7 v2 commit acknowledgement (MSA|CA) answered at intake, from the first MSH alone: no full parse."""

from __future__ import annotations

from datetime import UTC, datetime

from ulid import ULID

from shared.formats.hl7_segments import first_header

RECEIVING_APPLICATION = "LAB-INTAKE"


def first_msh(body: bytes) -> tuple[str, list[str]] | None:
    """The field separator and fields of the first MSH segment (fields[n - 1] is MSH-n for n >= 2), or None. The
    segment is the one the parser takes for the first message (a BOM, MLLP framing, FHS/BHS before it)."""
    line = first_header(body)
    if line is None:
        return None
    segment = line.decode("latin-1")
    separator = segment[3]
    return separator, segment.split(separator)


def commit_ack(body: bytes) -> bytes | None:
    """`MSH` + `MSA|CA|<MSH-10 of the first message>`, in the sender's own delimiters; None if no MSH is found."""
    found = first_msh(body)
    if found is None or len(found[1]) < 2:
        return None
    separator, fields = found

    def get(n: int) -> str:
        """MSH-n, 1-based like the standard."""
        return fields[n - 1] if len(fields) >= n else ""

    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH", fields[1], RECEIVING_APPLICATION, "", get(3), get(4), now, "", "ACK", str(ULID()),
        get(11) or "P", get(12) or "2.5.1",
    ]
    msa = ["MSA", "CA", get(10)]
    return (separator.join(msh) + "\r" + separator.join(msa) + "\r").encode("latin-1", "replace")
