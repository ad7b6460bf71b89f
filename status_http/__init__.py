"""GET /api/reports/{id} and GET /api/reports: a sender polls one report or lists its own."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.answer(api.report_status, req)
