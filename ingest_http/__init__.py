"""POST /api/reports: authenticate, store, enqueue, answer 202."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.answer(api.ingest, req)
