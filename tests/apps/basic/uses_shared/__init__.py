"""Imports a package at the app root, as `import shared` works in the real worker."""

import azure.functions as func
from basic_lib import greeting


def main(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(greeting())
