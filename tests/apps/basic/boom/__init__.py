"""Always fails: the host must answer 500 without the exception text."""

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret-internal-detail")
