"""A small in-process limiter of failed attempts per client address (share-link guessing).

Tokens carry 256 random bits, so guessing is hopeless anyway; the limiter keeps a scanner from
filling the audit log and the database with lookups. Per process: with N API replicas the
effective limit is N times higher, which is fine for this purpose.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class FailureLimiter:
    """At most ``limit`` failures per ``window`` seconds per key; then the key is blocked until
    its oldest failure leaves the window."""

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Seconds ``key`` must wait (0: allowed)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.get(key)
            if failures is None:
                return 0
            self._expire(failures, now)
            if len(failures) < self.limit:
                return 0
            return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, key: str, now: float | None = None) -> None:
        """Count one failure of ``key``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if key not in self._failures and len(self._failures) >= self.max_keys:
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures.setdefault(key, deque())
            self._expire(failures, now)
            failures.append(now)

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self.window:
            failures.popleft()
