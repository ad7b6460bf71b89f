"""scriptFile/entryPoint honoured: this module and function are what the host calls."""

import azure.functions as func


def handle(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("custom entry point")
