"""The report lifecycle as a pure state machine, the writer rule, and the signature chain.

States of one report version (PS3.3 §C.17.2 gives the DICOM view of the same lifecycle: a
preliminary SR is PARTIAL/UNVERIFIED/PRELIMINARY, a final one COMPLETE/VERIFIED/FINAL)::

    original:  DRAFT ──save──▶ DRAFT ──preliminary──▶ PRELIMINARY ──sign──▶ FINAL
                 └──────────────────sign───────────────────────────────▶ FINAL
    addendum:  DRAFT ──save──▶ DRAFT ──sign──▶ FINAL
    FINAL ──addendum──▶ (a new DRAFT addendum whose predecessor is this version)

A preliminary report may still be edited (``save``) and issued again before it is signed;
a final version never changes (the database refuses it as well). Everything else is an
:class:`InvalidReportTransition` naming what was attempted and why it is not allowed.

Signatures: the *content hash* is the SHA-256 of the canonical content
(:func:`telerad.worklist.templates.content_sha256`); the *record hash* of a final version is
the SHA-256 of the canonical JSON of its content hash, signer, signing time, sequence and the
record hash of its predecessor, so :func:`verify_chain` detects any changed, removed or
re-ordered version.

Errors: :class:`ReportStateError` → :class:`InvalidReportTransition`, :class:`NotReportWriter`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from telerad.worklist.templates import canonical_json


class ReportStatus(enum.StrEnum):
    """Status of one report version."""

    DRAFT = "draft"
    PRELIMINARY = "preliminary"
    FINAL = "final"


class ReportKind(enum.StrEnum):
    """The original report of a task, or an addendum to a final version."""

    ORIGINAL = "report"
    ADDENDUM = "addendum"


class ReportAction(enum.StrEnum):
    """What a writer asks to do with a report version."""

    SAVE = "save"
    PRELIMINARY = "preliminary"
    SIGN = "sign"
    ADDENDUM = "addendum"


class ReportStateError(Exception):
    """Base class of lifecycle errors."""


class InvalidReportTransition(ReportStateError):
    """The action is not allowed in the version's current state (HTTP 409)."""


class NotReportWriter(ReportStateError):
    """The caller may see the report but may not write it (HTTP 403)."""


_D, _P, _F = ReportStatus.DRAFT, ReportStatus.PRELIMINARY, ReportStatus.FINAL
_O, _A = ReportKind.ORIGINAL, ReportKind.ADDENDUM
#: (kind, status, action) → status after the action. ``ADDENDUM`` leaves the final version
#: as it is and creates a new draft addendum.
TRANSITIONS: dict[tuple[ReportKind, ReportStatus, ReportAction], ReportStatus] = {
    (_O, _D, ReportAction.SAVE): _D,
    (_O, _D, ReportAction.PRELIMINARY): _P,
    (_O, _D, ReportAction.SIGN): _F,
    (_O, _P, ReportAction.SAVE): _P,
    (_O, _P, ReportAction.PRELIMINARY): _P,
    (_O, _P, ReportAction.SIGN): _F,
    (_A, _D, ReportAction.SAVE): _D,
    (_A, _D, ReportAction.SIGN): _F,
    (_O, _F, ReportAction.ADDENDUM): _F,
    (_A, _F, ReportAction.ADDENDUM): _F,
}
_WHY = {
    ReportAction.SAVE: "a final report is immutable; add an addendum instead",
    ReportAction.PRELIMINARY: "only an original draft or preliminary report can be issued as "
    "preliminary",
    ReportAction.SIGN: "it is signed already",
    ReportAction.ADDENDUM: "only a final (signed) report can be amended",
}


def next_status(kind: ReportKind, status: ReportStatus, action: ReportAction) -> ReportStatus:
    """The status after ``action``; :class:`InvalidReportTransition` if no row allows it."""
    try:
        return TRANSITIONS[(kind, status, action)]
    except KeyError:
        raise InvalidReportTransition(
            f"cannot {action.value} a {status.value} {kind.value}: {_WHY[action]}"
        ) from None


