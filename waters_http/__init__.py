"""POST /api/waters: ReportStream's submission endpoint, on the same intake as POST /api/reports."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.answer(api.waters, req)
