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


def encapsulated_pdf(document: bytes, **attributes: Any) -> bytes:
    """An Encapsulated PDF instance (PS3.3 A.45.1) holding ``document``, in a fresh study."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID = attributes.pop("StudyInstanceUID", new_uid())
    ds.SeriesInstanceUID = attributes.pop("SeriesInstanceUID", new_uid())
    ds.PatientName, ds.PatientID = "Doc^Pdf", "PDF0001"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DOC", 99, 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document + b"\0" * (len(document) % 2)
    ds.EncapsulatedDocumentLength = len(document)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10(ds)


def multiframe_ct(frames: int = 3, size: int = 16, **attributes: Any) -> bytes:
    """One native multi-frame MONOCHROME2 instance: frame ``n`` differs from the others."""
    import numpy as np

    ds = ct_datasets(1, size)[0]
    pixels = np.stack(
        [np.full((size, size), 1000 + 300 * n, dtype=np.int16) for n in range(frames)]
    )
    pixels[:, : size // 2] -= 500  # a left/right edge, so flips and scaling show
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.NumberOfFrames = frames
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return part10(ds)


def corrupt_rle_instance() -> bytes:
    """A CT instance declared RLE Lossless whose one frame is not an RLE stream (PS3.5 G)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = ct_datasets(1)[0]
    ds.PixelData = encapsulate([b"\x01\x00\x00\x00" + b"\xff" * 61 + b"garbage"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return part10(ds)
