"""STOW-RS: Store Instances (PS3.18 §10.5) through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import random
import uuid
import warnings
from typing import Any

import pydicom
import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from telerad.storage import AuditEvent, Instance, RejectedInstance
from tests.conftest import Api
from tests.factories import ct_datasets, ct_instances, multipart_related, new_uid, part10

DICOM_JSON = "application/dicom+json"
BASE = "http://testserver/dicomweb"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
RETRIEVE_URL = "00081190"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Failure Reason values, PS3.18 Table 10.5.3-2 / PS3.4 Annex B.2.3.
CANNOT_UNDERSTAND = 0xA900
DUPLICATE_DIFFERENT_CONTENT = 0x0111
NOT_DICOM = 0xC000


# --- builders and helpers --------------------------------------------------------------------


def multipart_body(parts: list[tuple[str, bytes]], *, closed: bool = True) -> tuple[bytes, str]:
    """A multipart/related body whose parts each declare their own Content-Type."""
    boundary = uuid.uuid4().hex
    chunks = []
    for content_type, data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(), data, b"\r\n"]
    if closed:
        chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def with_raw_value(keyword: str, value: str) -> bytes:
    """One CT instance whose ``keyword`` holds ``value``, which pydicom would refuse to write."""
    ds = ct_datasets(1)[0]
    tag = tag_for_keyword(keyword)
    ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)
    with warnings.catch_warnings():  # dcmwrite copies a hostile SOPInstanceUID into the meta
        warnings.simplefilter("ignore", UserWarning)
        return part10(ds)


def without_preamble() -> bytes:
    """File Meta and data set, but no 128-byte preamble and no ``DICM`` prefix."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ct_datasets(1)[0], enforce_file_format=False)
    return buffer.getvalue()


def dataset_only() -> bytes:
    """A bare data set: no preamble, no ``DICM``, no File Meta Information."""
    ds = ct_datasets(1)[0]
    del ds.file_meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def uids_of(raw: bytes) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of Part-10 bytes."""
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def stow(api: Api, body: bytes, content_type: str, who: str | None = "rg1", study: str = ""):
    """POST ``body`` to ``/dicomweb/studies[/study]`` as ``who`` (None: no token)."""
    headers = {"Content-Type": content_type, **(api.headers(who) if who else {})}
    path = f"/dicomweb/studies/{study}" if study else "/dicomweb/studies"
    return api.client.post(path, content=body, headers=headers)


def stow_instances(api: Api, instances: list[bytes], who: str | None = "rg1", study: str = ""):
    return stow(api, *multipart_related(instances), who=who, study=study)


def values(item: dict[str, Any], tag: str) -> list[Any]:
    return item.get(tag, {}).get("Value", [])


def referenced(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Referenced SOP Sequence items by SOP Instance UID."""
    items = values(body, REFERENCED_SOP_SEQUENCE)
    return {values(item, REFERENCED_SOP_INSTANCE_UID)[0]: item for item in items}


def failure_reasons(body: dict[str, Any]) -> list[int]:
    return [values(item, FAILURE_REASON)[0] for item in values(body, FAILED_SOP_SEQUENCE)]


def instances_seen(api: Api, sop_instance_uid: str) -> list[dict[str, Any]]:
    """QIDO-RS instance search for one SOP Instance UID as admin."""
    response = api.client.get(
        "/dicomweb/instances",
        params={"SOPInstanceUID": sop_instance_uid},
        headers=api.headers("admin"),
    )
    assert response.status_code == 200, response.text
    return response.json()


def studies_seen(api: Api, who: str, study_uid: str) -> list[dict[str, Any]]:
    """QIDO-RS study search for one UID as ``who``."""
    response = api.client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": study_uid}, headers=api.headers(who)
    )
    assert response.status_code == 200, response.text
    return response.json()


def instance_count(api: Api) -> int:
    response = api.client.get("/dicomweb/instances", headers=api.headers("admin"))
    assert response.status_code == 200, response.text
    return len(response.json())


def stored_objects(api: Api) -> list[str]:
    return list(api.services.objects.list(""))


def row_count(api: Api, model: type) -> int:
    api.services.audit.flush()  # batched read events land when their batch does
    with api.services.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def garbage(size: int = 2048) -> bytes:
    return random.Random(size).randbytes(size)


