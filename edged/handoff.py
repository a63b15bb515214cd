"""Items from one thread to another: the capture thread to the pipeline, one pipeline stage to the next.

A ``Handoff`` is either a slot where the newest item wins (``overwrite``: live cameras, where a stale
frame is worse than a dropped one) or a bounded queue that makes the producer wait (files, stages).
Its capacity can change while it is in use: under memory pressure the daemon shrinks the queues
that hold decoded frames.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """One producer, one consumer. ``put`` and ``get`` block as described; ``finish`` lets the consumer
    drain what is left, ``stop`` ends both sides now."""

    def __init__(self, capacity: int, overwrite: bool = False):
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._overwrite = overwrite
        self._cond = threading.Condition()
        self._finished = False  # no more items will come: drain, then end
        self._stopped = False  # end now; items not taken are discarded

    @property
    def stopped(self) -> bool:
        return self._stopped

    def put(self, item: T) -> bool:
        """Hand ``item`` over (dropped once stopped); True if that overwrote an item the consumer never took."""
        with self._cond:
            while not self._overwrite and len(self._items) >= self._capacity and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            overwritten = len(self._items) >= self._capacity
            if overwritten:
                self._items.popleft()
            self._items.append(item)
            self._cond.notify_all()
            return overwritten

    def resize(self, capacity: int) -> None:
        """A new capacity, from the next item on (items already queued stay)."""
        with self._cond:
            self._capacity = capacity
            self._cond.notify_all()

    def get(self) -> T | None:
        """The next item, waiting for one; None once stopped, or finished and drained."""
        with self._cond:
            while not self._items and not self._finished and not self._stopped:
                self._cond.wait()
            if self._stopped or not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify_all()
