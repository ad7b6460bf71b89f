"""GET /api/openapi.json: the API's OpenAPI 3.1 document (anonymous)."""

import azure.functions as func

from shared import api


def main(req: func.HttpRequest) -> func.HttpResponse:
    return api.openapi_document(req)
