"""Echoes what the host put in the HttpRequest."""

import hashlib
import json

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    body = req.get_body()
    return func.HttpResponse(
        json.dumps({
            "method": req.method,
            "url": req.url,
            "headers": dict(req.headers),
            "params": dict(req.params),
            "route_params": dict(req.route_params),
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }),
        mimetype="application/json",
    )
