"""Asks for the invocation context and uses a named http output binding."""

import json

import azure.functions as func


def main(req: func.HttpRequest, context: func.Context, res: func.Out[func.HttpResponse]) -> None:
    res.set(func.HttpResponse(json.dumps({"function_name": context.function_name,
                                          "invocation_id": context.invocation_id}),
                              status_code=202, mimetype="application/json"))
