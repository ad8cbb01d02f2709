"""The gateway's outbox: one SQLite row per spooled instance, one per study.

An instance row is committed only after its spool file is fsynced, and the C-STORE response is
sent only after the commit, so an acknowledged instance is always on disk with its row. The row
then moves through::

    pending ──claim──▶ sending ──centre stored it──▶ confirmed
       ▲                  │
       └──── failure ─────┤ (attempts < max: back to pending after a backoff)
                          └──── attempts = max, or a permanent refusal ──▶ dead

A ``sending`` row whose lease ran out (the gateway was killed mid-request) is pending again; the
centre treats a re-send of the same bytes as success, so nothing is lost and nothing doubles.
``dead`` rows are visible in the status and go back to ``pending`` with :meth:`Outbox.retry`.

Studies move ``receiving`` → (stable, all confirmed) manifest posted → ``complete``; an instance
arriving later re-opens the study (``receiving``) and a new manifest follows.

SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed at
once, and the machine losing power at worst undoes the last commits — which costs nothing: the
fsynced spool file is the durable record and is indexed again at start-up
(:meth:`telerad.dicom_gateway.receiver.Receiver.reindex`), and a confirmation lost that way only
means one more (idempotent) send. Each thread has its own connection; several SCP processes
may share the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING, SENDING, CONFIRMED, DEAD = "pending", "sending", "confirmed", "dead"
RECEIVING, COMPLETE = "receiving", "complete"
#: Forwarding priority of a study: higher first (STAT > urgent > routine).
ROUTINE, URGENT, STAT = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'receiving',
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    manifest_at REAL,
    manifest_attempts INTEGER NOT NULL DEFAULT 0,
    next_manifest_at REAL NOT NULL DEFAULT 0,
    complete_at REAL,
    centre_received INTEGER,
    centre_expected INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    last_error TEXT,
    wire_path TEXT,
    wire_sha256 TEXT,
    wire_size INTEGER,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    purged_at REAL,
    confirmed_at REAL,
    UNIQUE (sop_instance_uid, sha256)
);
CREATE INDEX IF NOT EXISTS ix_instances_queue ON instances (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS ix_instances_study ON instances (study_uid, state);
CREATE INDEX IF NOT EXISTS ix_instances_sop ON instances (sop_instance_uid);
"""


