"""What the process remembers between invocations (settings, storage clients, authentication and policy caches),
each registered with how to forget it, so that one call resets it all: for tests and for a changed environment."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import Generic, Protocol, TypeVar

from cachetools import TLRUCache

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
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


class TimedCache(Generic[K, V]):
    """A bounded, thread-safe map whose entries each live for the seconds they were put with (least recently used
    go first when full): what the process may remember of storage for a while, e.g. an accepted API key."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._entries: TLRUCache[K, tuple[V, float]] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, entry, now: now + entry[1], timer=time.monotonic)
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: K, value: V, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._entries[key] = (value, seconds)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)


def timed_cache(maxsize: int = 10_000) -> TimedCache[K, V]:
    """A new TimedCache, forgotten by `reset()`."""
    return cache(TimedCache[K, V](maxsize))
