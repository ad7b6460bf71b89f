"""A literal route that must win over items/{id}."""

import json

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"fn": "item_latest"}), mimetype="application/json")
