"""Writes the request body to a queue with azure-storage-queue (base64, as the host expects)."""

import os

import azure.functions as func
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from tests.apps.events import record


def main(req: func.HttpRequest) -> func.HttpResponse:
    client = QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], req.route_params["queue"],
                                                message_encode_policy=TextBase64EncodePolicy())
    client.send_message(req.get_body().decode())
    record("enqueue", queue=req.route_params["queue"])
    return func.HttpResponse(status_code=202)
