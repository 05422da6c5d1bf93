"""`BoundedMemo`: what a worker remembers between requests, bounded, the least recently used forgotten first.

A portfolio worker sees the same values request after request (consecutive windows share all but one bar time and
most of their news), so it remembers what it has checked or computed for them: parsed bar times
(serving/column_checks.py), checked news sets, the inputs hash of each as-of it built (serving/by_reference.py),
article vectors (serving/vector_cache.py). Thread-safe: requests are prepared in several threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["BoundedMemo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """A mapping of at most `size` entries; reading or writing an entry makes it the most recently used."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a bounded memo needs a size >= 1, got {size}")
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def found(self, keys: Iterable[K]) -> dict[K, V]:
        """The entries held among `keys` (one lock for all of them)."""
        found: dict[K, V] = {}
        with self._lock:
            for key in keys:
                value = self._entries.get(key)
                if value is not None:
                    self._entries.move_to_end(key)
                    found[key] = value
        return found

    def put(self, key: K, value: V) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[K, V]], replace: bool = True) -> int:
        """Hold each (key, value); a key already held gets the new value, or with `replace` False keeps its own (a
        cache whose first answer must stay the one every later read gets). Returns how many keys were new."""
        added = 0
        with self._lock:
            for key, value in items:
                new = key not in self._entries
                added += new
                if new or replace:
                    self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return added
