"""The report as a DICOM Comprehensive SR document following TID 2000 (pure builder).

Content tree (PS3.16 TID 2000 "Basic Diagnostic Imaging Report", with TID 2002 narrative and
TID 2001 observations under each heading)::

    CONTAINER  <document title, CID 7000>                         (template 2000, root)
      HAS CONCEPT MOD  CODE  Language of Content Item and Descendants = en-US   (TID 1204)
      HAS OBS CONTEXT  CODE  Observer Type = Person; PNAME Person Observer Name (TID 1001)
      CONTAINS CONTAINER <heading, CID 7001>            one per non-empty section
        CONTAINS TEXT  <report element, CID 7002> = section text
      CONTAINS CONTAINER Findings
        CONTAINS CODE  <finding concept> = Present | Absent | Undetermined   (CID 240)
        CONTAINS NUM   <measurement concept> = value mm (UCUM)               (TID 1400)
      CONTAINS CONTAINER Key Images
        CONTAINS IMAGE Best illustration of finding → instance (frame)       (TID 2001)
      CONTAINS CONTAINER Communication of Critical Results   (when a critical finding exists)
        CONTAINS TEXT  Finding = "Critical finding: …"
      CONTAINS CONTAINER Addendum                             (addenda: one TEXT each)

The SR Document General Module (PS3.3 §C.17.2) carries the flags: a preliminary document is
Completion Flag PARTIAL, Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY; a final
one COMPLETE, VERIFIED (with the Verifying Observer Sequence: signer, organization, time) and
FINAL. An addendum's document lists the documents of earlier versions in the Predecessor
Documents Sequence, and every document lists the study's instances in the Current Requested
Procedure Evidence Sequence. Patient and study attributes are copied from the study's stored
metadata. highdicom builds and checks the document (it is valid when the constructor returns).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from telerad.worklist.report_states import ReportKind, ReportStatus
from telerad.worklist.report_view import ReportBundle, ReportVersion
from telerad.worklist.templates import (
    ADDENDUM_HEADING,
    CRITICAL_HEADING,
    KEY_IMAGE_PURPOSE,
    KEY_IMAGES_HEADING,
    LOCAL_SCHEME,
    LOCAL_SCHEME_NAME,
    PRESENCE,
    SECTIONS,
    Code,
    CodedField,
)

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SR_SERIES_NUMBER = 9900
_CONTAINS = RelationshipTypeValues.CONTAINS
_ENGLISH = CodedConcept("en-US", "RFC5646", "English (United States)")
_FINDINGS = "findings"
_SKIPPED_GROUPS = ("0002",)
_PIXEL_DATA = "7FE00010"


@dataclass(frozen=True, slots=True)
class SrIdentity:
    """The UIDs and numbers of the SR document to build."""

    sop_instance_uid: str
    series_uid: str
    instance_number: int
    series_number: int = SR_SERIES_NUMBER


@dataclass(frozen=True, slots=True)
class PredecessorRef:
    """An earlier SR document of the report chain (Predecessor Documents Sequence)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str = COMPREHENSIVE_SR


def build_report_sr(
    bundle: ReportBundle,
    evidence: Sequence[Mapping[str, Any]],
    identity: SrIdentity,
    *,
    predecessors: Sequence[PredecessorRef] = (),
    manufacturer: str = "telerad",
) -> hd.sr.ComprehensiveSR:
    """Build the SR document of ``bundle.version`` (preliminary or final).

    Parameters
    ----------
    bundle
        The version (its status decides the flags), its chain (addendum texts) and study.
    evidence
        DICOM JSON (PS3.18 Annex F) of the study's instances the report is about; the first
        one supplies the patient and study attributes. Key images must be among them.
    identity
        SOP Instance UID, Series Instance UID and numbers of the new document.
    predecessors
        Earlier documents of the chain (PS3.3 §C.17.2.3).

    Raises
    ------
    ValueError
        When the version is a draft, there is no evidence, or a key image is not evidence.
    """
    version = bundle.version
    if version.status is ReportStatus.DRAFT:
        raise ValueError("a draft is not issued as an SR document")
    if not evidence:
        raise ValueError("an SR document needs the study's instances as evidence")
    final = version.status is ReportStatus.FINAL
    when = _document_time(version)
    observer = _observer_name(version)
    document = hd.sr.ComprehensiveSR(
        evidence=_evidence_datasets(evidence),
        content=_content_tree(bundle, observer, _sop_classes(evidence)),
        series_instance_uid=identity.series_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=manufacturer,
        is_complete=final,
        is_final=final,
        is_verified=final,
        institution_name=bundle.institution or None,
        verifying_observer_name=observer if final else None,
        verifying_organization=(bundle.institution or manufacturer) if final else None,
        previous_versions=[_predecessor_dataset(p) for p in predecessors] or None,
        series_description="Report (telerad)",
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        specific_character_set="ISO_IR 192",
        coding_schemes=[CodingSchemeIdentificationItem(LOCAL_SCHEME, LOCAL_SCHEME_NAME)],
    )
    _fix_times(document, when, final)
    return document