class TaskState(enum.StrEnum):
    """UPS Procedure Step State (PS3.4 CC.1.1) of the reading task, as the worklist stores it."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


@dataclass(frozen=True, slots=True)
class WriteFacts:
    """Everything the writer rule needs, as plain values."""

    user_id: int
    role: str
    reading_site_ids: frozenset[int]
    study_site_id: int | None
    kind: ReportKind
    task_state: str
    task_holder_id: int | None
    #: The author of the version being written (None when creating one).
    author_id: int | None = None
    #: For an addendum: who signed the version it amends.
    predecessor_signer_id: int | None = None


def check_writer(facts: WriteFacts) -> None:
    """Raise :class:`NotReportWriter` unless the caller may write this report version.

    The original report is written only by the radiologist holding the study's task (IN
    PROGRESS, claimed by him). An addendum is written after completion by the signer of the
    version it amends or by another radiologist who reads for the study's site. A draft is
    written only by its author. (Visibility — a study the caller may not see at all — is
    checked before this and answers 404.)
    """
    if facts.role != "radiologist":
        raise NotReportWriter("only a radiologist writes reports")
    if facts.author_id is not None and facts.author_id != facts.user_id:
        raise NotReportWriter("this draft belongs to another radiologist")
    if facts.kind is ReportKind.ORIGINAL:
        _check_task_holder(facts)
        return
    reads_for_site = facts.study_site_id is not None and (
        facts.study_site_id in facts.reading_site_ids
    )
    if facts.predecessor_signer_id != facts.user_id and not reads_for_site:
        raise NotReportWriter("only the signer or a radiologist reading for the site may amend")


def _check_task_holder(facts: WriteFacts) -> None:
    if facts.task_state != TaskState.IN_PROGRESS:
        raise NotReportWriter(
            f"the reading task is {facts.task_state}; claim it before writing the report"
        )
    if facts.task_holder_id != facts.user_id:
        raise NotReportWriter("the reading task is held by another radiologist")


@dataclass(frozen=True, slots=True)
class SignedVersion:
    """What the record hash of one final version covers (plain values)."""

    report_id: int
    sequence: int
    content_sha256: str
    signer: str
    signed_at: datetime
    record_sha256: str


def record_sha256(
    content_hash: str, signer: str, signed_at: datetime, sequence: int, predecessor: str | None
) -> str:
    """The record hash of a final version (see the module docstring)."""
    document = {
        "content_sha256": content_hash,
        "signer": signer,
        "signed_at": signed_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "sequence": sequence,
        "predecessor_record_sha256": predecessor,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """Outcome of :func:`verify_chain`: ``problems`` is empty when the chain is intact."""

    intact: bool
    problems: tuple[str, ...]


def verify_chain(
    versions: Sequence[SignedVersion], recomputed_content: Sequence[str]
) -> ChainCheck:
    """Check the signed versions of a chain (oldest first).

    ``recomputed_content`` holds the content hash recomputed from each version's stored
    content; each must equal the hash recorded when it was signed, each record hash must be
    recomputable from its fields and its predecessor's record hash, and sequences must run
    0, 1, 2, … without gaps.
    """
    problems: list[str] = []
    previous: str | None = None
    for position, (version, recomputed) in enumerate(
        zip(versions, recomputed_content, strict=True)
    ):
        name = f"report {version.report_id}"
        if version.sequence != position:
            problems.append(f"{name}: sequence {version.sequence}, expected {position}")
        if recomputed != version.content_sha256:
            problems.append(f"{name}: content differs from what was signed")
        expected = record_sha256(
            version.content_sha256, version.signer, version.signed_at, version.sequence, previous
        )
        if expected != version.record_sha256:
            problems.append(f"{name}: record hash does not match its signature or predecessor")
        previous = version.record_sha256
    return ChainCheck(not problems, tuple(problems))
