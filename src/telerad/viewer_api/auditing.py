"""A background writer of audit events for every read of patient data (QIDO-RS searches,
WADO-RS metadata, instances, frames and bulk data, rendered images and thumbnails).

A viewer scrolling a 500-slice series makes hundreds of requests a minute; committing one
audit row per request (with SQLite's FULL sync, an fsync each) would cost more than serving
the request. :class:`AuditWriter` queues the events and appends them in batches, one
transaction per batch, from one thread. There is no waiting window: the thread starts a batch
as soon as an event arrives and takes whatever else is queued by then, so an idle server
commits an event within about one commit time (a few milliseconds), and a busy one gathers
the events that arrived during the previous commit into the next.

Guarantees: every event is written (a full queue makes the caller write its event itself,
never drops it); :meth:`AuditWriter.close` (the app's shutdown, also on SIGTERM/SIGINT) and
:meth:`AuditWriter.flush` write everything queued. The crash window, honestly: a process killed
outright (SIGKILL, power loss) loses the events queued but not yet committed — normally those
of the last commit time, but up to ``max_queued`` if the database has stalled for that long —
while the responses for them may already have been sent. A batch that cannot be written is
retried, then logged as lost (count only: no patient data in logs).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from telerad.storage import record_access

logger = logging.getLogger(__name__)

__all__ = ["AuditWriter"]

_STOP = object()


class AuditWriter:
    """Append :func:`telerad.storage.record_access` events in background batches."""

    def __init__(
        self, sessions: sessionmaker[Session], max_batch: int = 500, max_queued: int = 20000
    ) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, **event: Any) -> None:
        """Queue one event (the keyword arguments of ``record_access``)."""
        if not self._thread.is_alive():
            self._write([event])
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:  # back-pressure: never drop an audit event
            self._write([event])

    def flush(self) -> None:
        """Block until every queued event is written."""
        if self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = [event for event in batch if event is not _STOP]
            try:
                if events:
                    self._write_with_retry(events)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(events) < len(batch):
                return

    def _write_with_retry(self, events: list[dict[str, Any]]) -> None:
        for attempt in range(3):
            try:
                self._write(events)
                return
            except Exception as exc:  # database unavailable or locked for long
                logger.warning("audit batch of %d not written (%s), retrying", len(events), exc)
                time.sleep(0.5 * (attempt + 1))
        logger.error("audit batch of %d events lost after retries", len(events))

    def _write(self, events: list[dict[str, Any]]) -> None:
        with self._sessions.begin() as session:
            for event in events:
                record_access(session, **event)