def sr_part10(document: Dataset) -> bytes:
    """The document as Part-10 bytes (explicit VR little endian, with File Meta)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, document, enforce_file_format=True)
    return buffer.getvalue()


def _document_time(version: ReportVersion) -> datetime:
    if version.status is ReportStatus.FINAL and version.signature is not None:
        return version.signature.signed_at.astimezone(UTC)
    return (version.preliminary_at or version.updated_at).astimezone(UTC)


def _fix_times(document: Dataset, when: datetime, final: bool) -> None:
    """The document's times are the report's (signing) times, not the build time, so that
    rebuilding the same version gives the same bytes."""
    stamp = DT(when.replace(tzinfo=None))
    document.InstanceCreationDate = when.strftime("%Y%m%d")
    document.InstanceCreationTime = when.strftime("%H%M%S.%f")
    document.TimezoneOffsetFromUTC = "+0000"
    for item in document.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = stamp
    if final:
        document.VerifyingObserverSequence[0].VerificationDateTime = stamp


def person_name(name: str) -> str:
    """A display name as a DICOM PN (``Family^Given``); a single word becomes ``Word^``."""
    name = " ".join(name.replace("=", " ").replace("\\", " ").split())
    if "^" in name:
        return name
    words = name.split(" ")
    if len(words) == 1:
        return f"{words[0]}^"
    return f"{words[-1]}^{' '.join(words[:-1])}"


def _observer_name(version: ReportVersion) -> str:
    if version.status is ReportStatus.FINAL and version.signature is not None:
        return person_name(version.signature.signer or version.signature.signer_username)
    return person_name(version.author or version.author_username)


def _evidence_datasets(evidence: Sequence[Mapping[str, Any]]) -> list[Dataset]:
    """The first instance with its full header (patient and study modules), the others with
    the four UIDs the evidence sequence needs."""
    first = Dataset.from_json(
        {
            tag: element
            for tag, element in evidence[0].items()
            if not tag.startswith(_SKIPPED_GROUPS)
            and tag != _PIXEL_DATA
            and "BulkDataURI" not in element
        }
    )
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        if keyword not in first:
            setattr(first, keyword, "")
    for keyword in ("AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        if keyword not in first:
            setattr(first, keyword, "")
    return [first] + [_reference(item) for item in evidence[1:]]


def _reference(item: Mapping[str, Any]) -> Dataset:
    dataset = Dataset()
    for keyword, tag in (
        ("SOPClassUID", "00080016"),
        ("SOPInstanceUID", "00080018"),
        ("StudyInstanceUID", "0020000D"),
        ("SeriesInstanceUID", "0020000E"),
    ):
        setattr(dataset, keyword, item[tag]["Value"][0])
    return dataset


def _predecessor_dataset(ref: PredecessorRef) -> Dataset:
    dataset = Dataset()
    dataset.StudyInstanceUID = ref.study_uid
    dataset.SeriesInstanceUID = ref.series_uid
    dataset.SOPInstanceUID = ref.sop_instance_uid
    dataset.SOPClassUID = ref.sop_class_uid
    return dataset


def _concept(code: Code) -> CodedConcept:
    return CodedConcept(code.value, code.scheme, code.meaning)


def _sop_classes(evidence: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """SOP Instance UID → SOP Class UID of every evidence instance."""
    return {item["00080018"]["Value"][0]: item["00080016"]["Value"][0] for item in evidence}


def _content_tree(
    bundle: ReportBundle, observer: str, sop_classes: Mapping[str, str]
) -> ContainerContentItem:
    version = bundle.version
    root = ContainerContentItem(name=_concept(version.template.title), template_id="2000")
    items: list[ContentItem] = []
    items.extend(cast(Sequence[ContentItem], hd.sr.LanguageOfContentItemAndDescendants(_ENGLISH)))
    person = hd.sr.PersonObserverIdentifyingAttributes(name=observer)
    items.extend(cast(Sequence[ContentItem], hd.sr.ObserverContext(codes.DCM.Person, person)))
    for section in SECTIONS:
        children = _section_items(version, section.key, _concept(section.element))
        if children:
            items.append(_heading(_concept(section.heading), children))
    if version.content.key_images:
        key_images = _key_image_items(version, sop_classes)
        items.append(_heading(_concept(KEY_IMAGES_HEADING), key_images))
    if version.critical:
        items.append(_heading(_concept(CRITICAL_HEADING), [_critical_text(version)]))
    addenda = _addendum_items(bundle)
    if addenda:
        items.append(_heading(_concept(ADDENDUM_HEADING), addenda))
    root.ContentSequence = ContentSequence(items)
    return root


def _heading(name: CodedConcept, children: Sequence[ContentItem]) -> ContainerContentItem:
    container = ContainerContentItem(name=name, relationship_type=_CONTAINS)
    container.ContentSequence = ContentSequence(children)
    return container


def _section_items(version: ReportVersion, key: str, element: CodedConcept) -> list[ContentItem]:
    items: list[ContentItem] = []
    text = version.content.sections.get(key, "")
    if text:
        items.append(TextContentItem(name=element, value=text, relationship_type=_CONTAINS))
    if key == _FINDINGS:
        for item in version.template.fields:
            if item.key in version.content.fields:
                items.append(_field_item(item, version.content.fields[item.key]))
    return items


def _field_item(item: CodedField, value: str | float) -> ContentItem:
    if item.kind == "presence":
        return CodeContentItem(
            name=_concept(item.concept),
            value=_concept(PRESENCE[str(value)]),
            relationship_type=_CONTAINS,
        )
    assert item.unit is not None
    return NumContentItem(
        name=_concept(item.concept),
        value=float(value),
        unit=_concept(item.unit),
        relationship_type=_CONTAINS,
    )


def _key_image_items(version: ReportVersion, sop_classes: Mapping[str, str]) -> list[ContentItem]:
    items: list[ContentItem] = []
    for ref in version.content.key_images:
        if ref.sop_instance_uid not in sop_classes:
            raise ValueError(f"key image {ref.sop_instance_uid} is not an instance of the study")
        items.append(
            ImageContentItem(
                name=_concept(KEY_IMAGE_PURPOSE),
                referenced_sop_class_uid=sop_classes[ref.sop_instance_uid],
                referenced_sop_instance_uid=ref.sop_instance_uid,
                referenced_frame_numbers=ref.frame if ref.frame > 1 else None,
                relationship_type=_CONTAINS,
            )
        )
    return items


def _critical_text(version: ReportVersion) -> TextContentItem:
    findings = ", ".join(version.critical_findings) or "flagged by the radiologist"
    element = next(s.element for s in SECTIONS if s.key == _FINDINGS)
    return TextContentItem(
        name=_concept(element), value=f"Critical finding: {findings}", relationship_type=_CONTAINS
    )


def _addendum_items(bundle: ReportBundle) -> list[ContentItem]:
    items: list[ContentItem] = []
    for version in bundle.chain:
        if version.kind is not ReportKind.ADDENDUM or not version.content.addendum:
            continue
        if version.sequence > bundle.version.sequence:
            continue
        items.append(
            TextContentItem(
                name=_concept(ADDENDUM_HEADING),
                value=_addendum_text(version),
                relationship_type=_CONTAINS,
            )
        )
    return items


def _addendum_text(version: ReportVersion) -> str:
    signature = version.signature
    if signature is None:
        return version.content.addendum
    when = signature.signed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    signer = signature.signer or signature.signer_username
    return f"Addendum {version.sequence} ({signer}, {when}):\n{version.content.addendum}"
