"""C-FIND identifiers as QIDO-RS searches and back (pure functions, plain values)."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from telerad.dicom_gateway.centre import _multipart, multipart_parts
from telerad.dicom_gateway.errors import CentreUnavailable, InvalidIdentifier
from telerad.dicom_gateway.find import (
    Model,
    find_request,
    model_for,
    patients,
    retrieve_request,
    to_identifier,
)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"


def identifier(level: str | None, **keys: object) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_matching_and_return_keys_become_query_parameters() -> None:
    ds = identifier(
        "STUDY", PatientName="Al*", StudyDate="20240101-20240131",
        StudyInstanceUID=["1.2.3", "1.2.4"], AccessionNumber="", StudyDescription=None,
        ReferencedStudySequence=DicomSequence([]),
    )  # fmt: skip
    ds.add_new(0x00191010, "LO", "private")
    request = find_request(ds, Model.STUDY_ROOT)
    assert request.resource == "studies"
    assert request.params == [
        ("StudyDate", "20240101-20240131"),
        ("PatientName", "Al*"),
        ("StudyInstanceUID", "1.2.3\\1.2.4"),
        ("includefield", "StudyDate,AccessionNumber,StudyDescription,ReferencedStudySequence,"
                         "PatientName,StudyInstanceUID"),
    ]  # fmt: skip
    assert request.unsupported == [0x00191010]
    assert [key.vr for key in request.return_keys] == ["DA", "SH", "LO", "SQ", "PN", "UI"]


@pytest.mark.parametrize(
    ("model", "level"),
    [(Model.STUDY_ROOT, "PATIENT"), (Model.STUDY_ROOT, None), (Model.PATIENT_ROOT, "FRAME")],
)
def test_levels_outside_the_model_are_refused(model: Model, level: str | None) -> None:
    with pytest.raises(InvalidIdentifier):
        find_request(identifier(level, PatientID=""), model)


@pytest.mark.parametrize(
    ("uid", "model"),
    [
        (STUDY_ROOT_FIND, Model.STUDY_ROOT),
        (PATIENT_ROOT_MOVE, Model.PATIENT_ROOT),
        ("1.2.840.10008.5.1.4.31", None),  # Modality Worklist is not Q/R
    ],
)
def test_model_for(uid: str, model: Model | None) -> None:
    if model is None:
        with pytest.raises(InvalidIdentifier):
            model_for(uid)
    else:
        assert model_for(uid) is model


@pytest.mark.parametrize(
    ("level", "keys", "ok"),
    [
        ("STUDY", {"StudyInstanceUID": "1.2.3"}, True),
        ("STUDY", {"StudyInstanceUID": ""}, False),
        ("STUDY", {"PatientID": "P1"}, False),
        ("SERIES", {"StudyInstanceUID": "1.2.3"}, False),
        ("IMAGE", {"SOPInstanceUID": ["1.2.5", "1.2.6"]}, True),
        ("PATIENT", {"PatientID": "P1"}, True),
        ("PATIENT", {"PatientID": "*"}, False),
    ],
)
def test_a_retrieve_needs_the_unique_key_of_its_level(
    level: str, keys: dict[str, object], ok: bool
) -> None:
    ds = identifier(level, **keys)
    if not ok:
        with pytest.raises(InvalidIdentifier):
            retrieve_request(ds, Model.PATIENT_ROOT)
        return
    request = retrieve_request(ds, Model.PATIENT_ROOT)
    assert request.resource == "instances"
    assert not any(name == "includefield" for name, _ in request.params)


def _study(pid: str, issuer: str, series: int, instances: int) -> dict[str, object]:
    return {
        "00100020": {"vr": "LO", "Value": [pid]},
        "00100021": {"vr": "LO", "Value": [issuer]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"Name^{pid}"}]},
        "00201206": {"vr": "IS", "Value": [series]},
        "00201208": {"vr": "IS", "Value": [instances]},
    }


def test_patients_group_studies_by_id_and_issuer_and_sum_counts() -> None:
    rows = patients([_study("P1", "A", 2, 10), _study("P1", "A", 1, 5), _study("P1", "B", 3, 7)])
    counts = {
        (r["00100021"]["Value"][0], r["00201200"]["Value"][0], r["00201202"]["Value"][0],  # type: ignore[index]
         r["00201204"]["Value"][0])  # type: ignore[index]
        for r in rows
    }  # fmt: skip
    assert counts == {("A", 2, 3, 15), ("B", 1, 3, 7)}


def test_response_holds_exactly_the_requested_keys() -> None:
    ds = identifier("PATIENT", PatientID="P1", PatientName="", PatientBirthDate="",
                    NumberOfPatientRelatedInstances=None)  # fmt: skip
    request = find_request(ds, Model.PATIENT_ROOT)
    row = patients([_study("P1", "A", 2, 10)])[0]
    row["7FE00010"] = {"vr": "OB", "BulkDataURI": "http://x"}
    out = to_identifier(request, row, "GW")
    assert {e.keyword for e in out} == {
        "PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedInstances",
        "QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet",
    }  # fmt: skip
    assert out.PatientName == "Name^P1"
    assert out.PatientBirthDate in ("", None)
    assert out.NumberOfPatientRelatedInstances == 10
    assert out.QueryRetrieveLevel == "PATIENT"
    assert out.RetrieveAETitle == "GW"


def test_multipart_parts_round_trip() -> None:
    parts = [b"\x00DICM\r\n--not-a-boundary\r\n", b"", b"x" * 1000]
    body = _multipart(parts, "b0undary")
    content_type = 'multipart/related; type="application/dicom"; boundary=b0undary'
    assert multipart_parts(content_type, body) == parts
    with pytest.raises(CentreUnavailable):
        multipart_parts("application/dicom+json", body)