@dataclass(frozen=True, slots=True)
class Received:
    """What the SCP spooled, as recorded in the outbox."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    path: str
    size: int
    sha256: str
    priority: int = ROUTINE


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An instance row, as the forwarder and the status page see it."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    sha256: str
    state: str
    attempts: int
    wire_path: str | None
    wire_sha256: str | None
    wire_size: int | None


@dataclass(frozen=True, slots=True)
class LocalCopy:
    """A confirmed instance as the gateway received it (``path`` is None once purged)."""

    path: str | None
    sha256: str
    transfer_syntax_uid: str


@dataclass(frozen=True, slots=True)
class StudyProgress:
    """Per-study figures for the status endpoint, page and CLI."""

    study_uid: str
    priority: int
    state: str
    received: int
    forwarded: int
    confirmed: int
    dead: int
    bytes_received: int
    bytes_sent: int
    retries: int
    centre_received: int | None
    centre_expected: int | None
    first_received_at: float
    last_received_at: float
    manifest_at: float | None
    complete_at: float | None
    last_error: str | None

    @property
    def complete(self) -> bool:
        """The centre holds every instance of the last manifest with its hash."""
        return self.state == COMPLETE


_ITEM_COLUMNS = (
    "id, sop_instance_uid, sop_class_uid, study_uid, transfer_syntax_uid, path, size, sha256, "
    "state, attempts, wire_path, wire_sha256, wire_size"
)


class Outbox:
    """The outbox database (``outbox.db`` in the gateway directory)."""

    def __init__(self, path: Path, *, lease_seconds: float = 300.0) -> None:
        self.path = path
        self.lease_seconds = lease_seconds
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection().executescript(_SCHEMA)  # DDL, each statement committed

    # -- connections -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so that close() may close every thread's connection
            db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (no upgrade deadlocks between processes)."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, args).fetchall()

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    # -- receiving ---------------------------------------------------------------------------

    def known_sha256(self, sop_instance_uid: str, sha256: str) -> bool:
        """Is this exact content already in the outbox (a modality re-sent it)?"""
        rows = self._read(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
            (sop_instance_uid, sha256),
        )
        return bool(rows)

    def record(self, item: Received, now: float | None = None) -> bool:
        """Commit the row of a spooled instance; ``False`` if the same content was known.

        A new instance re-opens its study (a manifest is due again after the quiet time).
        """
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute(
                "INSERT INTO studies (study_uid, priority, first_received_at, last_received_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (study_uid) DO UPDATE SET"
                " last_received_at = excluded.last_received_at, state = 'receiving',"
                " priority = max(priority, excluded.priority), manifest_attempts = 0,"
                " next_manifest_at = 0",
                (item.study_uid, item.priority, now, now),
            )
            cursor = db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,"
                " transfer_syntax_uid, calling_ae, path, size, sha256, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sop_instance_uid, sha256) DO NOTHING",
                (
                    item.sop_instance_uid, item.sop_class_uid, item.study_uid, item.series_uid,
                    item.transfer_syntax_uid, item.calling_ae, item.path, item.size, item.sha256,
                    now,
                ),
            )  # fmt: skip
            return cursor.rowcount == 1

    # -- forwarding --------------------------------------------------------------------------

    def recover(self, now: float | None = None) -> int:
        """After a restart: rows left ``sending`` by a killed process are pending again."""
        now = time.time() if now is None else now
        with self._write() as db:
            cursor = db.execute(
                "UPDATE instances SET state = 'pending', lease_until = NULL"
                " WHERE state = 'sending' AND (lease_until IS NULL OR lease_until < ?)",
                (now + self.lease_seconds + 1,),
            )
            return cursor.rowcount

    def claim_batch(self, max_bytes: int, now: float | None = None) -> list[OutboxItem]:
        """Lease the next pending instances, most urgent study first, up to ``max_bytes``.

        A batch holds instances of one study (the STOW-RS request names it, PS3.18 §10.5.1).
        Expired leases are taken over.
        """
        now = time.time() if now is None else now
        with self._write() as db:
            head = db.execute(
                "SELECT i.study_uid FROM instances i JOIN studies s USING (study_uid)"
                " WHERE (i.state = 'pending' AND i.next_attempt_at <= ?)"
                " OR (i.state = 'sending' AND i.lease_until < ?)"
                " ORDER BY s.priority DESC, i.id LIMIT 1",
                (now, now),
            ).fetchone()
            if head is None:
                return []
            rows = db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM instances WHERE study_uid = ? AND"  # noqa: S608
                " ((state = 'pending' AND next_attempt_at <= ?)"
                " OR (state = 'sending' AND lease_until < ?)) ORDER BY id LIMIT 500",
                (head[0], now, now),
            ).fetchall()
            batch = _fill(rows, max_bytes)
            db.executemany(
                "UPDATE instances SET state = 'sending', lease_until = ? WHERE id = ?",
                [(now + self.lease_seconds, item.id) for item in batch],
            )
            return batch

    def receiving(self) -> tuple[float, float, int] | None:
        """Of the instances waiting for their first send: the last time their studies received
        an instance, the oldest one's arrival, and the highest study priority; ``None`` when
        nothing waits."""
        row = self._read(
            "SELECT max(s.last_received_at), min(i.received_at), max(s.priority)"
            " FROM instances i JOIN studies s USING (study_uid)"
            " WHERE i.state = 'pending' AND i.attempts = 0"
        )[0]
        return None if row[0] is None else (float(row[0]), float(row[1]), int(row[2]))

    def set_wire(self, item_id: int, wire_path: str | None, wire_sha256: str, size: int) -> None:
        """Record the form sent on the wire (a lossless transcoding, or the original)."""
        with self._write() as db:
            db.execute(
                "UPDATE instances SET wire_path = ?, wire_sha256 = ?, wire_size = ? WHERE id = ?",
                (wire_path, wire_sha256, size, item_id),
            )

    def confirm(self, ids_and_bytes: Sequence[tuple[int, int]], now: float | None = None) -> None:
        """The centre stored these instances (or held them already with the same hash)."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.executemany(
                "UPDATE instances SET state = 'confirmed', confirmed_at = ?, lease_until = NULL,"
                " last_error = NULL, bytes_sent = bytes_sent + ? WHERE id = ?",
                [(now, sent, item_id) for item_id, sent in ids_and_bytes],
            )

    def fail(
        self,
        failures: Sequence[tuple[int, str, bool, int]],
        *,
        max_attempts: int,
        backoff: float,
        counted: bool = True,
        now: float | None = None,
    ) -> None:
        """Record a failed attempt per ``(id, error, permanent, bytes_sent)``.

        A permanent refusal (the centre can never store it) makes the row ``dead``; so does the
        last allowed attempt, unless ``counted`` is false: the centre was unreachable, which
        says nothing about the instance, and an outage of any length must not dead-letter what
        the modality was told is stored. Otherwise the row is pending again after ``backoff``.
        """
        now = time.time() if now is None else now
        with self._write() as db:
            for item_id, error, permanent, sent in failures:
                db.execute(
                    "UPDATE instances SET attempts = attempts + 1, last_error = ?,"
                    " bytes_sent = bytes_sent + ?, lease_until = NULL, next_attempt_at = ?,"
                    " state = CASE WHEN ? OR (? AND attempts + 1 >= ?) THEN 'dead'"
                    " ELSE 'pending' END WHERE id = ?",
                    (error[:500], sent, now + backoff, permanent, counted, max_attempts,
                     item_id),
                )  # fmt: skip

    def release(self, ids: Sequence[int]) -> None:
        """Give claimed rows back untouched (the gateway is stopping)."""
        with self._write() as db:
            db.executemany(
                "UPDATE instances SET state = 'pending', lease_until = NULL"
                " WHERE id = ? AND state = 'sending'",
                [(i,) for i in ids],
            )

    def retry(self, study_uid: str | None = None) -> int:
        """Dead-lettered rows (of one study, or all) go back to the queue."""
        where, args = ("AND study_uid = ?", (study_uid,)) if study_uid else ("", ())
        with self._write() as db:
            cursor = db.execute(
                "UPDATE instances SET state = 'pending', attempts = 0, next_attempt_at = 0"  # noqa: S608 - fixed fragments only
                f" WHERE state = 'dead' {where}",
                args,
            )
            if cursor.rowcount:
                db.execute(
                    f"UPDATE studies SET state = 'receiving' WHERE 1 {where}",  # noqa: S608
                    args,
                )
            return cursor.rowcount

    def next_wakeup(self, now: float | None = None) -> float | None:
        """Seconds until the next pending row is due, or ``None`` when nothing waits."""
        now = time.time() if now is None else now
        row = self._read(
            "SELECT min(CASE WHEN state = 'pending' THEN next_attempt_at ELSE lease_until END)"
            " FROM instances WHERE state IN ('pending', 'sending')"
        )
        due = row[0][0] if row else None
        return None if due is None else max(0.0, due - now)

    # -- completeness ------------------------------------------------------------------------

    def studies_due_for_manifest(
        self, stable_seconds: float, now: float | None = None
    ) -> list[str]:
        """Studies quiet for ``stable_seconds`` whose instances are all confirmed.

        A study with a dead-lettered instance gets no manifest: the modality was told that
        instance is stored, so the study must not be called complete without it; it waits,
        visible in the status, until the instance is retried (:meth:`retry`) and confirmed.
        """
        now = time.time() if now is None else now
        rows = self._read(
            "SELECT s.study_uid FROM studies s WHERE s.state = 'receiving'"
            " AND s.last_received_at <= ? AND s.next_manifest_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid"
            " AND i.state IN ('pending', 'sending', 'dead'))"
            " AND EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid"
            " AND i.state = 'confirmed')"
            " ORDER BY s.priority DESC, s.last_received_at",
            (now - stable_seconds, now),
        )
        return [row[0] for row in rows]

    def manifest(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID → SHA-256 of what the centre holds, for every confirmed instance."""
        rows = self._read(
            "SELECT sop_instance_uid, coalesce(wire_sha256, sha256) FROM instances"
            " WHERE study_uid = ? AND state = 'confirmed'",
            (study_uid,),
        )
        return dict(rows)

    def manifest_result(
        self,
        study_uid: str,
        *,
        complete: bool,
        resend: Sequence[str],
        received: int | None,
        expected: int | None,
        posted_at: float,
        error: str | None = None,
        retry_at: float = 0.0,
    ) -> None:
        """Record the centre's answer; instances it lacks are queued again (not counted as a
        failed attempt: the centre asked for them)."""
        with self._write() as db:
            db.execute(
                "UPDATE studies SET manifest_at = ?, centre_received = ?, centre_expected = ?,"
                " last_error = ?, manifest_attempts = manifest_attempts + 1,"
                " next_manifest_at = ?, state = ?, complete_at = CASE WHEN ? THEN ?"
                " ELSE complete_at END WHERE study_uid = ? AND last_received_at <= ?",
                (
                    posted_at, received, expected, error, retry_at,
                    COMPLETE if complete else RECEIVING, complete, posted_at, study_uid,
                    posted_at,
                ),
            )  # fmt: skip
            db.executemany(
                "UPDATE instances SET state = CASE WHEN purged_at IS NULL THEN 'pending'"
                " ELSE 'dead' END, last_error = CASE WHEN purged_at IS NULL THEN last_error"
                " ELSE 'the centre lacks it and the spool copy is past retention' END,"
                " next_attempt_at = 0"
                " WHERE study_uid = ? AND sop_instance_uid = ? AND state = 'confirmed'",
                [(study_uid, uid) for uid in resend],
            )

    # -- retention ---------------------------------------------------------------------------

    def purgeable(self, complete_before: float, limit: int = 1000) -> list[tuple[int, str, str]]:
        """``(id, path, wire_path)`` of spooled files of studies complete at the centre since
        before ``complete_before`` (the centre is then the archive of record)."""
        rows = self._read(
            "SELECT i.id, i.path, coalesce(i.wire_path, '') FROM instances i"
            " JOIN studies s USING (study_uid) WHERE s.state = 'complete'"
            " AND s.complete_at < ? AND i.purged_at IS NULL AND i.state = 'confirmed'"
            " LIMIT ?",
            (complete_before, limit),
        )
        return [(int(i), str(p), str(w)) for i, p, w in rows]

    def mark_purged(self, ids: Sequence[int], now: float | None = None) -> None:
        """The spool files of these rows are gone."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.executemany(
                "UPDATE instances SET purged_at = ? WHERE id = ?", [(now, i) for i in ids]
            )

    def spooled_paths(self) -> set[str]:
        """Every spool path a row refers to whose file was not purged (originals and wire)."""
        rows = self._read("SELECT path, wire_path FROM instances WHERE purged_at IS NULL")
        return {p for row in rows for p in row if p}

    def manifest_failed(self, study_uid: str, error: str, retry_at: float) -> None:
        """The manifest could not be posted; try again at ``retry_at``."""
        with self._write() as db:
            db.execute(
                "UPDATE studies SET last_error = ?, next_manifest_at = ?,"
                " manifest_attempts = manifest_attempts + 1 WHERE study_uid = ?",
                (error[:500], retry_at, study_uid),
            )

    def manifest_attempts(self, study_uid: str) -> int:
        """How many manifests were posted (or tried) since the study last changed."""
        rows = self._read("SELECT manifest_attempts FROM studies WHERE study_uid = ?", (study_uid,))
        return int(rows[0][0]) if rows else 0

    # -- Storage Commitment ------------------------------------------------------------------

    def received_states(self, sop_instance_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """SOP Instance UID → (state, SOP Class UID) of those received; of several versions,
        the one furthest along (confirmed > sending > pending > dead)."""
        rank = {CONFIRMED: 3, SENDING: 2, PENDING: 1, DEAD: 0}
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(sop_instance_uids), 500):
            chunk = list(sop_instance_uids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._read(
                "SELECT sop_instance_uid, state, sop_class_uid FROM instances"  # noqa: S608
                f" WHERE sop_instance_uid IN ({marks})",
                chunk,
            )
            for uid, state, sop_class in rows:
                if uid not in found or rank[state] > rank[found[uid][0]]:
                    found[uid] = (state, sop_class)
        return found

    # -- query/retrieve ----------------------------------------------------------------------

    def confirmed_copies(self, sop_instance_uids: Sequence[str]) -> dict[str, LocalCopy]:
        """SOP Instance UID → the copy the centre confirmed (the first, if several were), with
        its spool path while the file is kept, for C-MOVE/C-GET to send without the WAN."""
        found: dict[str, LocalCopy] = {}
        for start in range(0, len(sop_instance_uids), 500):
            chunk = list(sop_instance_uids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._read(
                "SELECT sop_instance_uid, CASE WHEN purged_at IS NULL THEN path END, sha256,"  # noqa: S608
                " transfer_syntax_uid FROM instances WHERE state = 'confirmed'"
                f" AND sop_instance_uid IN ({marks}) ORDER BY confirmed_at DESC, id DESC",
                chunk,
            )
            found.update((row[0], LocalCopy(*row[1:])) for row in rows)
        return found

    # -- status ------------------------------------------------------------------------------

    def progress(self, study_uid: str | None = None, limit: int = 100) -> list[StudyProgress]:
        """Per-study progress, most recent first."""
        where, args = ("WHERE s.study_uid = ?", [study_uid]) if study_uid else ("", [])
        rows = self._read(
            "SELECT s.study_uid, s.priority, s.state, count(i.id),"  # noqa: S608
            " sum(i.wire_sha256 IS NOT NULL AND i.bytes_sent > 0),"
            " sum(i.state = 'confirmed'), sum(i.state = 'dead'), coalesce(sum(i.size), 0),"
            " coalesce(sum(i.bytes_sent), 0), coalesce(sum(i.attempts), 0),"
            " s.centre_received, s.centre_expected, s.first_received_at, s.last_received_at,"
            " s.manifest_at, s.complete_at,"
            " coalesce(s.last_error, (SELECT last_error FROM instances e WHERE"
            " e.study_uid = s.study_uid AND e.last_error IS NOT NULL ORDER BY e.id DESC LIMIT 1))"
            f" FROM studies s LEFT JOIN instances i USING (study_uid) {where}"
            " GROUP BY s.study_uid ORDER BY s.last_received_at DESC LIMIT ?",
            [*args, limit],
        )
        return [_progress(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Instances per state, for health checks."""
        rows = self._read("SELECT state, count(*) FROM instances GROUP BY state")
        counts = {state: 0 for state in (PENDING, SENDING, CONFIRMED, DEAD)}
        counts.update({state: int(n) for state, n in rows})
        return counts

    def items(self, study_uid: str) -> list[OutboxItem]:
        """Every instance row of a study."""
        rows = self._read(
            f"SELECT {_ITEM_COLUMNS} FROM instances WHERE study_uid = ? ORDER BY id",  # noqa: S608
            (study_uid,),
        )
        return [OutboxItem(*row) for row in rows]


def _fill(rows: list[tuple[Any, ...]], max_bytes: int) -> list[OutboxItem]:
    """Take rows while they fit in ``max_bytes`` (always at least one)."""
    batch: list[OutboxItem] = []
    total = 0
    for row in rows:
        item = OutboxItem(*row)
        size = item.wire_size or item.size
        if batch and total + size > max_bytes:
            break
        batch.append(item)
        total += size
    return batch


def _progress(row: tuple[Any, ...]) -> StudyProgress:
    (uid, priority, state, received, forwarded, confirmed, dead, size, sent, retries,
     c_received, c_expected, first, last, manifest_at, complete_at, error) = row  # fmt: skip
    return StudyProgress(
        study_uid=uid, priority=priority, state=state, received=received,
        forwarded=int(forwarded or 0), confirmed=int(confirmed or 0), dead=int(dead or 0),
        bytes_received=int(size), bytes_sent=int(sent), retries=int(retries),
        centre_received=c_received, centre_expected=c_expected, first_received_at=first,
        last_received_at=last, manifest_at=manifest_at, complete_at=complete_at,
        last_error=error,
    )  # fmt: skip
