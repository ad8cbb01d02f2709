"""The report lifecycle against the database (SQLite and PostgreSQL): tasks, signatures, the
chain, SR documents stored into the study, events, visibility and precise refusals."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from telerad.storage import (
    Level,
    ReadingTask,
    Report,
    Scope,
    parse_query,
    search,
    session_factory,
    study_completeness,
)
from telerad.worklist import (
    InvalidReportContent,
    InvalidReportTransition,
    NotReportWriter,
    Principal,
    ReportExists,
    ReportNotFound,
    ReportVersionMismatch,
    add_addendum,
    claim_task,
    create_report,
    principal_for_user,
    publish_documents,
    register_report_listener,
    reports_with_pending_documents,
    save_report,
    sign_report,
    submit_preliminary,
    verify_report_chain,
    visible_report,
)
from tests.worklist.conftest import World

HEAD = {
    "sections": {
        "clinical_information": "Fall, GCS 13.",
        "findings": "Acute subdural haematoma, left.",
        "impression": "Acute left SDH with mass effect.",
    },
    "fields": {"haemorrhage": "present", "midline_shift_mm": 7},
}


def principal(world: World, name: str) -> Principal:
    with session_factory(world.engine)() as session:
        return principal_for_user(session, world.user(name))


@pytest.fixture
def events() -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    unregister = register_report_listener(lambda kind, event, session: seen.append((kind, event)))
    yield seen
    unregister()


class Reading:
    """A complete county1 study whose task the assigned radiologist has claimed."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.study_uid = world.complete_study("county1", slices=2)
        self.task_id = world.take_in(self.study_uid)
        assigned = world.task(self.task_id).assigned_user_id
        self.reader = next(n for n, i in world.users.items() if i == assigned)
        self.other = "rad3" if self.reader == "rad1" else "rad1"
        with world.writer() as session, session.begin():
            claim_task(session, self.task_id, world.user(self.reader), lease=world.policy.lease)

    def run(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        with self.world.writer() as session, session.begin():
            result = call(session, *args, **kwargs)
            if isinstance(result, Report):
                session.flush()
                return result.id, result.version
            return result

    def who(self, name: str | None = None) -> Principal:
        return principal(self.world, name or self.reader)


@pytest.fixture
def reading(world: World) -> Reading:
    return Reading(world)


def _sr_instances(world: World, study_uid: str) -> list[dict[str, Any]]:
    with session_factory(world.engine)() as session:
        query = parse_query([("Modality", "SR")])
        return search(session, Level.INSTANCE, query, Scope(None), study_uid=study_uid).matches


def test_lifecycle_signs_completes_the_task_and_stores_the_sr(
    reading: Reading, events: list[tuple[str, Any]]
) -> None:
    world = reading.world
    report_id, version = reading.run(create_report, reading.who(), reading.study_uid, "ct-head")
    report_id, version = reading.run(save_report, reading.who(), report_id, HEAD, version)
    reading.run(submit_preliminary, reading.who(), report_id, version)
    assert publish_documents(world.archive, report_id, "City").failed == ()
    reading.run(sign_report, reading.who(), report_id)
    result = publish_documents(world.archive, report_id, "City")

    assert result.failed == () and len(result.stored) == 1
    assert world.task(reading.task_id).state == "COMPLETED"
    srs = _sr_instances(world, reading.study_uid)
    assert len(srs) == 2
    with session_factory(world.engine)() as session:
        assert study_completeness(session, reading.study_uid).complete  # SR is derived
        report = session.get(Report, report_id)
        assert report is not None and report.status == "final"
        assert verify_report_chain(session, report) == (True, ())
    assert [kind for kind, _ in events] == ["preliminary", "critical", "final", "critical"]
    assert events[2][1].critical_findings == ("Intracranial haemorrhage", "Midline shift")


def test_final_sr_reads_back_with_flags_and_evidence(reading: Reading) -> None:
    world = reading.world
    report_id, version = reading.run(
        create_report, reading.who(), reading.study_uid, "ct-head", HEAD
    )
    reading.run(sign_report, reading.who(), report_id, version)
    with session_factory(world.engine)() as session:
        assert reports_with_pending_documents(session) == [report_id]
    [uid] = publish_documents(world.archive, report_id, "City Hospital").stored
    with session_factory(world.engine)() as session:
        assert reports_with_pending_documents(session) == []

    raw = _stored_bytes(world, reading.study_uid, uid)
    dataset = pydicom.dcmread(io.BytesIO(raw))
    document = hd.sr.srread(io.BytesIO(raw))
    assert dataset.Modality == "SR"
    assert (dataset.CompletionFlag, dataset.VerificationFlag, dataset.PreliminaryFlag) == (
        "COMPLETE",
        "VERIFIED",
        "FINAL",
    )
    assert dataset.StudyInstanceUID == reading.study_uid
    evidence = dataset.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert len(evidence.ReferencedSOPSequence) == 2
    assert document.ContentTemplateSequence[0].TemplateIdentifier == "2000"


def test_addendum_chain_is_linked_and_verifiable(reading: Reading) -> None:
    world = reading.world
    first, version = reading.run(create_report, reading.who(), reading.study_uid, "ct-head", HEAD)
    reading.run(sign_report, reading.who(), first, version)
    publish_documents(world.archive, first, "City")

    second, version = reading.run(add_addendum, reading.who(reading.other), first)
    body = {**HEAD, "addendum": "Compared with outside CT: unchanged."}
    second, version = reading.run(save_report, reading.who(reading.other), second, body, version)
    reading.run(sign_report, reading.who(reading.other), second, version)
    [uid] = publish_documents(world.archive, second, "City").stored

    dataset = pydicom.dcmread(io.BytesIO(_stored_bytes(world, reading.study_uid, uid)))
    predecessors = dataset.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert len(predecessors.ReferencedSOPSequence) == 1
    with session_factory(world.engine)() as session:
        latest = session.get(Report, second)
        old = session.get(Report, first)
        assert latest is not None and old is not None
        assert latest.predecessor_id == first and old.status == "final"
        assert verify_report_chain(session, latest) == (True, ())


def test_a_final_report_cannot_be_changed_even_in_sql(reading: Reading) -> None:
    report_id, version = reading.run(
        create_report, reading.who(), reading.study_uid, "ct-head", HEAD
    )
    reading.run(sign_report, reading.who(), report_id, version)

    statement = text("UPDATE reports SET content_json = '{}' WHERE id = :id")
    with pytest.raises(sa_exc.DatabaseError), reading.world.writer() as session, session.begin():
        session.execute(statement, {"id": report_id})
    with pytest.raises(InvalidReportTransition, match="immutable"):
        reading.run(save_report, reading.who(), report_id, HEAD, version + 1)


def test_refusals_are_precise_and_change_nothing(reading: Reading) -> None:
    report_id, version = reading.run(create_report, reading.who(), reading.study_uid, "ct-head")

    with pytest.raises(NotReportWriter, match="another radiologist"):
        reading.run(sign_report, reading.who(reading.other), report_id)
    with pytest.raises(InvalidReportTransition, match="only a final"):
        reading.run(add_addendum, reading.who(), report_id)
    with pytest.raises(ReportVersionMismatch):
        reading.run(save_report, reading.who(), report_id, HEAD, version + 5)
    with pytest.raises(InvalidReportContent, match="midline_shift_mm"):
        reading.run(
            save_report, reading.who(), report_id, {"fields": {"midline_shift_mm": 99}}, version
        )
    with pytest.raises(ReportNotFound):
        reading.run(visible_report, reading.who("rad2"), report_id)
    with pytest.raises(ReportNotFound):
        reading.run(visible_report, reading.who("rg1"), report_id)  # a draft
    with pytest.raises(ReportExists):
        reading.run(create_report, reading.who(), reading.study_uid, "ct-head")

    with session_factory(reading.world.engine)() as session:
        report = session.get(Report, report_id)
        assert report is not None
        assert (report.status, report.version, report.content_json) == ("draft", version, _empty())
        task = session.get(ReadingTask, reading.task_id)
        assert task is not None and task.state == "IN PROGRESS"


def _empty() -> str:
    return '{"addendum":"","critical":false,"fields":{},"key_images":[],"sections":{}}'


def _stored_bytes(world: World, study_uid: str, sop_instance_uid: str) -> bytes:
    from telerad.storage import find_instances

    with session_factory(world.engine)() as session:
        [instance] = [
            i
            for i in find_instances(session, Scope(None), study_uid)
            if i.sop_instance_uid == sop_instance_uid
        ]
    return world.archive.objects.get(instance.object_key)


def test_background_loop_stores_sr_documents_left_pending(reading: Reading) -> None:
    """Signing recorded the SR but nothing stored it (as when storage was down): the worklist
    loop leaves it to the request for a minute, then stores it into the study."""
    from datetime import UTC, datetime, timedelta

    from telerad.worklist.background import PUBLISH_GRACE, WorklistLoop

    world = reading.world
    report_id, version = reading.run(
        create_report, reading.who(), reading.study_uid, "ct-head", HEAD
    )
    reading.run(sign_report, reading.who(), report_id, version)
    loop = WorklistLoop(world.engine, world.policy, archive=world.archive, institution="City")

    now = datetime.now(UTC)
    assert loop.run_once(now).published == []  # still the request's to store
    assert _sr_instances(world, reading.study_uid) == []
    report = loop.run_once(now + PUBLISH_GRACE + timedelta(seconds=1))
    assert [len(r.stored) for r in report.published] == [1] and not report.errors
    assert len(_sr_instances(world, reading.study_uid)) == 1
    with session_factory(world.engine)() as session:
        assert reports_with_pending_documents(session) == []
    later = loop.run_once(now + 2 * PUBLISH_GRACE)
    assert later.published == [] and len(_sr_instances(world, reading.study_uid)) == 1
