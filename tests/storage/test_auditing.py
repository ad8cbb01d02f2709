"""The batched audit writer: every event written, in order of arrival, on both databases."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

import telerad
from telerad.storage import Archive, AuditEvent, IngestSource, Study, auditing, session_factory
from telerad.storage.auditing import AuditWriter, replay_journals
from tests.factories import ct_datasets, new_uid, part10


def _event(number: int) -> dict[str, object]:
    return {
        "actor": f"user{number % 3}",
        "actor_role": "radiologist",
        "action": "rendered-instance",
        "resource": f"/dicomweb/studies/1.2.{number}/rendered",
        "source_address": "127.0.0.1",
        "detail": str(number),
    }


def _written(engine: Engine) -> list[str]:
    with session_factory(engine)() as session:
        return list(session.scalars(select(AuditEvent.detail).order_by(AuditEvent.id)))


def test_every_event_from_many_threads_is_written(engine: Engine) -> None:
    writer = AuditWriter(session_factory(engine, writer=True), max_batch=7, max_queued=5)
    threads = [
        threading.Thread(
            target=lambda n=n: [writer.record(**_event(n * 100 + i)) for i in range(40)]
        )
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    writer.flush()

    assert sorted(_written(engine), key=int) == [
        str(n * 100 + i) for n in range(4) for i in range(40)
    ]
    writer.close()


def test_close_writes_what_is_queued_and_later_events_still_land(engine: Engine) -> None:
    writer = AuditWriter(session_factory(engine, writer=True))
    for number in range(25):
        writer.record(**_event(number))

    writer.close()
    assert _written(engine) == [str(n) for n in range(25)]  # one thread: arrival order

    writer.record(**_event(99))  # after shutdown: written by the caller itself
    assert _written(engine)[-1] == "99"


def test_a_batch_waits_for_more_events_and_flush_cuts_the_wait_short(engine: Engine) -> None:
    """Events arriving within the linger window share one commit; flush() does not wait it
    out (the journal keeps the waiting events safe, see the SIGKILL test below)."""
    writer = AuditWriter(session_factory(engine, writer=True), linger=30.0)
    commits: list[int] = []
    write = writer._write
    writer._write = lambda events: (commits.append(len(events)), write(events))[1]  # type: ignore[method-assign]
    try:
        for number in range(3):
            writer.record(**_event(number))
            time.sleep(0.1)
        assert _written(engine) == []  # still gathering
        started = time.monotonic()
        writer.flush()
        assert time.monotonic() - started < 5.0
        assert _written(engine) == ["0", "1", "2"]
        assert commits == [3]  # one transaction for the three
        writer.record(**_event(3))
    finally:
        writer.close()  # close cuts the window short too
    assert _written(engine) == ["0", "1", "2", "3"]


def test_an_event_recorded_while_closing_is_written_and_a_racing_flush_returns(
    engine: Engine,
) -> None:
    """close() stops the thread behind a marker; what is recorded after that must still reach
    the database (written by the caller), and a flush() racing with close() must return."""
    writer = AuditWriter(session_factory(engine, writer=True), linger=0.0)
    write, started = writer._write, threading.Event()

    def slow(events: list[dict[str, object]]) -> None:
        started.set()
        time.sleep(0.5)  # the writer is busy with its last batch while close() waits
        write(events)

    writer._write = slow  # type: ignore[method-assign]
    writer.record(**_event(1))
    assert started.wait(10)
    closing = threading.Thread(target=writer.close)
    closing.start()
    deadline = time.monotonic() + 10
    while not writer._closing and time.monotonic() < deadline:
        time.sleep(0.005)
    writer.record(**_event(2))
    flushing = threading.Thread(target=writer.flush)
    flushing.start()
    closing.join(30)
    flushing.join(30)

    assert not flushing.is_alive()
    assert sorted(_written(engine)) == ["1", "2"]


# -- the journal: nothing lost to SIGKILL --------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from telerad.storage import create_catalog_engine, session_factory
from telerad.storage.auditing import AuditWriter, replay_journals
from tests.factories import ct_datasets, new_uid, part10

url, journal = sys.argv[1], Path(sys.argv[2])
writer = AuditWriter(session_factory(create_catalog_engine(url), writer=True), journal=journal)
event = dict(actor="rad1", actor_role="radiologist", action="wado-frames",
             resource="/dicomweb/studies/1.2.3/frames/1", source_address="10.0.0.7")
for number in range(10):
    writer.record(**event, detail=str(number))
writer.flush()  # committed, and the journal's checkpoint says so
print("flushed", flush=True)
sys.stdin.readline()  # the test now holds the audit table: the next batch cannot commit
for number in range(10, 30):
    writer.record(**event, detail=str(number))
print("recorded", flush=True)
sys.stdin.readline()  # never comes: SIGKILL
"""


