"""The bytes of WADO-RS responses (PS3.18 §10.4): instance parts, frames and bulk data.

Synchronous functions over the object store, called from the routes in a worker thread (or
iterated by Starlette's streaming response in one). Nothing here knows about HTTP requests;
the routes choose the representation with :mod:`telerad.viewer_api.negotiation` first.

Instances stream one at a time (``ObjectStore.open`` chunks for stored bytes, one decoded
instance at a time when transcoding), so a study is never held in memory. Frames are read by
byte range (:func:`telerad.storage.read_frames`); only objects whose frames cannot be located
(Explicit VR Big Endian, Deflated, sub-sampled or unlocatable encapsulated data) are read
whole and decoded.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits
from pydicom.tag import Tag

from telerad.storage import FrameNotFound, NotFound, ObjectStore, StoredInstance, read_frames
from telerad.viewer_api.negotiation import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    FramePlan,
    InstancePlan,
)
from telerad.viewer_api.pixels import (
    CorruptFrame,
    NotAnImage,
    PixelDescription,
    decode_frame,
    decode_object_frame,
)
from telerad.viewer_api.problems import BadRequest
from telerad.viewer_api.transcode import native_bytes, to_explicit_little_endian

logger = logging.getLogger(__name__)

PIXEL_DATA = "7FE00010"
#: Most frame numbers one request may list.
MAX_FRAMES_PER_REQUEST = 10_000
_FRAME_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_ITEM = re.compile(r"0|[1-9][0-9]{0,5}")
#: Bytes per word of the VRs swapped when a stored big-endian value is sent little endian.
_WORD_SIZES = {"OW": 2, "US": 2, "SS": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4,
               "OD": 8, "OV": 8, "FD": 8, "SV": 8, "UV": 8}  # fmt: skip


def new_boundary() -> str:
    """A multipart boundary that cannot occur in DICOM data by chance."""
    return f"telerad-{uuid.uuid4().hex}"


def part_header(boundary: str, content_type: str, first: bool) -> bytes:
    """The delimiter and headers opening one body part (RFC 2046 §5.1.1)."""
    lead = "" if first else "\r\n"
    return f"{lead}--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")


def closing(boundary: str) -> bytes:
    """The close delimiter ending a multipart body."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def multipart(boundary: str, content_type: str, parts: list[bytes]) -> bytes:
    """A whole multipart/related body of ``parts`` sharing ``content_type``."""
    pieces = []
    for index, data in enumerate(parts):
        pieces += [part_header(boundary, content_type, index == 0), data]
    pieces.append(closing(boundary))
    return b"".join(pieces)


# --- instances -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstancePart:
    """One instance ready to send: its Content-Type and its bytes (or stored chunks)."""

    content_type: str
    data: bytes | None
    chunks: Iterator[bytes] | None

    def body(self) -> Iterator[bytes]:
        """The part's bytes as chunks."""
        if self.data is not None:
            yield self.data
        elif self.chunks is not None:
            yield from self.chunks


def instance_part(
    objects: ObjectStore, instance: StoredInstance, plan: InstancePlan, strict: bool
) -> InstancePart:
    """The representation ``plan`` asks for of one instance.

    When transcoding fails, ``strict`` raises :class:`CorruptFrame`; otherwise (a later part
    of a multipart stream, whose status line is already sent) the stored bytes are sent with
    their real transfer syntax in the part's Content-Type and a warning is logged.
    """
    stored = instance.transfer_syntax_uid
    target = plan.target(stored)
    if target != stored:
        try:
            data = to_explicit_little_endian(objects.get(instance.object_key))
            return InstancePart(_dicom_type(EXPLICIT_VR_LITTLE_ENDIAN), data, None)
        except CorruptFrame as exc:
            message = f"instance {instance.sop_instance_uid} {exc}"
            if strict:
                raise CorruptFrame(message) from exc
            logger.warning("%s: sent as stored (%s)", message, stored)
    return InstancePart(_dicom_type(stored), None, objects.open(instance.object_key))


def _dicom_type(transfer_syntax: str) -> str:
    return f"application/dicom; transfer-syntax={transfer_syntax}"


def instance_stream(
    objects: ObjectStore,
    instances: list[StoredInstance],
    plan: InstancePlan,
    first: InstancePart,
    boundary: str,
) -> Iterator[bytes]:
    """The multipart body of ``instances``; ``first`` is the already prepared first part."""
    for index, instance in enumerate(instances):
        part = first if index == 0 else instance_part(objects, instance, plan, strict=False)
        yield part_header(boundary, part.content_type, index == 0)
        yield from part.body()
    yield closing(boundary)


