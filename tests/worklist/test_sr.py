"""The report as a TID 2000 Comprehensive SR: structure, flags, predecessors, evidence; re-read
with highdicom and pydicom (pure builder, no database)."""

from __future__ import annotations

import io
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid

from telerad.worklist import build_report_sr, sr_part10
from telerad.worklist.sr import COMPREHENSIVE_SR, PredecessorRef, SrIdentity, person_name
from tests.factories import ct_datasets, dicom_json, report_bundle

CONTENT = {
    "sections": {
        "clinical_information": "Fall, anticoagulated.",
        "technique": "Non-contrast CT head.",
        "findings": "Crescentic hyperdense collection, left, 9 mm. Ünïcode ok.",
        "impression": "Acute left subdural haematoma.",
    },
    "fields": {"haemorrhage": "present", "midline_shift_mm": 6.5, "mass": "absent"},
}


def build(bundle: Any, datasets: list[Any], **kwargs: Any) -> tuple[pydicom.Dataset, bytes]:
    identity = SrIdentity(str(generate_uid()), str(generate_uid()), 3)
    document = build_report_sr(bundle, [dicom_json(d) for d in datasets], identity, **kwargs)
    raw = sr_part10(document)
    return pydicom.dcmread(io.BytesIO(raw)), raw


def by_concept(items: Any) -> dict[str, Any]:
    return {item.ConceptNameCodeSequence[0].CodeValue: item for item in items}


@pytest.fixture(scope="module")
def datasets() -> list[Any]:
    return ct_datasets(3)


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        ("preliminary", ("PARTIAL", "UNVERIFIED", "PRELIMINARY")),
        ("final", ("COMPLETE", "VERIFIED", "FINAL")),
    ],
)
def test_flags_follow_the_report_status(
    datasets: list[Any], status: str, flags: tuple[str, ...]
) -> None:
    dataset, _ = build(report_bundle(datasets, CONTENT, status=status), datasets)
    assert (dataset.CompletionFlag, dataset.VerificationFlag, dataset.PreliminaryFlag) == flags
    if status == "final":
        [observer] = dataset.VerifyingObserverSequence
        assert observer.VerifyingObserverName == "Roe^Jane"
        assert observer.VerifyingOrganization == "City Hospital"
        assert str(observer.VerificationDateTime).startswith("20261124133015")
    else:
        assert "VerifyingObserverSequence" not in dataset


def test_tid_2000_tree(datasets: list[Any]) -> None:
    dataset, _ = build(report_bundle(datasets, CONTENT), datasets)
    assert dataset.SOPClassUID == COMPREHENSIVE_SR and dataset.Modality == "SR"
    assert dataset.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    assert dataset.ContentTemplateSequence[0].MappingResource == "DCMR"
    assert dataset.ConceptNameCodeSequence[0].CodeValue == "24725-4"  # CT Head Report
    items = dataset.ContentSequence
    relations = [item.RelationshipType for item in items]
    assert relations[:2] == ["HAS CONCEPT MOD", "HAS OBS CONTEXT"]
    language = items[0]
    assert language.ConceptNameCodeSequence[0].CodeValue == "121049"
    headings = by_concept(i for i in items if i.ValueType == "CONTAINER")
    assert set(headings) == {"55752-0", "55111-9", "59776-5", "19005-8", "73568-8"}
    findings = by_concept(headings["59776-5"].ContentSequence)
    assert findings["121071"].TextValue.startswith("Crescentic")
    assert findings["1386000"].ConceptCodeSequence[0].CodeValue == "52101004"  # present
    assert findings["4147007"].ConceptCodeSequence[0].CodeValue == "272519000"  # absent
    shift = findings["MLS"].MeasuredValueSequence[0]
    assert float(shift.NumericValue) == 6.5
    assert shift.MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    assert dataset.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99TLRAD"


def test_patient_study_and_evidence_come_from_the_study(datasets: list[Any]) -> None:
    dataset, _ = build(report_bundle(datasets, CONTENT), datasets)
    source = datasets[0]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "AccessionNumber"):  # fmt: skip
        assert dataset[keyword].value == source[keyword].value, keyword
    [series] = dataset.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence}
    assert referenced == {d.SOPInstanceUID for d in datasets}
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID


