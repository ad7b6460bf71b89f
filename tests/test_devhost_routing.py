"""Route templates: parameters, optional parameters, constraints, precedence, 404 versus 405."""

import pytest

from devhost.routing import Route, RouteError, Router, full_template


def route(template: str, methods=None) -> Route:
    return Route(template, frozenset(m.upper() for m in methods) if methods else None, template)


def test_parameters_and_optional_parameter():
    r = route("api/reports/{id?}")
    assert r.match("/api/reports") == {}
    assert r.match("/api/reports/") == {}
    assert r.match("/api/reports/abc") == {"id": "abc"}
    assert r.match("/api/reports/abc/def") is None


def test_literals_match_case_insensitively():
    assert route("api/Health").match("/API/health") == {}


def test_int_and_other_constraints():
    r = route("api/items/{id:int}")
    assert r.match("/api/items/42") == {"id": "42"}
    assert r.match("/api/items/abc") is None
    assert route("api/x/{name:alpha}").match("/api/x/a1") is None
    assert route("api/x/{n:range(1,5)}").match("/api/x/6") is None
    assert route("api/x/{n:range(1,5)}").match("/api/x/3") == {"n": "3"}
    assert route("api/x/{s:minlength(3)}").match("/api/x/ab") is None
    assert route("api/x/{id:int?}").match("/api/x") == {}
    assert route("api/x/{g:guid}").match("/api/x/0f8fad5b-d9cb-469f-a165-70867728950e")


def test_catch_all_and_default():
    assert route("api/files/{*path}").match("/api/files/a/b/c") == {"path": "a/b/c"}
    assert route("api/page/{n=1}").match("/api/page") == {"n": "1"}


def test_complex_segment():
    assert route("api/file.{ext}").match("/api/file.csv") == {"ext": "csv"}


def test_literal_beats_parameter_whatever_the_order():
    router = Router()
    router.add(route("api/items/{id}"))
    router.add(route("api/items/latest"))
    assert router.match("/api/items/latest", "GET")[1].template == "api/items/latest"
    assert router.match("/api/items/7", "GET")[1].template == "api/items/{id}"


def test_404_and_405():
    router = Router()
    router.add(route("api/reports", ["post"]))
    assert router.match("/api/nothing", "GET")[0] == 404
    assert router.match("/api/reports", "GET")[0] == 405
    assert router.match("/api/reports", "post")[0] == 200


def test_prefix_joining():
    assert full_template("api", "/reports/") == "api/reports"
    assert full_template("", "reports") == "reports"


@pytest.mark.parametrize("template", ["api/{a?}/b", "api/{*rest}/x", "api//x", "api/{1bad}"])
def test_bad_templates(template):
    with pytest.raises(RouteError):
        route(template)
