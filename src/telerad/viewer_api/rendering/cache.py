"""A bounded in-process cache of decoded frames and rendered images, and the prefetcher.

:class:`ByteCache` is a thread-safe LRU bounded by the bytes of what it holds (a decoded
frame counts its array's ``nbytes``, a rendered image its encoded length), so
``settings.rendering.cache_mb`` is what it may use whatever the mix. Keys are content-addressed
(an instance's SHA-256, its frame number, every rendering parameter): an entry can never be
stale, and nothing in it is served without the request's own authorization check.

:class:`Prefetcher` runs small jobs (decode and render the neighbours of a slice just served)
on a few background threads, so that scrolling through a series finds its next slices in the
cache. It drops work rather than queue it without bound, and never runs a job twice at once.
A request that needs what a job is producing :meth:`claims <Prefetcher.claim>` it: it waits
for a job already running, and takes back one not yet started, so a slice is not rendered by
both (when readers scroll faster than the prefetch thread, as eight at once on two cores do,
every slice was); only a job still running after the request's wait (10 s) is duplicated.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ByteCache", "CacheStats", "Prefetcher"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`ByteCache`."""

    entries: int
    bytes: int
    capacity: int
    hits: int
    misses: int
    evictions: int


class ByteCache:
    """A thread-safe LRU cache holding at most ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Keep ``value`` (``size`` bytes), evicting the least recently used entries to fit.

        A value larger than the whole capacity is not kept (returns False).
        """
        if size > self.capacity:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.capacity:
                _key, (_value, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1
        return True

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """Current size and counters."""
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                capacity=self.capacity,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )


class Prefetcher:
    """Background jobs keyed by what they produce: one at a time per key, a bounded backlog.

    ``workers=0`` disables prefetching (``submit`` returns False).
    """

    def __init__(self, workers: int, max_pending: int = 32) -> None:
        self.max_pending = max_pending
        self._pool = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
            if workers > 0
            else None
        )
        self._pending: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.completed = 0

    def submit(self, key: Hashable, job: Callable[[], object]) -> bool:
        """Run ``job`` in the background unless ``key`` is already pending or the backlog is
        full; returns whether it was queued."""
        if self._pool is None:
            return False
        with self._lock:  # submitted under the lock: claim() never sees a key without its job
            if key in self._pending or len(self._pending) >= self.max_pending:
                return False
            try:
                future = self._pool.submit(job)
            except RuntimeError:  # shut down
                return False
            self._pending[key] = future
        # Outside the lock: on a job already done, the callback runs here, and takes the lock.
        future.add_done_callback(lambda done: self._done(key, done))
        return True

    def claim(self, key: Hashable) -> Future[Any] | None:
        """The job producing ``key`` if it is running (wait for its result), else None: a job
        not yet started is cancelled, and the caller does the work itself, at once."""
        with self._lock:
            future = self._pending.get(key)
        if future is None or future.cancel():
            return None
        return future

    def _done(self, key: Hashable, future: Future[object]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:  # a neighbour that cannot be rendered: its own request will say
            logger.debug("prefetch %r failed: %s", key, error)
        self._finish(key)

    def _finish(self, key: Hashable) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self.completed += 1
            self._idle.notify_all()

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return len(self._pending)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is pending (or ``timeout`` seconds); returns whether idle."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        """Stop taking jobs and drop those not started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