def test_addendum_lists_predecessors_and_addendum_text(datasets: list[Any]) -> None:
    original = report_bundle(datasets, CONTENT).version
    content = {**CONTENT, "addendum": "Prior CT reviewed: new."}
    bundle = report_bundle(datasets, content, kind="addendum", sequence=1, chain=(original,))
    previous = [
        PredecessorRef(datasets[0].StudyInstanceUID, "1.2.3.4", "1.2.3.4.5"),
        PredecessorRef(datasets[0].StudyInstanceUID, "1.2.3.4", "1.2.3.4.6"),
    ]
    dataset, _ = build(bundle, datasets, predecessors=previous)
    [study] = dataset.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    assert study.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        "1.2.3.4.5", "1.2.3.4.6",
    ]  # fmt: skip
    headings = by_concept(i for i in dataset.ContentSequence if i.ValueType == "CONTAINER")
    [text] = headings["55107-7"].ContentSequence
    assert text.TextValue.endswith("Prior CT reviewed: new.") and "Jane Roe" in text.TextValue


def test_key_images_reference_study_instances(datasets: list[Any]) -> None:
    content = {**CONTENT, "key_images": [{"sop_instance_uid": datasets[1].SOPInstanceUID}]}
    dataset, _ = build(report_bundle(datasets, content), datasets)
    headings = by_concept(i for i in dataset.ContentSequence if i.ValueType == "CONTAINER")
    [image] = headings["55113-5"].ContentSequence
    assert image.ValueType == "IMAGE"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == datasets[1].SOPInstanceUID
    outside = {**CONTENT, "key_images": [{"sop_instance_uid": "1.2.3"}]}
    with pytest.raises(ValueError, match="not an instance of the study"):
        build(report_bundle(datasets, outside), datasets)


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_highdicom_and_pydicom_read_it_back(datasets: list[Any]) -> None:
    _, raw = build(report_bundle(datasets, CONTENT), datasets)
    document = hd.sr.srread(io.BytesIO(raw))
    assert isinstance(document, hd.sr.ComprehensiveSR)
    [root] = document.content
    assert isinstance(root, hd.sr.ContainerContentItem)
    nodes = list(_walk(root.ContentSequence))
    texts = [n.value for n in nodes if isinstance(n, hd.sr.TextContentItem)]
    codes = [n for n in nodes if isinstance(n, hd.sr.CodeContentItem)]
    numbers = [n for n in nodes if isinstance(n, hd.sr.NumContentItem)]
    assert any("Ünïcode" in text for text in texts)
    assert {c.name.value: c.value.meaning for c in codes}["1386000"] == "Present"
    assert [n.value for n in numbers] == [6.5]
    reread = pydicom.dcmread(io.BytesIO(raw))
    assert reread.SpecificCharacterSet == "ISO_IR 192"
    assert {uid for _, _, uid in _evidence(document)} == {d.SOPInstanceUID for d in datasets}


def _evidence(document: Any) -> set[tuple[str, str, str]]:
    return {
        (study, series, str(instance.ReferencedSOPInstanceUID))
        for study, series, instance in _references(document)
    }


def _references(document: Any) -> Any:
    for study in document.CurrentRequestedProcedureEvidenceSequence:
        for series in study.ReferencedSeriesSequence:
            for instance in series.ReferencedSOPSequence:
                yield study.StudyInstanceUID, series.SeriesInstanceUID, instance


def test_rebuilding_gives_the_same_bytes(datasets: list[Any]) -> None:
    bundle = report_bundle(datasets, CONTENT)
    identity = SrIdentity(str(generate_uid()), str(generate_uid()), 1)
    evidence = [dicom_json(d) for d in datasets]
    first = sr_part10(build_report_sr(bundle, evidence, identity))
    assert sr_part10(build_report_sr(bundle, evidence, identity)) == first


def test_a_draft_is_not_issued(datasets: list[Any]) -> None:
    with pytest.raises(ValueError, match="draft"):
        build(report_bundle(datasets, CONTENT, status="draft"), datasets)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Jane Roe", "Roe^Jane"), ("Anna Maria de Vries", "Vries^Anna Maria de"), ("rad1", "rad1^"),
     ("Roe^Jane", "Roe^Jane"), ("A=B\\C", "C^A B")],
)  # fmt: skip
def test_person_names(name: str, expected: str) -> None:
    assert person_name(name) == expected
