"""Measure peak memory and throughput of the report-format parsers on generated ~50 MB bodies: the minimal CSV, a
SimpleReport bulk upload CSV, HL7 v2 and NDJSON.

Usage: python bench/formats_memory.py [--mb 50] [--format csv|simplereport|hl7|ndjson|entries|bundle|all]

`entries` is one FHIR Bundle of nothing but empty entries (3 MB = a million of them): the item is refused at the
entry cap, and memory must stay within about ten times the body. `bundle` is one FHIR Bundle of real entries.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.formats import parse_report  # noqa: E402

CONTENT_TYPES = {
    "csv": "text/csv",
    "simplereport": "text/csv",
    "hl7": "application/hl7-v2",
    "ndjson": "application/fhir+ndjson",
    "entries": "application/fhir+json",
    "bundle": "application/fhir+json",
}
# A SimpleReport upload row with every column its guide lists (values vary per row in _record).
SIMPLEREPORT_HEADER = (
    "patient_id,patient_last_name,patient_first_name,patient_middle_name,patient_street,patient_street2,patient_city,"
    "patient_state,patient_zip_code,patient_county,patient_phone_number,patient_dob,patient_gender,patient_race,"
    "patient_ethnicity,patient_preferred_language,patient_email,accession_number,equipment_model_name,"
    "test_performed_code,test_result,order_test_date,specimen_collection_date,testing_lab_specimen_received_date,"
    "test_result_date,date_result_released,specimen_type,ordering_provider_id,ordering_provider_last_name,"
    "ordering_provider_first_name,ordering_provider_middle_name,ordering_provider_street,ordering_provider_street2,"
    "ordering_provider_city,ordering_provider_state,ordering_provider_zip_code,ordering_provider_phone_number,"
    "testing_lab_clia,testing_lab_name,testing_lab_street,testing_lab_street2,testing_lab_city,testing_lab_state,"
    "testing_lab_zip_code,testing_lab_phone_number,pregnant,employed_in_healthcare,symptomatic_for_disease,"
    "illness_onset_date,resident_congregate_setting,residence_type,hospitalized,icu,ordering_facility_name,"
    "ordering_facility_street,ordering_facility_street2,ordering_facility_city,ordering_facility_state,"
    "ordering_facility_zip_code,ordering_facility_phone_number,comment,test_result_status\r\n"
)
_RESULTS = ("Detected", "Not Detected", "260373001", "Negative", "Positive", "260415000")
_SPECIMENS = ("Nasal Swab", "445297001", "Anterior nares swab", "258500001")
_DATES = ("12/20/2021 14:00", "1/5/2022 9:05 CT", "12/21/2021", "2/26/2024 16:30 America/Chicago")


def generate(kind: str, size: int) -> bytes:
    """Build a body of about `size` bytes; realistic rows, each slightly different."""
    if kind == "entries":
        count = max(1, (size - 50) // 3)
        return b'{"resourceType":"Bundle","type":"collection","entry":[' + b",".join([b"{}"] * count) + b"]}"
    if kind == "bundle":  # the NDJSON records' entries, all in one Bundle (up to the entry cap)
        entries = [e for n in range(1, size // 600 + 2) for e in json.loads(_record("ndjson", n))["entry"]]
        return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries[:9_999]}).encode()
    out = bytearray()
    if kind == "simplereport":
        out += SIMPLEREPORT_HEADER.encode()
    if kind == "csv":
        out += b"message_id,patient_id,patient_state,test_code,test_name,result,result_units,specimen_collected_at,comment\r\n"
    if kind == "hl7":
        out += b"FHS|^~\\&|BENCH|BENCH LAB|ELR|DOH|20240101000000\rBHS|^~\\&|BENCH|BENCH LAB|ELR|DOH|20240101000000\r"
    n = 0
    while len(out) < size:
        n += 1
        out += _record(kind, n)
    if kind == "hl7":
        out += f"BTS|{n}\rFTS|1\r".encode()
    return bytes(out)


def _record(kind: str, n: int) -> bytes:
    if kind == "simplereport":
        date = _DATES[n % 4]
        return (
            f"P{n:08d},Doe,Jane{n % 97},,{n % 900 + 100} Main St,,Birmingham,AL,{35200 + n % 99},Jefferson,"
            f"205-999-{n % 9000 + 1000},{1 + n % 12}/{1 + n % 28}/19{50 + n % 50},{'FM'[n % 2]},White,"
            f"Not Hispanic or Latino,,jane{n}@example.com,A{n},ID NOW,94534-5,{_RESULTS[n % 6]},{date},{date},,{date},,"
            f"{_SPECIMENS[n % 4]},1013012657,Smith MD,John,,400 Main Street,,Birmingham,AL,35228,205-888-2000,"
            f"01D1058442,My Testing Lab,300 North Street,,Birmingham,AL,35228,205-888-2000,N,N,{'YN'[n % 2]},,N,,N,N,"
            f'My Urgent Care,400 Main Street,Suite 100,Birmingham,AL,35228,205-888-2000,"sample {n}, recollected",F\r\n'
        ).encode()
    if kind == "csv":
        return (
            f'M{n},P{n:08d},MN,2345-7,"Glucose, serum",{90 + n % 30},mg/dL,2024-01-{1 + n % 28:02d}T07:{n % 60:02d}:00-06:00,'
            f'"fasting; sample {n}\nsecond line"\r\n'
        ).encode()
    if kind == "hl7":
        return (
            f"MSH|^~\\&|BENCH|BENCH LAB^12D3456789^CLIA|ELR|DOH|20240101120000||ORU^R01^ORU_R01|B{n}|P|2.5.1\r"
            f"PID|1||P{n:08d}^^^BENCH^MR||DOE^JANE||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701\r"
            f"ORC|RE|O{n}|F{n}\r"
            f"OBR|1|O{n}|F{n}|2345-7^Glucose^LN|||20240101{n % 24:02d}0000-0600\r"
            f"OBX|1|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||{90 + n % 30}|mg/dL^mg/dL^UCUM|70-99|N|||F\r"
            f"NTE|1|L|Fasting specimen \\T\\ hemolysis index normal\r"
            f"SPM|1|S{n}||119297000^Blood^SCT|||||||||||||20240101{n % 24:02d}0000-0600\r"
        ).encode()
    bundle = {
        "resourceType": "Bundle", "id": f"b{n}", "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"value": f"P{n:08d}"}], "address": [{"state": "MN"}]}},
            {"resource": {"resourceType": "Specimen", "collection": {"collectedDateTime": "2024-01-01T07:00:00-06:00"}}},
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
                          "valueQuantity": {"value": 90 + n % 30, "unit": "mg/dL"}, "performer": [{"display": "Bench Lab"}]}},
        ],
    }
    return json.dumps(bundle).encode() + b"\n"


def _memory_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB; Linux /proc, else ru_maxrss for both."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak, peak


def _reset_peak() -> None:
    """Forget the peak reached while generating the input (Linux >= 4.0), so only parsing is measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(kind: str, size_mb: float, trace: bool) -> dict[str, float]:
    raw = generate(kind, int(size_mb * 1_000_000))
    gc.collect()
    _reset_peak()
    before, _ = _memory_kib()
    start, cpu_start = time.perf_counter(), time.process_time()
    items = accepted = 0
    for result in parse_report(raw, CONTENT_TYPES[kind], "bench"):
        items += 1
        accepted += result.item is not None
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start  # on a shared machine the CPU time is the steadier figure
    _, peak = _memory_kib()
    traced_peak = -1
    if trace:  # a second, much slower pass: the parser's own Python allocations, body excluded
        tracemalloc.start()
        for _ in parse_report(raw, CONTENT_TYPES[kind], "bench"):
            pass
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "input_mb": len(raw) / 1e6,
        "items": items,
        "accepted": accepted,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "items_per_s": items / elapsed,
        "mb_per_s": len(raw) / 1e6 / elapsed,
        "rss_before_mb": before / 1024,
        "rss_peak_mb": peak / 1024,
        "growth_mb": (peak - before) / 1024,
        "traced_peak_kib": traced_peak / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--format", choices=[*CONTENT_TYPES, "all"], default="all")
    parser.add_argument("--trace", action="store_true", help="also measure with tracemalloc (slow)")
    args = parser.parse_args()
    if args.format == "all":
        # One process per format so each peak RSS is its own.
        for kind in CONTENT_TYPES:
            extra = ["--trace"] if args.trace else []
            subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--format", kind, *extra], check=True)
        return
    stats = measure(args.format, args.mb, args.trace)
    print(
        f"{args.format:12} {stats['input_mb']:.1f} MB, {stats['items']} items ({stats['accepted']} accepted) "
        f"in {stats['seconds']:.1f} s ({stats['cpu_seconds']:.1f} s CPU) = {stats['items_per_s']:.0f} items/s, "
        f"{stats['mb_per_s']:.1f} MB/s; "
        f"RSS {stats['rss_before_mb']:.0f} MB with the body loaded, peak while parsing {stats['rss_peak_mb']:.0f} MB "
        f"(+{stats['growth_mb']:.1f} MB)"
        + (f"; tracemalloc peak {stats['traced_peak_kib']:.0f} KiB" if args.trace else "")
    )


if __name__ == "__main__":
    main()
