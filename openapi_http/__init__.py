"""GET /api/openapi.json: the API's OpenAPI 3.1 document (anonymous)."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.on_http_threads(api.openapi_document, req)
