"""GET /api/health: anonymous; whether storage answers, and the queue depths."""

import azure.functions as func

from shared import api


def main(req: func.HttpRequest) -> func.HttpResponse:
    return api.health_guarded(req)
