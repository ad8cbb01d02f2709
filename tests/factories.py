"""Builders of test data: DICOM instances, multipart bodies, users and tokens."""

from __future__ import annotations

import hashlib
import io
import uuid
import warnings
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from telerad.demo import generate_ct_study


def part10(ds: Dataset) -> bytes:
    """Encode a dataset with its file meta as Part-10 bytes."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ct_datasets(slices: int = 3, size: int = 32, **kwargs: Any) -> list[Dataset]:
    """A small synthetic CT series (real CT Image IOD attributes, tiny matrix)."""
    kwargs.setdefault("seed", uuid.uuid4().int % 10**6)
    return list(generate_ct_study(slices, rows=size, columns=size, **kwargs))


def ct_instances(slices: int = 3, size: int = 32, **kwargs: Any) -> list[bytes]:
    """Part-10 bytes of :func:`ct_datasets`."""
    return [part10(ds) for ds in ct_datasets(slices, size, **kwargs)]


def one_instance(**attributes: Any) -> bytes:
    """One small CT instance with ``attributes`` overriding dataset keywords."""
    ds = ct_datasets(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile values are the point of some tests
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        if "SOPInstanceUID" in attributes:
            ds.file_meta.MediaStorageSOPInstanceUID = attributes["SOPInstanceUID"]
        return part10(ds)


def encoded_name_instance(charset: str, name: str, patient_id: str) -> bytes:
    """An instance whose Patient Name is encoded in ``charset`` (e.g. GB18030)."""
    ds = ct_datasets(1, patient_id=patient_id)[0]
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    raw = part10(ds)
    assert pydicom.dcmread(io.BytesIO(raw)).PatientName == name
    return raw


def multipart_related(
    parts: list[bytes], content_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A multipart/related body and its Content-Type header."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return b"".join(chunks), header


def new_uid() -> str:
    """A fresh UID."""
    return str(generate_uid())


def manifest_of(instances: list[bytes]) -> tuple[str, dict[str, str]]:
    """(Study Instance UID, SOP Instance UID → SHA-256) of Part-10 ``instances`` of one study,
    as a gateway's study manifest lists them."""
    entries: dict[str, str] = {}
    studies = set()
    for raw in instances:
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        studies.add(ds.StudyInstanceUID)
        entries[ds.SOPInstanceUID] = hashlib.sha256(raw).hexdigest()
    [study_uid] = studies
    return study_uid, entries


def dicom_json(ds: Dataset) -> dict[str, Any]:
    """An instance's DICOM JSON as the catalog keeps it (bulk data by URI, no pixels)."""
    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "bulk")


def report_bundle(
    datasets: list[Dataset],
    raw_content: dict[str, Any],
    *,
    template: str = "ct-head",
    status: str = "final",
    kind: str = "report",
    sequence: int = 0,
    chain: tuple[Any, ...] = (),
    predecessor_content: Any = None,
    institution: str = "City Hospital",
    key_images: tuple[Any, ...] = (),
) -> Any:
    """A :class:`telerad.worklist.ReportBundle` of one version for the output builders."""
    from datetime import UTC, datetime

    from telerad.worklist import (
        PatientStudy,
        ReportBundle,
        ReportKind,
        ReportStatus,
        ReportVersion,
        get_template,
    )
    from telerad.worklist.report_view import Signature
    from telerad.worklist.templates import parse_content

    form = get_template(template)
    content = parse_content(form, raw_content, addendum=kind == "addendum")
    now = datetime(2026, 11, 24, 13, 30, 15, 123456, tzinfo=UTC)
    signature = None
    if status == "final":
        signature = Signature("Jane Roe", "rad1", now, "c" * 64, "d" * 64)
    version = ReportVersion(
        id=10 + sequence,
        study_uid=datasets[0].StudyInstanceUID,
        sequence=sequence,
        kind=ReportKind(kind),
        status=ReportStatus(status),
        template=form,
        content=content,
        author="Jane Roe",
        author_username="rad1",
        created_at=now,
        updated_at=now,
        version=3,
        preliminary_at=now if status != "draft" else None,
        signature=signature,
        predecessor_id=9 + sequence if sequence else None,
        predecessor_content=predecessor_content,
    )
    return ReportBundle(
        version=version,
        chain=(*chain, version),
        study=PatientStudy.from_dicom_json(dicom_json(datasets[0])),
        institution=institution,
        key_images=key_images,
    )
