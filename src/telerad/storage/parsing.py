"""Reading what the catalog needs from a Part-10 instance, without decoding pixel data.

The header is parsed once (``stop_before_pixels``); the byte ranges of each frame are located in
the raw bytes (native: PS3.5 §8.1.1; encapsulated: PS3.5 §A.4, Basic Offset Table and fragment
items) so that frames can later be served with a byte-range read; the instance's DICOM JSON
(PS3.18 Annex F) is computed with BulkDataURIs in place of pixel data and other large values.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from telerad.storage.errors import InvalidInstance
from telerad.storage.keys import is_valid_uid

logger = logging.getLogger(__name__)

#: Marker replaced by the serving adapter with its absolute DICOMweb base URL.
BASE_URI_MARKER = "@@DICOMWEB@@"
PIXEL_DATA_TAG = 0x7FE00010
#: Elements of these VRs longer than this are served as bulk data, not inline.
BULK_DATA_THRESHOLD = 1024
#: Longest value we keep per catalog string column, by keyword (characters).
COLUMN_LIMITS: dict[str, int] = {
    "PatientName": 320,
    "PatientID": 64,
    "IssuerOfPatientID": 64,
    "AccessionNumber": 64,
    "StudyID": 16,
    "ReferringPhysicianName": 320,
    "StudyDescription": 1024,
    "SeriesDescription": 1024,
    "Modality": 16,
    "BodyPartExamined": 64,
}


@dataclass(slots=True)
class ParsedInstance:
    """Everything the catalog stores about one instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    attributes: dict[str, str]
    series_number: int | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None
    frame_ranges: list[list[tuple[int, int]]] | None
    metadata: dict[str, Any] = field(repr=False)

    def metadata_json(self) -> str:
        """Compact DICOM JSON text of the instance."""
        return json.dumps(self.metadata, separators=(",", ":"), ensure_ascii=False)


def as_part10(data: bytes) -> bytes:
    """Add the 128-byte preamble and ``DICM`` prefix to a File Meta group that lacks them.

    Some writers (pydicom's ``dcmwrite`` without ``enforce_file_format``, used by
    dicomweb-client) start with the (0002,xxxx) group directly; PS3.10 §7.1 requires the
    prefix, so we add it rather than refuse a usable instance. Anything else is returned as is.
    """
    if data[128:132] == b"DICM" or len(data) < 8:
        return data
    group, _element = struct.unpack_from("<HH", data, 0)
    if group == 0x0002 and data[4:6].isalpha() and data[4:6].isupper():
        return b"\0" * 128 + b"DICM" + data
    return data