def truncated(fraction: float) -> bytes:
    raw = ct_instances(1)[0]
    return raw[: int(len(raw) * fraction)]


# --- success ---------------------------------------------------------------------------------


def test_store_returns_each_instance_with_its_retrieve_url(shared_api):
    instances = ct_instances(3)
    study, series, _ = uids_of(instances[0])

    response = stow_instances(shared_api, instances)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    body = response.json()
    assert FAILED_SOP_SEQUENCE not in body
    assert values(body, RETRIEVE_URL) == [f"{BASE}/studies/{study}"]
    refs = referenced(body)
    assert set(refs) == {uids_of(raw)[2] for raw in instances}
    for sop, item in refs.items():
        assert values(item, REFERENCED_SOP_CLASS_UID) == [CT_IMAGE_STORAGE]
        assert values(item, RETRIEVE_URL) == [
            f"{BASE}/studies/{study}/series/{series}/instances/{sop}"
        ]


def test_storing_the_same_instances_again_changes_nothing(shared_api):
    instances = ct_instances(3)
    study, _, _ = uids_of(instances[0])
    assert stow_instances(shared_api, instances).status_code == 200
    objects = stored_objects(shared_api)

    again = stow_instances(shared_api, instances)

    assert again.status_code == 200, again.text
    assert set(referenced(again.json())) == {uids_of(raw)[2] for raw in instances}
    [found] = studies_seen(shared_api, "admin", study)
    assert values(found, NUMBER_OF_STUDY_RELATED_INSTANCES) == [3]
    assert stored_objects(shared_api) == objects


# --- conflicts and partial success -----------------------------------------------------------


def test_same_uid_with_other_content_is_refused_and_the_first_copy_kept(shared_api):
    first_ds = ct_datasets(1)[0]
    first = part10(first_ds)
    first_ds.StudyDescription = "CHANGED AFTER SENDING"
    second = part10(first_ds)
    study, _, sop = uids_of(first)
    assert stow_instances(shared_api, [first]).status_code == 200

    response = stow_instances(shared_api, [second])

    assert response.status_code == 409, response.text
    [failed] = values(response.json(), FAILED_SOP_SEQUENCE)
    assert values(failed, FAILURE_REASON) == [DUPLICATE_DIFFERENT_CONTENT]
    assert values(failed, REFERENCED_SOP_INSTANCE_UID) == [sop]
    with shared_api.services.sessions() as session:
        served = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop))
        rejected = session.scalars(
            select(RejectedInstance).where(RejectedInstance.sop_instance_uid == sop)
        ).all()
    assert served.sha256 == hashlib.sha256(first).hexdigest()
    assert shared_api.services.objects.get(served.object_key) == first
    assert [(r.sha256, r.stored_sha256) for r in rejected] == [
        (hashlib.sha256(second).hexdigest(), hashlib.sha256(first).hexdigest())
    ]
    [found] = studies_seen(shared_api, "admin", study)
    assert values(found, NUMBER_OF_STUDY_RELATED_INSTANCES) == [1]


def test_file_meta_without_preamble_is_stored_as_part10(shared_api):
    # Tolerant on what we receive: some writers omit the preamble and DICM (PS3.10 §7.1).
    raw = without_preamble()
    _, _, sop = uids_of(raw)

    response = stow(shared_api, *multipart_body([("application/dicom", raw)]))

    assert response.status_code == 200, response.text
    with shared_api.services.sessions() as session:
        key = session.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop))
    assert shared_api.services.objects.get(key) == b"\0" * 128 + b"DICM" + raw


def test_mixed_good_and_bad_parts_store_the_good_ones(shared_api):
    good = ct_instances(2)
    study, _, _ = uids_of(good[0])
    body, content_type = multipart_body(
        [("application/dicom", good[0]), ("text/plain", b"not an image"),
         ("application/dicom", good[1])]
    )  # fmt: skip

    response = stow(shared_api, body, content_type)

    assert response.status_code == 202, response.text
    assert set(referenced(response.json())) == {uids_of(raw)[2] for raw in good}
    assert failure_reasons(response.json()) == [NOT_DICOM]
    assert "Warning" in response.headers
    [found] = studies_seen(shared_api, "admin", study)
    assert values(found, NUMBER_OF_STUDY_RELATED_INSTANCES) == [2]


