"""A bounded, thread-safe LRU cache with per-key single flight.

Used for image embeddings (keyed by image identity, bounded in bytes: two simultaneous first clicks on one image
encode it once, the second waits for the first) and for the low-res logits of earlier clicks (refinement).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    waits: int = 0  # lookups that waited for another thread computing the same key
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None


class SingleFlightCache(Generic[V]):
    """LRU cache bounded by the sum of `size_of(value)`; `get_or_compute` computes a missing key once.

    A value larger than `max_bytes` is returned but not kept. Errors are not cached: every thread waiting on a
    failed computation gets the same exception, and the next lookup tries again.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._stats = CacheStats(max_bytes=max_bytes)

    def get(self, key: Hashable) -> V | None:
        """The value under `key` or None; a lookup like `get_or_compute`'s, counted as a hit or a miss."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._stats.misses += 1
                return None
            self._items.move_to_end(key)
            self._stats.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        size = int(self.size_of(value))
        with self._lock:
            self._insert(key, value, size)

    def _insert(self, key: Hashable, value: V, size: int) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and self._items:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted
            self._stats.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> tuple[V, bool]:
        """(value, was_cached). Only one thread computes a given key at a time; the others wait for its result."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self._stats.hits += 1
                return item[0], True
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = _Flight()
                self._flights[key] = flight
                self._stats.misses += 1
            else:
                self._stats.waits += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value, True
        try:
            value = compute()
        except BaseException as e:
            flight.error = e
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()
            raise
        size = int(self.size_of(value))
        with self._lock:
            self._insert(key, value, size)
            self._flights.pop(key, None)
        flight.value = value
        flight.done.set()
        return value, False

    def stats(self) -> CacheStats:
        with self._lock:
            s = self._stats
            return CacheStats(hits=s.hits, misses=s.misses, waits=s.waits, evictions=s.evictions,
                              entries=len(self._items), bytes=self._bytes, max_bytes=self.max_bytes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items