def parse_instance(data: bytes) -> ParsedInstance:
    """Parse a Part-10 instance's header and locate its frames.

    Raises
    ------
    InvalidInstance
        Not a Part-10 file (PS3.10 §7.1), unreadable header, missing or invalid UIDs, or a
        catalog attribute longer than we store.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = _parse(data)
    if caught:  # the messages may quote patient data: log only that there were some
        logger.warning(
            "instance %s: %d header values not valid", parsed.sop_instance_uid, len(caught)
        )
    return parsed


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The identifying UIDs of an instance that passed the ingest path's checks."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str


#: The matching keys the catalog keeps (:func:`_catalog_attributes`).
_CATALOG_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyID", "ReferringPhysicianName", "StudyDescription", "TimezoneOffsetFromUTC",
    "Modality", "SeriesDescription", "BodyPartExamined",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
)  # fmt: skip
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: The elements :func:`check_instance` reads: the identifying UIDs, the catalog's matching
#: keys, and Bits Allocated (the Pixel Data VR in Implicit VR, :func:`_pixel_data_header`).
_CHECKED_TAGS = [
    int(tag_for_keyword(keyword) or 0)
    for keyword in (*_REQUIRED_UIDS, *_CATALOG_KEYWORDS, "BitsAllocated")
]


def check_instance(data: bytes) -> InstanceHeader:
    """Apply the ingest path's acceptance checks without building its catalog data.

    A gateway calls this before acknowledging a C-STORE, so that it never acknowledges what the
    centre's :func:`parse_instance` would refuse: Part-10 header (PS3.10 §7.1), valid UIDs
    (PS3.5 §9.1), complete Pixel Data, catalog attribute lengths. No pixel data is decoded.

    Raises
    ------
    InvalidInstance
        As :func:`parse_instance`.
    """
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        stream = io.BytesIO(data)
        dataset = _read_header(stream, _CHECKED_TAGS)
        uids = _required_uids(dataset)
        _check_complete(data, stream.tell(), dataset)
        _catalog_attributes(dataset, uids["SOPInstanceUID"])
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=uids["TransferSyntaxUID"],
    )


def _parse(data: bytes) -> ParsedInstance:
    stream = io.BytesIO(data)
    dataset = _read_header(stream)
    pixel_offset = stream.tell()
    uids = _required_uids(dataset)
    _check_complete(data, pixel_offset, dataset)
    attributes = _catalog_attributes(dataset, uids["SOPInstanceUID"])
    metadata = _dicom_json(dataset, uids, data, pixel_offset)
    return ParsedInstance(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=uids["TransferSyntaxUID"],
        attributes=attributes,
        series_number=_int(dataset, "SeriesNumber"),
        instance_number=_int(dataset, "InstanceNumber"),
        rows=_int(dataset, "Rows"),
        columns=_int(dataset, "Columns"),
        bits_allocated=_int(dataset, "BitsAllocated"),
        number_of_frames=_int(dataset, "NumberOfFrames"),
        frame_ranges=locate_frames(data, pixel_offset, dataset),
        metadata=metadata,
    )


def _read_header(stream: io.BytesIO, tags: list[int] | None = None) -> Dataset:
    """Read everything before Pixel Data; refuse data without a File Meta header.

    With ``tags``, only those elements are kept: pydicom still walks every element header up
    to Pixel Data (so a header cut short is refused alike) but makes no element of the
    others, which :func:`check_instance` never reads (0.72 -> 0.46 ms for a CT slice)."""
    try:
        dataset = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError as exc:
        raise InvalidInstance(f"not a DICOM Part-10 file: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInstance(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    if "TransferSyntaxUID" not in dataset.file_meta:
        raise InvalidInstance("File Meta Information has no Transfer Syntax UID (PS3.10 §7.1)")
    return dataset


def _check_complete(data: bytes, offset: int, dataset: Dataset) -> None:
    """Refuse an instance whose bytes end inside its header or its pixel data.

    The header was read up to Pixel Data (or the end); what follows must be a whole Pixel
    Data element: a defined length that fits (PS3.5 §7.1), or items closed by a Sequence
    Delimitation Item (PS3.5 §A.4). A deflated data set is inflated in full to check it.
    """
    if dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        try:
            pydicom.dcmread(io.BytesIO(data)).get("PixelData")
        except Exception as exc:
            raise InvalidInstance(f"deflated data set is incomplete: {exc}") from exc
        return
    if offset >= len(data):
        return
    header = _pixel_data_header(data, offset, dataset)
    if header is None:
        if len(data) - offset < 12:
            raise InvalidInstance("data set ends inside an element header (truncated)")
        return
    _vr, value_offset, length = header
    if length != 0xFFFFFFFF:
        if value_offset + length > len(data):
            raise InvalidInstance(
                f"Pixel Data is truncated: {len(data) - value_offset} of {length} bytes present"
            )
        return
    _check_items(data, value_offset)


def _check_items(data: bytes, position: int) -> None:
    """Walk encapsulated items up to the Sequence Delimitation Item (FFFE,E0DD)."""
    while position + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, position)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or position + 8 + length > len(data):
            break
        position += 8 + length
    raise InvalidInstance("encapsulated Pixel Data is truncated or malformed (PS3.5 §A.4)")


def _required_uids(dataset: Dataset) -> dict[str, str]:
    """The four identifying UIDs plus the transfer syntax, each validated (PS3.5 §9.1)."""
    uids: dict[str, str] = {}
    for keyword in _REQUIRED_UIDS:
        value = _text(dataset, keyword)
        if not is_valid_uid(value):
            raise InvalidInstance(f"{keyword} missing or not a valid UID: {value[:80]!r}")
        uids[keyword] = value
    uids["TransferSyntaxUID"] = str(dataset.file_meta.TransferSyntaxUID)
    if not is_valid_uid(uids["TransferSyntaxUID"]):
        raise InvalidInstance("Transfer Syntax UID is not a valid UID")
    media_uid = str(dataset.file_meta.get("MediaStorageSOPInstanceUID", ""))
    if media_uid and media_uid != uids["SOPInstanceUID"]:
        logger.warning("instance %s: MediaStorageSOPInstanceUID differs", uids["SOPInstanceUID"])
    return uids


def _catalog_attributes(dataset: Dataset, sop_instance_uid: str) -> dict[str, str]:
    """String values of the matching keys the catalog keeps, decoded with their charset."""
    attributes: dict[str, str] = {}
    for keyword in _CATALOG_KEYWORDS:
        value = _text(dataset, keyword)
        limit = COLUMN_LIMITS.get(keyword, 128)
        if len(value) > limit:
            raise InvalidInstance(
                f"{keyword} is {len(value)} characters, more than the {limit} stored",
                sop_instance_uid=sop_instance_uid,
            )
        attributes[keyword] = _clean_person_name(value) if keyword.endswith("Name") else value
    name = dataset.get("PatientName")
    groups = (name.alphabetic, name.ideographic, name.phonetic) if name else ("", "", "")
    attributes["PatientNameAlphabetic"] = _clean_person_name(groups[0])
    attributes["PatientNameIdeographic"] = _clean_person_name(groups[1])
    attributes["PatientNamePhonetic"] = _clean_person_name(groups[2])
    return attributes


def _clean_person_name(value: str) -> str:
    """Drop empty trailing components and groups (``Wang^^^^`` is ``Wang``, PS3.5 §6.2.1)."""
    groups = [group.rstrip("^ ") for group in value.split("=")]
    return "=".join(groups).rstrip("=")


def _text(dataset: Dataset, keyword: str) -> str:
    """A value as text ('' when absent or empty); multiple values joined with a backslash."""
    try:
        value = dataset.get(keyword)
    except Exception as exc:
        raise InvalidInstance(f"{keyword} cannot be decoded: {exc}") from exc
    if value is None or value == "":
        return ""
    if isinstance(value, list | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(dataset: Dataset, keyword: str) -> int | None:
    """An IS/US value as int, or None when absent or malformed (tolerant)."""
    try:
        value = dataset.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _dicom_json(
    dataset: Dataset, uids: dict[str, str], data: bytes, pixel_offset: int
) -> dict[str, Any]:
    """The instance's DICOM JSON model (PS3.18 Annex F) with BulkDataURIs for large values."""
    instance_uri = (
        f"{BASE_URI_MARKER}/studies/{uids['StudyInstanceUID']}/series/{uids['SeriesInstanceUID']}"
        f"/instances/{uids['SOPInstanceUID']}"
    )

    def bulk_uri(element: DataElement) -> str:
        return f"{instance_uri}/bulk/{element.tag:08X}"

    try:
        result: dict[str, Any] = dataset.to_json_dict(
            bulk_data_threshold=BULK_DATA_THRESHOLD,
            bulk_data_element_handler=bulk_uri,
            suppress_invalid_tags=True,
        )
    except Exception as exc:
        raise InvalidInstance(f"header cannot be represented as DICOM JSON: {exc}") from exc
    vr = _pixel_data_vr(data, pixel_offset, dataset)
    if vr is not None:
        result[f"{PIXEL_DATA_TAG:08X}"] = {"vr": vr, "BulkDataURI": ""}
    _address_bulk_data(result, f"{instance_uri}/bulk")
    return result


