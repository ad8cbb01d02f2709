"""UPS workitem DICOM JSON and search keys, with plain values (PS3.4 CC.2.5, PS3.18 §11.9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydicom import Dataset

from telerad.worklist import (
    UPS_PUSH_SOP_CLASS,
    InvalidWorklistInput,
    ProcedureStepState,
    WorkitemFacts,
    parse_workitem_query,
    workitem_json,
)
from telerad.worklist.sla import Priority
from telerad.worklist.workitems import dicom_datetime

AT = datetime(2026, 11, 24, 10, 30, 5, 120000, tzinfo=UTC)


def facts(**changes: object) -> WorkitemFacts:
    values: dict[str, object] = {
        "workitem_uid": "1.2.3.4", "state": "SCHEDULED", "priority": "URGENT",
        "label": "Read CT CHEST", "created_at": AT, "updated_at": AT,
        "due_at": AT + timedelta(hours=4), "study_uid": "1.2.3", "accession_number": "A1",
        "patient_name": "Doe^Jane", "patient_id": "P1",
        "series": (("1.2.3.1", (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1"),)),),
        "retrieve_url": "https://c/dicomweb/studies/1.2.3",
    }  # fmt: skip
    return WorkitemFacts(**{**values, **changes})  # type: ignore[arg-type]


def test_workitem_json_reads_back_with_pydicom() -> None:
    ds = Dataset.from_json(workitem_json(facts()))

    assert (ds.SOPClassUID, ds.SOPInstanceUID) == (UPS_PUSH_SOP_CLASS, "1.2.3.4")
    assert ds.ScheduledProcedureStepPriority == "MEDIUM"
    assert ds.ExpectedCompletionDateTime == "20261124143005.120000+0000"
    assert (
        ds.InputInformationSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == "1.2.3.1.1"
    )
    assert ds.InputInformationSequence[0].WADORSRetrievalSequence[0].RetrieveURL.endswith("1.2.3")
    assert ds.ReferencedRequestSequence[0].AccessionNumber == "A1"
    assert "ReasonForCancellation" not in ds and "ScheduledHumanPerformersSequence" in ds


def test_search_form_leaves_out_the_inputs_and_cancel_reason_shows() -> None:
    item = workitem_json(facts(state="CANCELED", canceled_reason="duplicate"), inputs=False)
    assert "00404021" not in item and item["00741238"]["Value"] == ["duplicate"]


def test_dicom_datetime_is_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2)))
    assert dicom_datetime(local) == dicom_datetime(AT) == "20261124103005.120000+0000"
    assert dicom_datetime(AT.replace(tzinfo=None)) == "20261124103005.120000+0000"


def test_query_keys_by_keyword_tag_and_nested_path() -> None:
    query = parse_workitem_query(
        [("00741000", "SCHEDULED\\IN PROGRESS"), ("ScheduledProcedureStepPriority", "high"),
         ("0040A370.0020000D", "1.2.3"), ("limit", "5"), ("offset", "2"), ("includefield", "all"),
         ("ScheduledStationName", "X"), ("PatientID", "*")]
    )  # fmt: skip
    assert query.states == (ProcedureStepState.SCHEDULED, ProcedureStepState.IN_PROGRESS)
    assert query.priorities == (Priority.STAT,)
    assert (query.study_uid, query.limit, query.offset) == ("1.2.3", 5, 2)
    assert query.patient_id is None  # universal match
    assert query.ignored == ("ScheduledStationName",)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("20261124", datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 24, tzinfo=UTC)),
        ("202611241030-", datetime(2026, 11, 24, 10, 30, tzinfo=UTC), None),
        ("-20261124103000+0200", None, datetime(2026, 11, 24, 8, 30, tzinfo=UTC)),
        ("20261124103000.5-20261125", datetime(2026, 11, 24, 10, 30, 0, 500000, tzinfo=UTC),
         datetime(2026, 11, 25, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_datetime_ranges(value: str, low: datetime | None, high: datetime | None) -> None:
    assert parse_workitem_query([("ExpectedCompletionDateTime", value)]).due_range == (low, high)


@pytest.mark.parametrize(
    "item",
    [("ProcedureStepState", "DONE"), ("00741200", "URGENT"), ("limit", "x"), ("limit", "5000"),
     ("00404005", "2026"), ("00404005", "20261340")],
)  # fmt: skip
def test_bad_query_values(item: tuple[str, str]) -> None:
    with pytest.raises(InvalidWorklistInput):
        parse_workitem_query([item])
