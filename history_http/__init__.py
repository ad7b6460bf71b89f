"""GET /api/waters/report/{id}/history: ReportStream's submission history of one report."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.answer(api.history, req)
