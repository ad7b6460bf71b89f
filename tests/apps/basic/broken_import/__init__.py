"""Fails at import: the host reports it and serves the other functions."""

import module_that_does_not_exist  # noqa: F401


def main(req):
    return None
