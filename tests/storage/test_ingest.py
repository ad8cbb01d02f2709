"""The single ingest path: idempotent, all-or-nothing, conflicts kept for review."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from telerad.storage import (
    Archive,
    IngestSource,
    IngestStatus,
    Instance,
    InstanceConflict,
    InvalidInstance,
    Patient,
    RejectedInstance,
    Series,
    StorageUnavailable,
    Study,
    StudyMismatch,
)
from tests.factories import ct_datasets, ct_instances, new_uid, one_instance, part10

SOURCE = IngestSource(site_id=None, issuer="TEST", label="test")


def counts(archive: Archive) -> tuple[int, int, int, int, int]:
    with archive.sessions() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(model))
            for model in (Patient, Study, Series, Instance, RejectedInstance)
        )


def objects(archive: Archive) -> list[str]:
    return list(archive.objects.list("studies/"))


def test_ingest_stores_object_and_rows(archive: Archive) -> None:
    data = ct_instances(3)
    results = [archive.ingest_instance(d, SOURCE) for d in data]
    assert [r.status for r in results] == [IngestStatus.STORED] * 3
    assert counts(archive) == (1, 1, 1, 3, 0)
    for result, raw in zip(results, data, strict=True):
        assert archive.objects.get(result.object_key) == raw
    with archive.sessions() as session:
        study = session.scalar(select(Study))
        assert study is not None
        assert (study.num_series, study.num_instances, study.modalities_in_study) == (1, 3, "CT")
        instance = session.scalar(select(Instance).order_by(Instance.instance_number))
        assert instance is not None and instance.frame_ranges is not None
        assert instance.metadata_json.startswith("{")


def test_same_instance_twice_is_a_no_op(archive: Archive) -> None:
    data = one_instance()
    first = archive.ingest_instance(data, SOURCE)
    second = archive.ingest_instance(data, SOURCE)
    assert second.status is IngestStatus.ALREADY_STORED
    assert second.object_key == first.object_key
    assert counts(archive) == (1, 1, 1, 1, 0)
    assert objects(archive) == [first.object_key]


def test_conflicting_content_keeps_first_and_files_the_copy(archive: Archive) -> None:
    ds = ct_datasets(1)[0]
    first = archive.ingest_instance(part10(ds), SOURCE)
    ds.StudyDescription = "changed after the first send"
    with pytest.raises(InstanceConflict):
        archive.ingest_instance(part10(ds), SOURCE)
    assert counts(archive) == (1, 1, 1, 1, 1)
    assert objects(archive) == [first.object_key]
    with archive.sessions() as session:
        rejected = session.scalar(select(RejectedInstance))
        assert rejected is not None and rejected.stored_sha256 == first.sha256
        assert archive.objects.get(rejected.object_key) == part10(ds)


def test_catalog_failure_after_object_write_leaves_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the database fails after the object is written. A real database
    crash cannot be produced on demand here, so the flush of the instance row raises."""
    archive.ingest_instance(one_instance(), SOURCE)
    before_counts, before_objects = counts(archive), objects(archive)

    def fail_on_instance(session: Session, _context: object, _instances: object) -> None:
        if any(isinstance(obj, Instance) for obj in session.new):
            raise RuntimeError("injected catalog failure")

    event.listen(Session, "before_flush", fail_on_instance)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            archive.ingest_instance(one_instance(), SOURCE)
    finally:
        event.remove(Session, "before_flush", fail_on_instance)
    assert counts(archive) == before_counts  # the new patient/study/series rolled back too
    assert objects(archive) == before_objects  # the object written first was removed