def test_instance_of_another_study_than_the_url_fails(shared_api):
    raw = ct_instances(1)[0]
    other_study = new_uid()
    own_study, _, _ = uids_of(raw)

    response = stow_instances(shared_api, [raw], study=other_study)

    assert response.status_code == 409, response.text
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert studies_seen(shared_api, "admin", own_study) == []
    assert studies_seen(shared_api, "admin", other_study) == []


def test_one_foreign_part_among_three_gives_partial_success(shared_api):
    own = ct_instances(2)
    foreign = ct_instances(1)[0]
    study, _, _ = uids_of(own[0])

    response = stow_instances(shared_api, [own[0], foreign, own[1]], study=study)

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(referenced(body)) == {uids_of(raw)[2] for raw in own}
    [failed] = values(body, FAILED_SOP_SEQUENCE)
    assert values(failed, FAILURE_REASON) == [CANNOT_UNDERSTAND]
    assert values(failed, REFERENCED_SOP_INSTANCE_UID) == [uids_of(foreign)[2]]
    assert studies_seen(shared_api, "admin", uids_of(foreign)[0]) == []


# --- bad input -------------------------------------------------------------------------------

HOSTILE_UIDS = {"traversal": "../x", "65 characters": "1." * 32 + "1", "letters": "1.2.abc"}
BAD_PARTS = [
    pytest.param("application/dicom", lambda: truncated(0.1), CANNOT_UNDERSTAND,
                 id="truncated-in-header"),
    pytest.param("application/dicom", lambda: truncated(0.5), CANNOT_UNDERSTAND,
                 id="truncated-in-pixel-data"),
    pytest.param("application/dicom", dataset_only, CANNOT_UNDERSTAND, id="no-file-meta"),
    pytest.param("text/plain", lambda: b"hello", NOT_DICOM, id="text-part"),
    pytest.param("application/dicom", garbage, CANNOT_UNDERSTAND, id="random-bytes"),
    pytest.param("application/dicom", lambda: b"", CANNOT_UNDERSTAND, id="empty-part"),
    *(
        pytest.param("application/dicom", lambda k=keyword, v=value: with_raw_value(k, v),
                     CANNOT_UNDERSTAND, id=f"{keyword}-{name}")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        for name, value in HOSTILE_UIDS.items()
    ),
    pytest.param("application/dicom", lambda: with_raw_value("PatientName", "A" * 10_000),
                 CANNOT_UNDERSTAND, id="huge-patient-name"),
]  # fmt: skip


@pytest.mark.parametrize(("content_type", "make", "reason"), BAD_PARTS)
def test_bad_part_fails_alone_and_leaves_nothing_behind(shared_api, content_type, make, reason):
    objects, instances = stored_objects(shared_api), instance_count(shared_api)
    rejected = row_count(shared_api, RejectedInstance)

    response = stow(shared_api, *multipart_body([(content_type, make())]))

    assert response.status_code == 409, response.text
    assert failure_reasons(response.json()) == [reason]
    assert REFERENCED_SOP_SEQUENCE not in response.json()
    assert response.headers["Warning"].startswith("299 ")
    assert stored_objects(shared_api) == objects
    assert instance_count(shared_api) == instances
    assert row_count(shared_api, RejectedInstance) == rejected
    assert stow_instances(shared_api, ct_instances(1)).status_code == 200