# --- frames ----------------------------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    """Frame numbers of a ``{frames}`` path segment: comma-separated, 1-based (PS3.18
    §10.4.1.1.5). Raises :class:`BadRequest` for anything else (0, negatives, empty items)."""
    items = text.split(",")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    if not all(_FRAME_NUMBER.fullmatch(item) for item in items):
        raise BadRequest("frame list must be comma-separated frame numbers from 1 (e.g. 1,2,3)")
    return [int(item) for item in items]


def frame_count(instance: StoredInstance) -> int:
    """Frames of the instance; :class:`NotAnImage` if it has no Pixel Data."""
    if instance.frame_ranges is not None:
        return instance.frame_count
    if f'"{PIXEL_DATA}"' not in instance.metadata_json:
        raise NotAnImage(f"instance {instance.sop_instance_uid} has no pixel data")
    return max(instance.number_of_frames or 1, 1)


def frames_payload(
    objects: ObjectStore, instance: StoredInstance, numbers: list[int], plan: FramePlan
) -> tuple[list[bytes], str]:
    """The frames ``numbers`` as ``plan`` asks, and the Content-Type they carry.

    Raises :class:`~telerad.storage.FrameNotFound` for numbers outside the instance and
    :class:`CorruptFrame` naming the first frame that cannot be decoded.
    """
    if instance.frame_ranges is None:
        return _decoded_object_frames(objects, instance, numbers), _uncompressed()
    stored = read_frames(objects, instance, numbers)
    if not plan.decode:
        return stored, plan.content_type
    description = PixelDescription.from_metadata(
        json.loads(instance.metadata_json), instance.transfer_syntax_uid
    )
    decoded = []
    for number, frame in zip(numbers, stored, strict=True):
        try:
            decoded.append(_octets(decode_frame(frame, description), description.bits_allocated))
        except CorruptFrame as exc:
            raise _corrupt(instance, number, exc) from exc
    return decoded, plan.content_type


def _decoded_object_frames(
    objects: ObjectStore, instance: StoredInstance, numbers: list[int]
) -> list[bytes]:
    count = frame_count(instance)
    for number in numbers:
        if not 1 <= number <= count:
            raise FrameNotFound(f"frame {number} is not in this instance")
    data = objects.get(instance.object_key)
    frames = []
    for number in numbers:
        try:
            pixels = decode_object_frame(data, number)
            frames.append(_octets(pixels, instance.bits_allocated or 8))
        except (CorruptFrame, IndexError) as exc:
            raise _corrupt(instance, number, exc) from exc
    return frames


def _octets(pixels: np.ndarray, bits_allocated: int) -> bytes:
    """Uncompressed bulk data: little endian, 1-bit pixels packed as stored (PS3.5 §8.1.1)."""
    return pack_bits(pixels) if bits_allocated == 1 else native_bytes(pixels)


def _corrupt(instance: StoredInstance, number: int, exc: Exception) -> CorruptFrame:
    return CorruptFrame(
        f"frame {number} of instance {instance.sop_instance_uid} cannot be decoded: {exc}"
    )


def _uncompressed() -> str:
    return f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"


# --- other bulk data -------------------------------------------------------------------------


def parse_bulk_path(path: str) -> list[int | str]:
    """``{tag}`` or ``{sequence tag}/{item}/…/{tag}`` as the metadata's BulkDataURIs give it
    (see ``telerad.storage.parsing``); raises :class:`BadRequest` otherwise."""
    segments = path.split("/")
    valid = len(segments) % 2 == 1 and len(segments) <= 31
    valid = valid and all(
        (_TAG if i % 2 == 0 else _ITEM).fullmatch(s) for i, s in enumerate(segments)
    )
    if not valid:
        raise BadRequest("bulk data path must be a tag (8 hex digits), or tag/item/…/tag")
    return [s.upper() if i % 2 == 0 else int(s) for i, s in enumerate(segments)]


def bulk_value(objects: ObjectStore, instance: StoredInstance, path: list[int | str]) -> bytes:
    """The value of the element at ``path``, little endian (PS3.18 §8.7.3.3.1).

    Raises :class:`~telerad.storage.NotFound` when the instance has no such element.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(io.BytesIO(objects.get(instance.object_key)))
        element = _element_at(dataset, path)
    if element is None or not isinstance(element.value, bytes | bytearray):
        raise NotFound("no such bulk data")
    value = bytes(element.value)
    size = _WORD_SIZES.get(str(element.VR))
    if size and not dataset.original_encoding[1] and len(value) % size == 0:
        value = b"".join(value[i : i + size][::-1] for i in range(0, len(value), size))
    return value


def _element_at(dataset: Dataset, path: list[int | str]) -> pydicom.dataelem.RawDataElement | None:
    node: Dataset = dataset
    for position in range(0, len(path) - 1, 2):
        tag, index = Tag(str(path[position])), int(path[position + 1])
        sequence = node.get(tag)
        if sequence is None or sequence.VR != "SQ" or index >= len(sequence.value):
            return None
        node = sequence.value[index]
    tag = Tag(str(path[-1]))
    if tag not in node:
        return None
    raw = node.get_item(tag)
    return raw if isinstance(raw, pydicom.dataelem.RawDataElement) else None
