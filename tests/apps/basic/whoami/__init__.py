"""Answers with the id of the worker process that ran it (for FUNCTIONS_WORKER_PROCESS_COUNT tests)."""

import os

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(os.getpid()))