@pytest.mark.parametrize(
    ("study_in_url", "status"),
    [
        ("1.2.abc", 400),
        ("1." * 32 + "1", 400),
        ("1.2.3%00", 400),
        ("%20", 400),
        ("1.2.3..4", 400),
        # Starlette decodes %2F before routing: the path gains a segment and matches no route.
        ("..%2Fx", 404),
        ("..%2F..%2Fetc", 404),
    ],
)
def test_hostile_study_uid_in_the_url_is_refused(shared_api, study_in_url, status):
    raw = ct_instances(1)[0]
    objects = stored_objects(shared_api)

    response = stow_instances(shared_api, [raw], study=study_in_url)

    assert response.status_code == status, response.text
    assert stored_objects(shared_api) == objects
    assert studies_seen(shared_api, "admin", uids_of(raw)[0]) == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/dicom",
        'multipart/related; type="application/dicom+xml"; boundary=x',
        'multipart/related; type="application/dicom+json"; boundary=x',
        "multipart/form-data; boundary=x",
        "",
    ],
)
def test_wrong_content_type_is_unsupported(shared_api, content_type):
    body, _ = multipart_related(ct_instances(1))

    response = stow(shared_api, body, content_type)

    assert response.status_code == 415, response.text


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"--b0undary--\r\n", 'multipart/related; type="application/dicom"; '
                     "boundary=b0undary", id="only-closing-boundary"),
        pytest.param(b"", 'multipart/related; type="application/dicom"; boundary=b0undary',
                     id="empty-body"),
        pytest.param(b"--b0undary--\r\n", 'multipart/related; type="application/dicom"',
                     id="no-boundary-parameter"),
        pytest.param(b"no boundary anywhere", "multipart/related; boundary=b0undary",
                     id="no-boundary-in-body"),
    ],
)  # fmt: skip
def test_body_without_any_part_is_a_bad_request(shared_api, body, content_type):
    objects = stored_objects(shared_api)

    response = stow(shared_api, body, content_type)

    assert response.status_code == 400, response.text
    assert stored_objects(shared_api) == objects


def test_complete_part_survives_a_body_cut_before_its_closing_boundary(shared_api):
    whole, cut = ct_instances(2)
    body, content_type = multipart_body(
        [("application/dicom", whole), ("application/dicom", cut[:100])], closed=False
    )
    body = body[: -len(b"\r\n")]  # the connection dropped inside the second part

    response = stow(shared_api, body, content_type)

    assert response.status_code == 202, response.text
    assert set(referenced(response.json())) == {uids_of(whole)[2]}
    assert len(instances_seen(shared_api, uids_of(whole)[2])) == 1
    assert instances_seen(shared_api, uids_of(cut)[2]) == []


# --- who may store ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"),
    [(None, 401), ("ref1", 403), ("rad1", 403), ("rg1", 200), ("site", 200), ("admin", 200)],
)
def test_only_sites_radiographers_and_admins_may_store(shared_api, who, status):
    raw = ct_instances(1)[0]

    response = stow_instances(shared_api, [raw], who=who)

    assert response.status_code == status, response.text
    assert len(studies_seen(shared_api, "admin", uids_of(raw)[0])) == (status == 200)


@pytest.mark.parametrize(("who", "sees"), [("rg1", True), ("rad1", True), ("rg2", False)])
def test_site_token_stores_into_its_own_site(shared_api, who, sees):
    raw = ct_instances(1)[0]
    assert stow_instances(shared_api, [raw], who="site").status_code == 200

    assert len(studies_seen(shared_api, who, uids_of(raw)[0])) == sees


def test_study_of_one_site_is_refused_to_another_site(shared_api):
    first, second = ct_instances(2)
    assert stow_instances(shared_api, [first], who="rg1").status_code == 200

    response = stow_instances(shared_api, [second], who="rg2")

    assert response.status_code == 409, response.text
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert studies_seen(shared_api, "rg2", uids_of(first)[0]) == []


# --- audit -----------------------------------------------------------------------------------


def test_store_is_audited(shared_api):
    instances = ct_instances(2)
    study, _, _ = uids_of(instances[0])

    assert stow_instances(shared_api, instances, who="rg1").status_code == 200

    with shared_api.services.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.study_uid == study)).all()
    assert [(r.action, r.actor, r.actor_role, r.outcome) for r in rows] == [
        ("stow", "rg1", "radiographer", "success")
    ]
    assert rows[0].source_address == "testclient"
    assert rows[0].patient_pk is not None


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events"]
)
def test_audit_log_cannot_be_rewritten(shared_api, statement):
    assert stow_instances(shared_api, ct_instances(1)).status_code == 200
    count = row_count(shared_api, AuditEvent)

    with (
        pytest.raises(sa_exc.DBAPIError, match="append-only"),
        shared_api.services.engine.begin() as connection,
    ):
        connection.execute(text(statement))

    assert row_count(shared_api, AuditEvent) == count
    with shared_api.services.sessions() as session:
        assert "x" not in set(session.scalars(select(AuditEvent.actor)))
