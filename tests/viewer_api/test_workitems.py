"""UPS-RS (PS3.18 chapter 11) over HTTP: search, retrieve and change state of workitems."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from tests.conftest import Api
from tests.viewer_api.worklist_support import add_readers, complete_study, task_of

DICOM_JSON = {"Content-Type": "application/dicom+json"}
MISSING = "299 telerad: The Transaction UID is missing."
INCORRECT = "299 telerad: The Transaction UID is incorrect."
INCONSISTENT = (
    "299 telerad: The submitted request is inconsistent with the state of the UPS Instance."
)


def state_body(state: str, transaction: str) -> bytes:
    """A Change Workitem State body."""
    body = {
        "00741000": {"vr": "CS", "Value": [state]},
        "00081195": {"vr": "UI", "Value": [transaction]},
    }
    return json.dumps(body).encode()


@pytest.fixture
def api(shared_api: Api) -> Iterator[Api]:
    add_readers(shared_api)
    yield shared_api


def change(api: Api, uid: str, state: str, transaction: str | None, who: str = "rad1") -> Any:
    body: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction is not None:
        body["00081195"] = {"vr": "UI", "Value": [transaction]}
    return api.client.put(
        f"/dicomweb/workitems/{uid}/state", json=body, headers={**DICOM_JSON, **api.headers(who)}
    )


def retrieve(api: Api, uid: str, who: str = "rad1") -> Any:
    return api.client.get(f"/dicomweb/workitems/{uid}", headers=api.headers(who))


def search(api: Api, who: str = "rad1", **params: Any) -> Any:
    return api.client.get("/dicomweb/workitems", params=params, headers=api.headers(who))


def test_retrieve_has_the_ups_attributes(api: Api) -> None:
    study = complete_study(api, slices=3)
    uid = task_of(api, study)["workitem_uid"]

    response = retrieve(api, uid)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    [item] = response.json()
    ds = Dataset.from_json(item)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.34.6.1"  # UPS Push SOP Class
    assert ds.SOPInstanceUID == uid
    assert ds.ProcedureStepState == "SCHEDULED"
    assert ds.ScheduledProcedureStepPriority == "LOW"  # ROUTINE
    assert ds.ScheduledWorkitemCodeSequence[0].CodeValue == "110005"
    assert ds.ReferencedRequestSequence[0].StudyInstanceUID == study
    assert ds.ScheduledHumanPerformersSequence[0].HumanPerformerName == "rad1"
    stored = _stored_instances(api, study)
    inputs = {
        ref.ReferencedSOPInstanceUID
        for item in ds.InputInformationSequence
        for ref in item.ReferencedSOPSequence
    }
    assert inputs == stored
    assert all(i.StudyInstanceUID == study for i in ds.InputInformationSequence)
    assert str(ds.PatientName) and ds.PatientID
    assert "00081195" not in item  # the Transaction UID is never disclosed
    assert ds.ExpectedCompletionDateTime > ds.ScheduledProcedureStepStartDateTime
    pydicom.dcmwrite(io.BytesIO(), _with_meta(ds), enforce_file_format=True)  # writable as-is


def _stored_instances(api: Api, study: str) -> set[str]:
    response = api.client.get(f"/dicomweb/studies/{study}/instances", headers=api.headers("admin"))
    return {Dataset.from_json(i).SOPInstanceUID for i in response.json()}


def _with_meta(ds: Dataset) -> Dataset:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_workitems_of_another_site_look_missing(api: Api) -> None:
    uid = task_of(api, complete_study(api))["workitem_uid"]
    assert retrieve(api, uid, "radx").status_code == 404
    assert retrieve(api, str(generate_uid())).status_code == 404
    assert change(api, uid, "IN PROGRESS", str(generate_uid()), "radx").status_code == 404
    assert uid not in {w["00080018"]["Value"][0] for w in search(api, "radx", limit=1000).json()}


def test_search_by_state_priority_and_study(api: Api) -> None:
    study = complete_study(api)
    uid = task_of(api, study)["workitem_uid"]
    urgent = api.client.put(
        f"/api/studies/{study}/request", json={"priority": "STAT"}, headers=api.headers("rg1")
    )
    assert urgent.status_code == 201

    def found(**params: Any) -> set[str]:
        response = search(api, limit=1000, **params)
        assert response.status_code == 200, response.text
        return {w["00080018"]["Value"][0] for w in response.json()}

    assert uid in found(ProcedureStepState="SCHEDULED", ScheduledProcedureStepPriority="HIGH")
    assert uid not in found(ScheduledProcedureStepPriority="LOW")
    assert found(**{"ReferencedRequestSequence.StudyInstanceUID": study}) == {uid}
    assert found(**{"0040A370.0020000D": study, "00741000": "IN PROGRESS"}) == set()
    [item] = search(api, SOPInstanceUID=uid).json()
    assert "00404021" not in item and item["00741200"]["Value"] == ["HIGH"]


@pytest.mark.parametrize(
    ("params", "status", "text"),
    [
        ({"ProcedureStepState": "DONE"}, 400, "invalid ProcedureStepState"),
        ({"ScheduledProcedureStepPriority": "STAT"}, 400, "HIGH, MEDIUM or LOW"),
        ({"limit": "-1"}, 400, "non-negative"),
        ({"ExpectedCompletionDateTime": "2026-13"}, 400, "invalid DT"),
    ],
)
def test_bad_search_values(api: Api, params: dict[str, str], status: int, text: str) -> None:
    response = search(api, **params)
    assert response.status_code == status and text in response.json()["detail"]


def test_unsupported_search_keys_are_ignored_with_a_warning(api: Api) -> None:
    response = search(api, ScheduledStationName="CT1", limit=1)
    assert response.status_code == 200
    assert "ignored matching keys: ScheduledStationName" in response.headers["warning"]


def test_change_state_claim_complete_and_the_refusals(api: Api) -> None:
    task = task_of(api, complete_study(api))
    uid, mine, theirs = task["workitem_uid"], str(generate_uid()), str(generate_uid())

    missing = change(api, uid, "IN PROGRESS", None)
    assert (missing.status_code, missing.headers["warning"]) == (400, MISSING)
    claimed = change(api, uid, "IN PROGRESS", mine)
    assert claimed.status_code == 200, claimed.text
    assert Dataset.from_json(retrieve(api, uid).json()[0]).ProcedureStepState == "IN PROGRESS"
    again = change(api, uid, "IN PROGRESS", theirs)
    assert (again.status_code, again.headers["warning"]) == (409, INCONSISTENT)
    assert again.json()["status"] == "C302"
    wrong = change(api, uid, "COMPLETED", theirs)
    assert (wrong.status_code, wrong.headers["warning"]) == (400, INCORRECT)
    back = change(api, uid, "SCHEDULED", mine)
    assert (back.status_code, back.json()["status"]) == (400, "C303")

    done = change(api, uid, "COMPLETED", mine)

    assert done.status_code == 200 and "warning" not in done.headers
    already = change(api, uid, "COMPLETED", mine)
    assert already.status_code == 200
    assert (
        already.headers["warning"]
        == "299 telerad: The UPS is already in the requested state of COMPLETED."
    )
    final = change(api, uid, "CANCELED", mine)
    assert (final.status_code, final.json()["status"]) == (409, "C300")
    assert task_of(api, task["study_uid"])["state"] == "COMPLETED"


def test_completing_a_scheduled_workitem_is_a_conflict(api: Api) -> None:
    uid = task_of(api, complete_study(api))["workitem_uid"]
    response = change(api, uid, "COMPLETED", str(generate_uid()))
    assert (response.status_code, response.json()["status"]) == (409, "C310")
    assert response.headers["warning"] == INCONSISTENT


def test_the_holder_cancels_with_his_transaction_uid(api: Api) -> None:
    task = task_of(api, complete_study(api))
    uid, mine = task["workitem_uid"], str(generate_uid())
    assert change(api, uid, "IN PROGRESS", mine).status_code == 200

    canceled = change(api, uid, "CANCELED", mine)

    assert canceled.status_code == 200
    item = Dataset.from_json(retrieve(api, uid).json()[0])
    assert item.ProcedureStepState == "CANCELED" and item.ReasonForCancellation


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{", DICOM_JSON, 400),
        (b"[]", DICOM_JSON, 400),
        (b'{"00081195": {"vr": "UI", "Value": ["1.2"]}}', DICOM_JSON, 400),
        (
            state_body("DONE", "1.2"),
            DICOM_JSON,
            400,
        ),
        (b'{"00741000": {"vr": "CS", "Value": [7]}}', DICOM_JSON, 400),
        (
            b'{"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]}}',
            {"Content-Type": "text/plain"},
            415,
        ),
        (
            state_body("IN PROGRESS", "x.y"),
            DICOM_JSON,
            400,
        ),
    ],
)
def test_malformed_change_state_requests(
    api: Api, body: bytes, headers: dict[str, str], status: int
) -> None:
    task = task_of(api, complete_study(api))
    response = api.client.put(
        f"/dicomweb/workitems/{task['workitem_uid']}/state", content=body,
        headers={**headers, **api.headers("rad1")},
    )  # fmt: skip
    assert response.status_code == status, response.text
    assert task_of(api, task["study_uid"])["state"] == "SCHEDULED"