def test_object_store_failure_writes_no_row(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the object store refuses the write (a full or unreachable store
    cannot be produced on demand here)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise StorageUnavailable("injected: disk full")

    monkeypatch.setattr(archive.objects, "put", refuse)
    with pytest.raises(StorageUnavailable):
        archive.ingest_instance(one_instance(), SOURCE)
    assert counts(archive) == (0, 0, 0, 0, 0)


def test_crash_between_object_and_catalog_is_swept(archive: Archive) -> None:
    """A process killed after the object write leaves an unreferenced object: the sweep
    removes it and nothing else."""
    kept = archive.ingest_instance(one_instance(), SOURCE)
    orphan = "studies/ab/" + "ab" * 16 + "/" + "cd" * 16 + "/" + "ef" * 16 + "-0123456789abcdef.dcm"
    archive.objects.put(orphan, b"left by a crash")
    from datetime import timedelta

    assert archive.sweep_orphans(older_than=timedelta(0)) == [orphan]
    assert objects(archive) == [kept.object_key]


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "../x"),
        ("SeriesInstanceUID", "1." + "2" * 70),
        ("SOPInstanceUID", "1.2.abc"),
        ("PatientName", "A" * 10_000),
    ],
)
def test_invalid_instances_are_refused_without_trace(
    archive: Archive, attribute: str, value: str
) -> None:
    with pytest.raises(InvalidInstance, match=attribute):
        archive.ingest_instance(one_instance(**{attribute: value}), SOURCE)
    assert counts(archive) == (0, 0, 0, 0, 0)
    assert objects(archive) == []


@pytest.mark.parametrize(
    "data",
    [b"", b"not dicom at all", b"\0" * 128 + b"DICM" + b"\x02\x00"],
    ids=["empty", "text", "meta-only"],
)
def test_unreadable_bytes_are_refused(archive: Archive, data: bytes) -> None:
    with pytest.raises(InvalidInstance):
        archive.ingest_instance(data, SOURCE)
    assert counts(archive) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8, 0.99])
def test_truncated_files_are_refused(archive: Archive, fraction: float) -> None:
    raw = one_instance()
    payload = raw[: int(len(raw) * fraction)]
    with pytest.raises(InvalidInstance):
        archive.ingest_instance(payload, SOURCE)
    assert counts(archive) == (0, 0, 0, 0, 0)


def test_study_in_request_must_match(archive: Archive) -> None:
    with pytest.raises(StudyMismatch):
        archive.ingest_instance(one_instance(), SOURCE, study_uid=new_uid())
    assert counts(archive) == (0, 0, 0, 0, 0)


def test_study_of_one_site_cannot_be_extended_by_another(archive: Archive, engine) -> None:
    from telerad.worklist import create_site

    with archive.sessions.begin() as session:
        one, two = create_site(session, "one").id, create_site(session, "two").id
    datasets = ct_datasets(2)
    archive.ingest_instance(part10(datasets[0]), IngestSource(one, "ONE", "one"))
    with pytest.raises(StudyMismatch, match="another site"):
        archive.ingest_instance(part10(datasets[1]), IngestSource(two, "TWO", "two"))
    assert counts(archive)[3] == 1


def test_patient_issuer_defaults_to_the_sending_site(archive: Archive) -> None:
    archive.ingest_instance(one_instance(PatientID="P1"), IngestSource(None, "COUNTY-A", "a"))
    archive.ingest_instance(one_instance(PatientID="P1"), IngestSource(None, "COUNTY-B", "b"))
    archive.ingest_instance(
        one_instance(PatientID="P1", IssuerOfPatientID="NATIONAL"),
        IngestSource(None, "COUNTY-A", "a"),
    )
    with archive.sessions() as session:
        keys = sorted(tuple(r) for r in session.execute(select(Patient.issuer, Patient.patient_id)))
    assert keys == [("COUNTY-A", "P1"), ("COUNTY-B", "P1"), ("NATIONAL", "P1")]


def test_concurrent_ingest_of_one_study(archive: Archive) -> None:
    """Eight threads store one new study at once, each instance twice: no lost count, no
    duplicate row, no orphan object, on SQLite and PostgreSQL."""
    data = ct_instances(16)
    errors: list[BaseException] = []

    def worker(chunk: list[bytes]) -> None:
        try:
            for raw in chunk:
                archive.ingest_instance(raw, SOURCE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(data[i::4] * 2,)) for i in range(4)]
    threads += [threading.Thread(target=worker, args=(data[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert counts(archive) == (1, 1, 1, 16, 0)
    with archive.sessions() as session:
        study = session.scalar(select(Study))
        assert study is not None and (study.num_instances, study.num_series) == (16, 1)
    assert len(objects(archive)) == 16
