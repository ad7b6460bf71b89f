"""Writes the request body to OK_QUEUE through the host's queue output binding (not the storage SDK)."""

import azure.functions as func

from tests.apps.events import record


def main(req: func.HttpRequest, msg: func.Out[str]) -> func.HttpResponse:
    msg.set(req.get_body().decode())
    record("enqueue_binding")
    return func.HttpResponse(status_code=202)
