"""The report lifecycle's pure state machine, writer rule and record-hash chain."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from telerad.worklist import InvalidReportTransition, NotReportWriter, ReportKind, ReportStatus
from telerad.worklist.report_states import (
    TRANSITIONS,
    ReportAction,
    SignedVersion,
    WriteFacts,
    check_writer,
    next_status,
    record_sha256,
    verify_chain,
)

ORIG, A = ReportKind.ORIGINAL, ReportKind.ADDENDUM
D, P, F = ReportStatus.DRAFT, ReportStatus.PRELIMINARY, ReportStatus.FINAL
S = ReportAction

ALLOWED = [
    (ORIG, D, S.SAVE, D), (ORIG, D, S.PRELIMINARY, P), (ORIG, D, S.SIGN, F),
    (ORIG, P, S.SAVE, P), (ORIG, P, S.PRELIMINARY, P), (ORIG, P, S.SIGN, F),
    (A, D, S.SAVE, D), (A, D, S.SIGN, F), (ORIG, F, S.ADDENDUM, F), (A, F, S.ADDENDUM, F),
]  # fmt: skip
REFUSED = [
    (ORIG, F, S.SAVE, "immutable"), (ORIG, F, S.SIGN, "signed already"),
    (ORIG, F, S.PRELIMINARY, "preliminary"), (A, D, S.PRELIMINARY, "preliminary"),
    (ORIG, D, S.ADDENDUM, "only a final"), (ORIG, P, S.ADDENDUM, "only a final"),
    (A, D, S.ADDENDUM, "only a final"), (A, F, S.SAVE, "immutable"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "status", "action", "after"), ALLOWED)
def test_allowed_transitions(
    kind: ReportKind, status: ReportStatus, action: ReportAction, after: ReportStatus
) -> None:
    assert next_status(kind, status, action) is after


@pytest.mark.parametrize(("kind", "status", "action", "message"), REFUSED)
def test_refused_transitions(
    kind: ReportKind, status: ReportStatus, action: ReportAction, message: str
) -> None:
    with pytest.raises(InvalidReportTransition, match=message):
        next_status(kind, status, action)


def test_the_table_has_exactly_the_listed_rows() -> None:
    everything = {(k, s, a) for k in ReportKind for s in ReportStatus for a in ReportAction}
    listed = {(k, s, a) for k, s, a, _ in ALLOWED}
    assert set(TRANSITIONS) == listed
    assert everything - listed >= {(k, s, a) for k, s, a, _ in REFUSED}


HOLDER = WriteFacts(
    user_id=1, role="radiologist", reading_site_ids=frozenset({7}), study_site_id=7,
    kind=ORIG, task_state="IN PROGRESS", task_holder_id=1, author_id=1,
)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({}, None),
        ({"role": "admin"}, "only a radiologist"),
        ({"role": "radiographer"}, "only a radiologist"),
        ({"task_holder_id": 2}, "held by another"),
        ({"task_state": "SCHEDULED"}, "claim it"),
        ({"task_state": "COMPLETED"}, "claim it"),
        ({"author_id": 2}, "belongs to another"),
        ({"kind": A, "task_state": "COMPLETED", "predecessor_signer_id": 1}, None),
        ({"kind": A, "task_state": "COMPLETED", "predecessor_signer_id": 2}, None),
        ({"kind": A, "predecessor_signer_id": 2, "reading_site_ids": frozenset()}, "the signer"),
        ({"kind": A, "predecessor_signer_id": 1, "reading_site_ids": frozenset()}, None),
    ],
)
def test_writer_rule(change: dict[str, object], message: str | None) -> None:
    facts = replace(HOLDER, **change)  # type: ignore[arg-type]
    if message is None:
        check_writer(facts)
    else:
        with pytest.raises(NotReportWriter, match=message):
            check_writer(facts)


def chain(length: int) -> tuple[list[SignedVersion], list[str]]:
    start = datetime(2026, 1, 1, 8, 0, 0, 123456, tzinfo=UTC)
    versions: list[SignedVersion] = []
    previous = None
    for sequence in range(length):
        content = f"{sequence:064x}"
        at = start + timedelta(hours=sequence)
        record = record_sha256(content, f"Dr {sequence}", at, sequence, previous)
        versions.append(
            SignedVersion(sequence + 1, sequence, content, f"Dr {sequence}", at, record)
        )
        previous = record
    return versions, [v.content_sha256 for v in versions]


def test_an_intact_chain_verifies() -> None:
    versions, contents = chain(3)
    assert verify_chain(versions, contents).intact


def test_record_hash_ignores_the_timezone_of_the_same_instant() -> None:
    versions, _ = chain(1)
    v = versions[0]
    other = v.signed_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert record_sha256(v.content_sha256, v.signer, other, 0, None) == v.record_sha256


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda vs, cs: (vs, [cs[0], "0" * 64, cs[2]]), "content differs"),
        (lambda vs, cs: ([vs[0], replace(vs[1], signer="Mallory"), vs[2]], cs), "record hash"),
        (lambda vs, cs: ([vs[0], vs[2]], [cs[0], cs[2]]), "sequence 2, expected 1"),
        (lambda vs, cs: ([vs[1], vs[0], vs[2]], [cs[1], cs[0], cs[2]]), "sequence"),
        (lambda vs, cs: ([vs[0], replace(vs[1], signed_at=vs[1].signed_at + timedelta(seconds=1)),
                          vs[2]], cs), "record hash"),
    ],
)  # fmt: skip
def test_any_change_breaks_the_chain(tamper: object, problem: str) -> None:
    versions, contents = chain(3)
    changed, recomputed = tamper(versions, contents)  # type: ignore[operator]
    check = verify_chain(changed, recomputed)
    assert not check.intact
    assert any(problem in p for p in check.problems), check.problems