@contextlib.contextmanager
def audit_table_held(engine: Engine) -> Iterator[None]:
    """Hold the audit table so that no other connection can append to it (a stalled
    database): an exclusive SQLite transaction, or a PostgreSQL table lock."""
    if engine.dialect.name == "sqlite":
        raw = sqlite3.connect(str(engine.url.database), timeout=30)
        raw.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            raw.rollback()
            raw.close()
        return
    with engine.connect() as connection:
        connection.execute(text("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            connection.rollback()


def test_sigkill_with_the_database_stalled_loses_and_duplicates_no_event(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    journal = tmp_path / "audit-journal"
    source = str(Path(telerad.__file__).resolve().parents[1])  # this checkout's code
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url, str(journal)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "flushed"
        with audit_table_held(engine):
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "recorded"
            time.sleep(0.3)  # the writer thread is blocked in its INSERT of the batch
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        assert _written(engine) == [str(n) for n in range(10)]  # the rest died with it
    finally:
        if child.poll() is None:
            child.kill()
    before_replay = datetime.now(UTC)

    writer = AuditWriter(session_factory(engine, writer=True), journal=journal)  # a restart
    try:
        assert _written(engine) == [str(n) for n in range(30)]  # each exactly once, in order
        with session_factory(engine)() as session:
            times = session.scalars(select(AuditEvent.at).order_by(AuditEvent.id)).all()
        assert all(_aware(at) < before_replay for at in times)  # when it happened, not replayed
        assert [p.name.split("-")[0] for p in journal.iterdir()] == [str(os.getpid())]
    finally:
        writer.close()
    assert list(journal.iterdir()) == []  # all written: nothing left to replay


def test_a_live_processs_journal_is_not_replayed(engine: Engine, tmp_path: Path) -> None:
    """Another worker starting beside a live one must not write the live one's events in
    flight (they would then be written twice); once the lock is gone, they are replayed."""
    journal = tmp_path / "audit-journal"
    live = AuditWriter(session_factory(engine, writer=True), journal=journal)
    in_flight = {**_event(7), "at": datetime.now(UTC)}
    assert live._journal is not None
    live._journal.append({"seq": 99, "event": in_flight})  # journalled, not yet committed
    written: list[dict[str, object]] = []
    try:
        assert replay_journals(journal, written.extend) == 0 and written == []
        live._journal.close(remove=False)  # as a SIGKILL would: the lock goes, the file stays
        live._journal = None
        assert replay_journals(journal, written.extend) == 1
        assert [event["detail"] for event in written] == ["7"]
        assert list(journal.iterdir()) == []
    finally:
        live.close()


def test_the_journal_stays_small_under_steady_load(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auditing, "ROTATE_BYTES", 4000)
    journal = tmp_path / "audit-journal"
    writer = AuditWriter(session_factory(engine, writer=True), max_batch=5, journal=journal)
    sizes = []
    for start in range(0, 300, 30):
        for number in range(start, start + 30):
            writer.record(**_event(number))
        writer.flush()
        sizes.append(sum(p.stat().st_size for p in journal.iterdir()))
    writer.close()
    assert max(sizes) < 4000 + 30 * 400  # emptied or replaced once past the limit
    assert sorted(_written(engine), key=int) == [str(n) for n in range(300)]
    assert list(journal.iterdir()) == []


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_a_batch_records_one_row_per_study_with_its_patient(
    engine: Engine, archive: Archive
) -> None:
    """One lookup and one INSERT per batch (storage.record_accesses) must still give each
    access one row per study, in order, with the patient of each known study."""
    ds = ct_datasets(1)[0]
    archive.ingest_instance(part10(ds), IngestSource(site_id=None, issuer="TEST", label="test"))
    known, unknown = str(ds.StudyInstanceUID), new_uid()
    writer = AuditWriter(session_factory(engine, writer=True), linger=30.0)
    writer.record(**{**_event(1), "study_uids": [unknown, known, known]})
    writer.record(**_event(2))
    writer.record(**{**_event(3), "study_uids": [known], "outcome": "failure"})
    writer.flush()
    writer.close()

    with session_factory(engine)() as session:
        rows = session.execute(
            select(
                AuditEvent.detail, AuditEvent.study_uid, AuditEvent.patient_pk, AuditEvent.outcome
            ).order_by(AuditEvent.id)
        ).all()
        patient = session.scalar(select(Study.patient_pk).where(Study.study_uid == known))
    assert patient is not None
    expected_first = sorted([(known, patient), (unknown, None)])
    assert [(uid, pk) for detail, uid, pk, _ in rows if detail == "1"] == expected_first
    assert [(d, u, p, o) for d, u, p, o in rows if d != "1"] == [
        ("2", None, None, "success"),
        ("3", known, patient, "failure"),
    ]
