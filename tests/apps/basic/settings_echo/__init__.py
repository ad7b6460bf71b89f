"""Reports an app setting as the function sees it (os.environ)."""

import json
import os

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"value": os.environ.get(req.route_params["name"])}),
                             mimetype="application/json")
