"""What the process remembers between invocations (settings, storage clients, authentication and policy caches),
each registered with how to forget it, so that one call resets it all: for tests and for a changed environment."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol, TypeVar

T = TypeVar("T")
_forgets: list[Callable[[], None]] = []
_lock = threading.Lock()


class Forgettable(Protocol):
    def clear(self) -> None: ...


C = TypeVar("C", bound=Forgettable)


def remember(thing: T, forget: Callable[[], None]) -> T:
    """Register how to forget `thing` (kept by the caller, at module level) and return it."""
    with _lock:
        _forgets.append(forget)
    return thing


def cache(thing: C) -> C:
    """Register a cache (anything with `clear()`); returns it."""
    return remember(thing, thing.clear)


def once(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`'s result, computed on first call and kept until `reset()` (functools.lru_cache, so `cache_clear` works)."""
    cached = lru_cache(maxsize=1)(fn)
    return remember(cached, cached.cache_clear)


def reset() -> None:
    """Forget everything remembered: the next call reads settings and makes clients anew."""
    with _lock:
        forgets = list(_forgets)
    for forget in forgets:
        forget()