def _address_bulk_data(node: dict[str, Any], prefix: str) -> None:
    """Give every BulkDataURI the path of its element: ``bulk/{tag}`` at the top level and
    ``bulk/{sequence tag}/{item index}/{tag}`` (0-based, repeated) inside sequences, so that
    a value nested in a sequence is not confused with a top-level one of the same tag.
    Pixel Data is ``bulk/7FE00010``: all its frames (PS3.18 §8.7.3.3)."""
    for tag, attribute in node.items():
        if "BulkDataURI" in attribute:
            attribute["BulkDataURI"] = f"{prefix}/{tag}"
        elif attribute.get("vr") == "SQ":
            for index, item in enumerate(attribute.get("Value", [])):
                _address_bulk_data(item, f"{prefix}/{tag}/{index}")


def _pixel_data_header(data: bytes, offset: int, dataset: Dataset) -> tuple[str, int, int] | None:
    """(VR, value offset, value length) of the Pixel Data element at ``offset``, if readable."""
    ts = dataset.file_meta.TransferSyntaxUID
    if ts in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian) or len(data) < offset + 8:
        return None
    group, elem = struct.unpack_from("<HH", data, offset)
    if (group << 16 | elem) != PIXEL_DATA_TAG:
        return None
    if ts == ImplicitVRLittleEndian:
        vr = "OB" if (_int(dataset, "BitsAllocated") or 16) <= 8 else "OW"
        return vr, offset + 8, struct.unpack_from("<I", data, offset + 4)[0]
    if len(data) < offset + 12:
        return None
    vr = data[offset + 4 : offset + 6].decode("ascii", "replace")
    return vr, offset + 12, struct.unpack_from("<I", data, offset + 8)[0]


