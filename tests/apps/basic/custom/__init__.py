"""Status, headers, mimetype and charset of the HttpResponse reach the client."""

import logging

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    logging.info("custom function logging reaches the console")
    return func.HttpResponse("créé", status_code=201, headers={"X-Custom": "yes", "Location": "/api/x/1"},
                             mimetype="text/html", charset="utf-8")
