"""Optional downstream delivery: POST the normalised NDJSON to DELIVERY_URL, keyed by the report id."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import httpx

from shared import telemetry

NDJSON = "application/x-ndjson"


class DeliveryError(Exception):
    """Downstream did not take the report. `transient` says whether a later try may succeed."""

    def __init__(self, message: str, transient: bool, http_status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.http_status = http_status


@lru_cache(maxsize=4)
def _client(timeout: float) -> httpx.Client:
    # One pooled client per process: connections to the downstream are reused across reports.
    return httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)


def is_transient_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def deliver(url: str, report_id: str, body: Iterable[bytes], length: int, timeout: float) -> int:
    """POST the body (in a CLIENT span whose trace context goes downstream as `traceparent`); return the 2xx
    status, or raise DeliveryError."""
    headers = {"Content-Type": NDJSON, "Idempotency-Key": report_id, "Content-Length": str(length)}
    with telemetry.client_call("POST", url, headers) as span:
        try:
            response = _client(timeout).post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"downstream timed out ({type(exc).__name__})", transient=True) from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"downstream unreachable ({type(exc).__name__})", transient=True) from exc
        code = response.status_code
        span.set_attribute("http.response.status_code", code)
        if 200 <= code < 300:
            return code
        raise DeliveryError(f"downstream answered {code}", transient=is_transient_status(code), http_status=code)
