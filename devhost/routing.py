"""HTTP route templates as ASP.NET Core routing reads them: `{param}`, `{param?}`, `{param:int}`, `{*rest}`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_PARAM = re.compile(r"\{([^{}]+)\}")
_GUID = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}|\{[0-9a-fA-F-]{36}\}"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SIMPLE_CONSTRAINTS = {
    "int": r"-?\d+", "long": r"-?\d+", "alpha": r"[A-Za-z]+", "bool": r"(?i:true|false)", "guid": _GUID,
    "double": _NUMBER, "float": _NUMBER, "decimal": _NUMBER, "datetime": r"[^/]+",
}


class RouteError(ValueError):
    """A route template the host would refuse."""


def _constraint_check(spec: str) -> tuple[str | None, Callable[[str], bool] | None]:
    """A regex for the value, or a check to run after matching, for one `:constraint`."""
    name, _, arg = spec.partition("(")
    name, arg = name.strip().lower(), arg[:-1] if arg.endswith(")") else arg
    if name in _SIMPLE_CONSTRAINTS:
        return _SIMPLE_CONSTRAINTS[name], None
    if name == "regex":
        return f"(?:{arg})", None
    if name in ("minlength", "maxlength", "length", "min", "max", "range"):
        nums = [int(x) for x in arg.split(",")]
        checks: dict[str, Callable[[str], bool]] = {
            "minlength": lambda v: len(v) >= nums[0],
            "maxlength": lambda v: len(v) <= nums[0],
            "length": lambda v: (len(v) == nums[0]) if len(nums) == 1 else nums[0] <= len(v) <= nums[1],
            "min": lambda v: v.lstrip("-").isdigit() and int(v) >= nums[0],
            "max": lambda v: v.lstrip("-").isdigit() and int(v) <= nums[0],
            "range": lambda v: v.lstrip("-").isdigit() and nums[0] <= int(v) <= nums[1],
        }
        return None, checks[name]
    raise RouteError(f"unknown route constraint {spec!r}")


@dataclass
class Route:
    """One compiled template (prefix included) with the function it leads to."""

    template: str
    methods: frozenset[str] | None  # upper-case; None = every method
    target: Any = None
    regex: re.Pattern[str] = field(init=False)
    checks: list[tuple[str, Callable[[str], bool]]] = field(init=False, default_factory=list)
    defaults: dict[str, str] = field(init=False, default_factory=dict)
    precedence: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        segments = [s for s in self.template.strip("/").split("/")] if self.template.strip("/") else []
        pattern, precedence = "", []
        for index, segment in enumerate(segments):
            if not segment:
                raise RouteError(f"empty segment in route {self.template!r}")
            piece, rank, optional = self._segment(segment, index == len(segments) - 1)
            pattern += f"(?:/{piece})?" if optional else f"/{piece}"
            precedence.append(rank)
        self.regex = re.compile(f"^{pattern}/?$", re.IGNORECASE)
        # ASP.NET tries literal segments before parameters, and constrained parameters before free ones.
        self.precedence = tuple(precedence) + (9,)

    def _segment(self, segment: str, last: bool) -> tuple[str, int, bool]:
        params = list(_PARAM.finditer(segment))
        if not params:
            return re.escape(segment), 0, False
        regex, pos, optional, rank = "", 0, False, 1
        for m in params:
            regex += re.escape(segment[pos:m.start()])
            pos = m.end()
            spec = m.group(1).strip()
            catch_all = spec.startswith("*")
            spec = spec.lstrip("*")
            name, *constraints = spec.split(":")
            default = None
            if "=" in name:
                name, default = name.split("=", 1)
            if name.endswith("?"):
                name, optional = name[:-1], True
            for c in constraints:
                if c.endswith("?"):
                    c, optional = c[:-1], True
            constraints = [c[:-1] if c.endswith("?") else c for c in constraints]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise RouteError(f"bad route parameter name {name!r}")
            if catch_all and not last:
                raise RouteError("a catch-all parameter must be the last segment")
            value = r".*" if catch_all else r"[^/]+"
            for c in constraints:
                c_regex, check = _constraint_check(c)
                if c_regex:
                    value = f"(?:{c_regex})"
                if check:
                    self.checks.append((name, check))
            if default is not None:
                self.defaults[name] = default
                optional = True
            regex += f"(?P<{name}>{value})"
            rank = 5 if catch_all else 4 if optional else 2 if constraints else 3
        regex += re.escape(segment[pos:])
        if len(params) > 1 or segment[0] != "{" or segment[-1] != "}":
            rank = 1  # complex segment: literal text around parameters
        if optional and not last:
            raise RouteError("an optional parameter must be in the last segment")
        return regex, rank, optional or rank == 5

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        params = {k: v for k, v in m.groupdict().items() if v is not None and v != ""}
        for name, check in self.checks:
            if name in params and not check(params[name]):
                return None
        for name, default in self.defaults.items():
            params.setdefault(name, default)
        return params


class Router:
    """Finds the route for a path; tells 404 (no template matches) from 405 (one matches, not the method)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self.routes.sort(key=lambda r: r.precedence)

    def match(self, path: str, method: str) -> tuple[int, Route | None, dict[str, str]]:
        method_mismatch = False
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.methods is None or method.upper() in route.methods:
                return 200, route, params
            method_mismatch = True
        return (405 if method_mismatch else 404), None, {}

    def allowed(self, path: str) -> list[str]:
        """The methods some route for `path` takes: the `Allow` header of a 405."""
        methods: set[str] = set()
        for route in self.routes:
            if route.methods is not None and route.match(path) is not None:
                methods |= route.methods
        return sorted(methods)


def full_template(prefix: str, route: str) -> str:
    prefix, route = prefix.strip("/"), route.strip("/")
    return "/".join(p for p in (prefix, route) if p)
