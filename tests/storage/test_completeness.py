"""Study completeness: the latest manifest against what is stored, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from telerad.storage import (
    MAX_MANIFEST_ENTRIES,
    Archive,
    IngestSource,
    IngestStatus,
    InstanceConflict,
    InvalidKey,
    InvalidManifest,
    ManifestEntry,
    StudyCompleteness,
    StudyManifest,
    StudyNotFound,
    study_completeness,
    submit_manifest,
)
from telerad.worklist import create_site
from tests.factories import ct_datasets, ct_instances, manifest_of, new_uid, part10

SOURCE = IngestSource(site_id=None, issuer="TEST", label="test")
OTHER_HASH = "0" * 64


def status(archive: Archive, study_uid: str) -> StudyCompleteness | None:
    with archive.sessions() as session:
        return study_completeness(session, study_uid)


def store(archive: Archive, instances: list[bytes], source: IngestSource = SOURCE) -> list[Any]:
    return [archive.ingest_instance(raw, source) for raw in instances]


def sites(archive: Archive) -> tuple[IngestSource, IngestSource]:
    """Two sending sites."""
    with archive.sessions.begin() as session:
        one, two = create_site(session, "one").id, create_site(session, "two").id
    return IngestSource(one, "ONE", "one"), IngestSource(two, "TWO", "two")


# --- evaluation ------------------------------------------------------------------------------


def test_study_is_complete_when_every_entry_is_stored_with_its_hash(archive: Archive) -> None:
    instances = ct_instances(3)
    store(archive, instances)
    study_uid, entries = manifest_of(instances)

    result = submit_manifest(archive.engine, study_uid, entries, None)

    assert (result.received, result.expected, result.complete) == (3, 3, True)
    assert (result.missing, result.mismatched) == ((), ())
    assert result.became_complete
    assert result.manifest_at is not None and result.completed_at is not None
    assert result.completed_at.tzinfo is not None
    assert status(archive, study_uid) == StudyCompleteness(
        **{**_fields(result), "became_complete": False}
    )


def test_unstored_entries_are_missing(archive: Archive) -> None:
    instances = ct_instances(4)
    store(archive, instances[:2])
    study_uid, entries = manifest_of(instances)

    result = submit_manifest(archive.engine, study_uid, entries, None)

    assert (result.received, result.expected, result.complete) == (2, 4, False)
    assert result.missing == tuple(sorted(manifest_of(instances[2:])[1]))
    assert result.mismatched == ()
    assert not result.became_complete and result.completed_at is None


def test_entries_stored_with_another_hash_are_mismatched(archive: Archive) -> None:
    instances = ct_instances(3)
    store(archive, instances)
    study_uid, entries = manifest_of(instances)
    changed = sorted(entries)[1]
    entries[changed] = OTHER_HASH

    result = submit_manifest(archive.engine, study_uid, entries, None)

    assert (result.complete, result.missing, result.mismatched) == (False, (), (changed,))


def test_instance_stored_in_another_study_counts_as_missing(archive: Archive) -> None:
    [elsewhere] = store(archive, ct_instances(1))
    own = ct_instances(1)
    store(archive, own)
    study_uid, entries = manifest_of(own)
    entries[elsewhere.sop_instance_uid] = elsewhere.sha256

    result = submit_manifest(archive.engine, study_uid, entries, None)

    assert (result.complete, result.missing) == (False, (elsewhere.sop_instance_uid,))


def test_study_without_manifest_and_unknown_study(archive: Archive) -> None:
    instances = ct_instances(2)
    [first, _] = store(archive, instances)

    known = status(archive, first.study_uid)

    assert known is not None
    assert (known.received, known.expected, known.complete, known.manifest_at) == (
        2,
        0,
        False,
        None,
    )
    assert status(archive, new_uid()) is None


# --- manifest first, instances later ---------------------------------------------------------


def test_manifest_before_any_instance_then_the_last_instance_completes(archive: Archive) -> None:
    instances = ct_instances(3)
    study_uid, entries = manifest_of(instances)

    before = submit_manifest(archive.engine, study_uid, entries, None)
    results = store(archive, instances)

    assert (before.received, before.expected, before.complete) == (0, 3, False)
    assert before.missing == tuple(sorted(entries))
    assert [r.completed_study for r in results] == [False, False, True]
    after = status(archive, study_uid)
    assert after is not None
    assert (after.received, after.complete, after.missing) == (3, True, ())
    assert after.completed_at is not None


def test_resending_a_stored_instance_changes_nothing(archive: Archive) -> None:
    instances = ct_instances(2)
    study_uid, entries = manifest_of(instances)
    submit_manifest(archive.engine, study_uid, entries, None)
    store(archive, instances)
    completed_at = _completed_at(archive, study_uid)

    [again] = store(archive, instances[:1])

    assert (again.status, again.completed_study) == (IngestStatus.ALREADY_STORED, False)
    assert _completed_at(archive, study_uid) == completed_at


def test_instance_with_another_hash_than_listed_does_not_complete(archive: Archive) -> None:
    instances = ct_instances(2)
    study_uid, entries = manifest_of(instances)
    last = sorted(entries)[-1]
    entries[last] = OTHER_HASH
    submit_manifest(archive.engine, study_uid, entries, None)

    results = store(archive, instances)

    assert not any(r.completed_study for r in results)
    result = status(archive, study_uid)
    assert result is not None
    assert (result.complete, result.mismatched) == (False, (last,))


# --- re-opening and replacing ----------------------------------------------------------------


def test_a_new_instance_not_in_the_manifest_reopens_the_study(archive: Archive) -> None:
    datasets = ct_datasets(3)
    first, late = [part10(ds) for ds in datasets[:2]], part10(datasets[2])
    store(archive, first)
    study_uid, entries = manifest_of(first)
    assert submit_manifest(archive.engine, study_uid, entries, None).complete

    [added] = store(archive, [late])

    reopened = status(archive, study_uid)
    assert reopened is not None
    assert not added.completed_study
    assert (reopened.received, reopened.expected, reopened.complete) == (3, 2, False)
    assert (reopened.missing, reopened.mismatched, reopened.completed_at) == ((), (), None)
    again = submit_manifest(archive.engine, study_uid, manifest_of([*first, late])[1], None)
    assert (again.complete, again.became_complete, again.expected) == (True, True, 3)


def test_a_refused_conflicting_copy_does_not_reopen(archive: Archive) -> None:
    [ds] = ct_datasets(1)
    original = part10(ds)
    store(archive, [original])
    study_uid, entries = manifest_of([original])
    submit_manifest(archive.engine, study_uid, entries, None)
    ds.StudyDescription = "changed after sending"

    with pytest.raises(InstanceConflict):
        archive.ingest_instance(part10(ds), SOURCE)

    result = status(archive, study_uid)
    assert result is not None and result.complete


def test_a_new_manifest_replaces_the_previous_one(archive: Archive) -> None:
    instances = ct_instances(2)
    store(archive, instances)
    study_uid, entries = manifest_of(instances)
    phantom = new_uid()

    first = submit_manifest(archive.engine, study_uid, {**entries, phantom: OTHER_HASH}, None)
    second = submit_manifest(archive.engine, study_uid, entries, None)

    assert (first.complete, first.missing, first.expected) == (False, (phantom,), 3)
    assert (second.complete, second.missing, second.expected) == (True, (), 2)
    assert second.manifest_at is not None and first.manifest_at is not None
    assert second.manifest_at >= first.manifest_at
    with archive.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StudyManifest)) == 1
        listed = set(session.scalars(select(ManifestEntry.sop_instance_uid)))
    assert listed == set(entries)


def test_a_replacement_that_no_longer_matches_reopens(archive: Archive) -> None:
    instances = ct_instances(2)
    store(archive, instances)
    study_uid, entries = manifest_of(instances)
    submit_manifest(archive.engine, study_uid, entries, None)

    changed = {**entries, sorted(entries)[0]: OTHER_HASH}
    result = submit_manifest(archive.engine, study_uid, changed, None)

    assert (result.complete, result.completed_at, result.became_complete) == (False, None, False)
    assert result.mismatched == (sorted(entries)[0],)


def test_became_complete_only_once(archive: Archive) -> None:
    instances = ct_instances(2)
    store(archive, instances)
    study_uid, entries = manifest_of(instances)

    results = [submit_manifest(archive.engine, study_uid, entries, None) for _ in range(3)]

    assert [r.became_complete for r in results] == [True, False, False]
    assert [r.complete for r in results] == [True, True, True]
    assert len({r.completed_at for r in results}) == 1
    assert results[2].manifest_at != results[0].manifest_at


# --- ownership -------------------------------------------------------------------------------


def test_a_site_cannot_post_for_another_sites_study(archive: Archive) -> None:
    one, two = sites(archive)
    instances = ct_instances(2)
    store(archive, instances, one)
    study_uid, entries = manifest_of(instances)

    with pytest.raises(StudyNotFound):
        submit_manifest(archive.engine, study_uid, entries, two.site_id)

    assert status(archive, study_uid) == StudyCompleteness(
        study_uid, one.site_id, 2, 0, False, (), (), None, None
    )
    own = submit_manifest(archive.engine, study_uid, entries, one.site_id)
    admin = submit_manifest(archive.engine, study_uid, entries, None)
    assert (own.complete, own.site_id, admin.site_id) == (True, one.site_id, one.site_id)


def test_a_manifest_before_the_study_claims_it_for_its_site(archive: Archive) -> None:
    one, two = sites(archive)
    study_uid, entries = manifest_of(ct_instances(2))
    first = submit_manifest(archive.engine, study_uid, entries, one.site_id)

    with pytest.raises(StudyNotFound):
        submit_manifest(archive.engine, study_uid, entries, two.site_id)

    assert first.site_id == one.site_id
    result = status(archive, study_uid)
    assert result is not None and (result.site_id, result.received) == (one.site_id, 0)


# --- validation ------------------------------------------------------------------------------

GOOD_HASH = "a" * 64
BAD_ENTRIES = {
    "uid-letters": ("1.2.abc", GOOD_HASH),
    "uid-traversal": ("../1.2", GOOD_HASH),
    "uid-too-long": ("1." * 32 + "1", GOOD_HASH),
    "uid-empty": ("", GOOD_HASH),
    "hash-upper-case": ("1.2.3", "A" * 64),
    "hash-short": ("1.2.3", "a" * 63),
    "hash-long": ("1.2.3", "a" * 65),
    "hash-not-hex": ("1.2.3", "g" * 64),
    "hash-not-str": ("1.2.3", 7),
}


@pytest.mark.parametrize(("uid", "digest"), BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_one_malformed_entry_refuses_the_manifest(archive: Archive, uid: str, digest: Any) -> None:
    study_uid = new_uid()

    with pytest.raises(InvalidManifest):
        submit_manifest(archive.engine, study_uid, {"1.2.9": GOOD_HASH, uid: digest}, None)

    assert status(archive, study_uid) is None


def test_an_empty_manifest_is_refused(archive: Archive) -> None:
    study_uid = new_uid()

    with pytest.raises(InvalidManifest, match="at least one"):
        submit_manifest(archive.engine, study_uid, {}, None)

    assert status(archive, study_uid) is None


def test_manifest_size_is_capped(archive: Archive) -> None:
    entries = {f"1.2.3.{n}": GOOD_HASH for n in range(MAX_MANIFEST_ENTRIES + 1)}
    study_uid = new_uid()

    with pytest.raises(InvalidManifest, match="at most"):
        submit_manifest(archive.engine, study_uid, entries, None)

    assert status(archive, study_uid) is None


@pytest.mark.parametrize("study_uid", ["1.2.abc", "", "../x", "1." * 32 + "1"])
def test_malformed_study_uid_is_refused(archive: Archive, study_uid: str) -> None:
    with pytest.raises(InvalidKey):
        submit_manifest(archive.engine, study_uid, {"1.2.3": GOOD_HASH}, None)
    with archive.sessions() as session, pytest.raises(InvalidKey):
        study_completeness(session, study_uid)


def test_a_large_manifest_is_evaluated_in_uid_order(archive: Archive) -> None:
    instances = ct_instances(2)
    store(archive, instances)
    study_uid, entries = manifest_of(instances)
    absent = {f"1.2.826.0.1.{n}": GOOD_HASH for n in range(5000)}

    result = submit_manifest(archive.engine, study_uid, {**entries, **absent}, None)

    assert (result.expected, result.received) == (5002, 2)
    assert result.missing == tuple(sorted(absent))


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_last_instances_complete_the_study_exactly_once(archive: Archive) -> None:
    instances = ct_instances(8)
    study_uid, entries = manifest_of(instances)
    submit_manifest(archive.engine, study_uid, entries, None)

    results = _in_threads(
        [lambda raw=raw: archive.ingest_instance(raw, SOURCE) for raw in instances]
    )

    assert sum(r.completed_study for r in results) == 1
    final = status(archive, study_uid)
    assert final is not None and (final.complete, final.received) == (True, 8)


def test_manifest_racing_the_last_instance_ends_complete(archive: Archive) -> None:
    instances = ct_instances(6)
    store(archive, instances[:-1])
    study_uid, entries = manifest_of(instances)

    manifest, last = _in_threads(
        [
            lambda: submit_manifest(archive.engine, study_uid, entries, None),
            lambda: archive.ingest_instance(instances[-1], SOURCE),
        ]
    )

    assert manifest.became_complete + last.completed_study == 1
    final = status(archive, study_uid)
    assert final is not None and final.complete


# --- helpers ---------------------------------------------------------------------------------


def _fields(result: StudyCompleteness) -> dict[str, Any]:
    return {name: getattr(result, name) for name in StudyCompleteness.__slots__}


def _completed_at(archive: Archive, study_uid: str) -> Any:
    result = status(archive, study_uid)
    assert result is not None
    return result.completed_at


def _in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` at once, each on its own thread; their results in order."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = calls[index]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results
