"""GET /api/health: anonymous; whether storage answers, and the queue depths."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.on_http_threads(api.health_guarded, req)
