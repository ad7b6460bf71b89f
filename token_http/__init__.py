"""POST /api/token: a sender trades its signed JWT assertion for an access token (SMART Backend Services)."""

import azure.functions as func

from shared import api


async def main(req: func.HttpRequest) -> func.HttpResponse:
    return await api.answer(api.token, req)
