"""POST /api/validate: a dry run of processing's parsing and validation; nothing is stored."""

import azure.functions as func

from shared import api


def main(req: func.HttpRequest) -> func.HttpResponse:
    return api.guarded(api.validate, req)