def _pixel_data_vr(data: bytes, offset: int, dataset: Dataset) -> str | None:
    header = _pixel_data_header(data, offset, dataset)
    if header is not None:
        return header[0]
    if dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        # The header was read from the inflated stream: offsets say nothing, so look.
        full = pydicom.dcmread(io.BytesIO(data))
        return str(full["PixelData"].VR) if "PixelData" in full else None
    return "OW" if len(data) > offset else None


def locate_frames(data: bytes, offset: int, dataset: Dataset) -> list[list[tuple[int, int]]] | None:
    """Byte ranges of each frame's pixel data inside ``data``, or None if not locatable.

    Native pixel data: one contiguous range per frame (PS3.5 §8.1.1). Encapsulated: the
    fragments of each frame (PS3.5 §A.4), grouped by the Basic Offset Table when present, one
    fragment per frame when the counts agree, or all fragments for a single frame.
    """
    header = _pixel_data_header(data, offset, dataset)
    if header is None:
        return None
    _vr, value_offset, length = header
    frames = _int(dataset, "NumberOfFrames") or 1
    if length != 0xFFFFFFFF:
        return _native_frames(dataset, value_offset, length, frames)
    return _encapsulated_frames(data, value_offset, frames)


def _native_frames(
    dataset: Dataset, value_offset: int, length: int, frames: int
) -> list[list[tuple[int, int]]] | None:
    rows, columns = _int(dataset, "Rows") or 0, _int(dataset, "Columns") or 0
    samples, bits = _int(dataset, "SamplesPerPixel") or 1, _int(dataset, "BitsAllocated") or 0
    frame_bits = rows * columns * samples * bits
    if frame_bits == 0 or frame_bits % 8 or frame_bits // 8 * frames > length:
        return None  # bit-packed or inconsistent: served by decoding instead
    size = frame_bits // 8
    return [[(value_offset + i * size, size)] for i in range(frames)]


def _encapsulated_frames(
    data: bytes, value_offset: int, frames: int
) -> list[list[tuple[int, int]]] | None:
    buffer = io.BytesIO(data)
    buffer.seek(value_offset)
    try:
        bot = parse_basic_offsets(buffer)
        first_item = buffer.tell()
        count, item_offsets = parse_fragments(buffer)
    except (ValueError, struct.error):
        return None
    fragments = []
    for item in item_offsets:
        item_length = struct.unpack_from("<I", data, item + 4)[0]
        fragments.append((item + 8, item_length))
    if frames == 1:
        return [fragments]
    if bot and len(bot) == frames:
        starts = [first_item + b for b in bot]
        grouped: list[list[tuple[int, int]]] = [[] for _ in range(frames)]
        for fragment in fragments:
            index = max(i for i, s in enumerate(starts) if fragment[0] - 8 >= s)
            grouped[index].append(fragment)
        return grouped
    if count == frames:
        return [[fragment] for fragment in fragments]
    return None
