"""Rendered bodies of finished jobs. A job never changes once it has finished, so its JSON is
rendered once per process and served without touching the database."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedJob:
    owner: str | None
    body: bytes


class FinishedJobCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, CachedJob] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> CachedJob | None:
        with self._lock:
            item = self._items.get(job_id)
            if item is not None:
                self._items.move_to_end(job_id)
            return item

    def put(self, job_id: str, item: CachedJob) -> None:
        with self._lock:
            self._items[job_id] = item
            self._items.move_to_end(job_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
