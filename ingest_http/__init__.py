"""POST /api/reports: authenticate, store, enqueue, answer 202."""

import azure.functions as func

from shared import api


def main(req: func.HttpRequest) -> func.HttpResponse:
    return api.guarded(api.ingest, req)
