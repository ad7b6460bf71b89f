"""No route and no methods: served at /api/default_route for every method."""

import azure.functions as func


def main(req: func.HttpRequest) -> str:
    return f"default {req.method}"
