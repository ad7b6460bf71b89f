"""GET /api/waters/report/{id}/history: ReportStream's submission history of one report."""

import azure.functions as func

from shared import api


def main(req: func.HttpRequest) -> func.HttpResponse:
    return api.guarded(api.history, req)
