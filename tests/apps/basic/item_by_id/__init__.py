"""An async function with an int-constrained route parameter."""

import asyncio
import json

import azure.functions as func


async def main(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return func.HttpResponse(json.dumps({"fn": "item_by_id", "id": req.route_params["id"]}),
                             mimetype="application/json")
