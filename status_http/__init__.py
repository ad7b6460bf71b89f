"""GET /api/reports/{id} and GET /api/reports: a sender polls one report or lists its own."""

import azure.functions as func

from shared import api


def main(req: func.HttpRequest) -> func.HttpResponse:
    return api.guarded(api.report_status, req)
