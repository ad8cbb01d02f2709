"""Decode stored frames into pixel arrays: WADO-RS octet-stream frames, transcoding, rendering.

A frame arrives as the bytes :func:`telerad.storage.read_frame` returns: the native pixels of one
frame (PS3.5 §8.1.1, little endian) or the compressed bitstream of one encapsulated frame
(PS3.5 §A.4, its fragments concatenated). It is described by a :class:`PixelDescription` read
from the instance's stored DICOM JSON (PS3.18 Annex F) and decoded with pydicom's pixel backends
(:mod:`pydicom.pixels`): RLE Lossless, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and
HTJ2K, through pylibjpeg, pylibjpeg-rle, pylibjpeg-openjpeg and pyjpegls; 12-bit JPEG Extended
through imagecodecs (:mod:`telerad.viewer_api.jpeg12`, registered on import of this module).

Colour: frames come out as pydicom's ``pixel_array`` gives them (``as_rgb=True``): a
``YBR_FULL`` or ``YBR_FULL_422`` frame (JPEG baseline/extended typically) is converted to **RGB**;
JPEG 2000 ``YBR_ICT``/``YBR_RCT`` frames are RGB once decoded (the codec undoes the component
transform); ``RGB`` stays RGB. Monochrome frames are returned as stored (no Modality or VOI LUT).

Errors: :class:`NotAnImage` (the instance has no Pixel Data description) and
:class:`CorruptFrame` (the bitstream cannot be decoded, or a native frame has the wrong length).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from telerad.viewer_api import jpeg12

__all__ = [
    "CorruptFrame",
    "NotAnImage",
    "PixelDescription",
    "decode_frame",
    "decode_object_frame",
]

_PIXEL_DATA = "7FE00010"

jpeg12.register()


class NotAnImage(Exception):
    """The instance carries no (integer) Pixel Data, or its Image Pixel module is incomplete."""


class CorruptFrame(Exception):
    """A stored frame cannot be decoded (codec error, or a native frame of the wrong length)."""


@dataclass(frozen=True)
class PixelDescription:
    """The Image Pixel module (PS3.3 §C.7.6.3) of an instance and its transfer syntax."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    transfer_syntax_uid: str

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], transfer_syntax_uid: str) -> PixelDescription:
        """Read the description from an instance's DICOM JSON (PS3.18 Annex F).

        Raises :class:`NotAnImage` when there is no Pixel Data (7FE0,0010) or a required
        Image Pixel attribute (Rows, Columns, Bits Allocated, Photometric Interpretation) is
        missing or malformed.
        """
        if _PIXEL_DATA not in metadata:
            raise NotAnImage("the instance has no Pixel Data")
        try:
            bits_allocated = _int(metadata, "00280100")
            return cls(
                rows=_int(metadata, "00280010"),
                columns=_int(metadata, "00280011"),
                samples_per_pixel=_int(metadata, "00280002", 1),
                bits_allocated=bits_allocated,
                bits_stored=_int(metadata, "00280101", bits_allocated),
                pixel_representation=_int(metadata, "00280103", 0),
                photometric_interpretation=_str(metadata, "00280004"),
                planar_configuration=_int(metadata, "00280006", 0),
                number_of_frames=max(_int(metadata, "00280008", 1), 1),
                transfer_syntax_uid=transfer_syntax_uid,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise NotAnImage(f"incomplete Image Pixel module: {exc}") from exc

    @cached_property
    def is_native(self) -> bool:
        """Whether frames are stored uncompressed (PS3.5 §8.1.1); computed once per description
        (it is asked on every rendered request)."""
        uid = UID(self.transfer_syntax_uid)
        return uid.is_transfer_syntax and not uid.is_encapsulated

    @property
    def native_frame_length(self) -> int:
        """Bytes of one native frame (bit-packed 1-bit frames rounded up)."""
        bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        return (bits + 7) // 8


def _value(metadata: dict[str, Any], tag: str) -> Any:
    return metadata[tag]["Value"][0]


def _int(metadata: dict[str, Any], tag: str, default: int | None = None) -> int:
    if default is not None and not metadata.get(tag, {}).get("Value"):
        return default
    return int(_value(metadata, tag))


def _str(metadata: dict[str, Any], tag: str) -> str:
    value = str(_value(metadata, tag)).strip()
    if not value:
        raise ValueError(f"({tag}) is empty")
    return value


def decode_frame(frame: bytes, description: PixelDescription) -> np.ndarray:
    """Decode one stored frame (PS3.5 §8.1.1 native or §A.4 encapsulated) into an array.

    Returns an array shaped ``(rows, columns)`` for one sample per pixel or
    ``(rows, columns, samples)`` for colour (in RGB, see the module docstring), with the
    dtype pydicom gives (``uint8``/``int16``/… by Bits Allocated and Pixel Representation).

    Raises :class:`CorruptFrame` if no installed decoder can decode it, the transfer syntax has
    no decoder, or a native frame is not exactly one frame long.
    """
    if description.is_native:
        expected = description.native_frame_length
        if len(frame) not in (expected, expected + expected % 2):
            raise CorruptFrame(f"native frame is {len(frame)} bytes, {expected} expected")
        source = frame[:expected]
    else:
        if not frame:
            raise CorruptFrame("empty compressed frame")
        source = encapsulate([frame], has_bot=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a codec's note about a mismatched header
            decoder = get_decoder(description.transfer_syntax_uid)
            array, _properties = decoder.as_array(source, index=0, **_options(description))
    except Exception as exc:  # each codec raises its own types on bad input
        raise CorruptFrame(f"{type(exc).__name__}: {exc}") from exc
    return array


def _options(description: PixelDescription) -> dict[str, Any]:
    options: dict[str, Any] = {
        "rows": description.rows,
        "columns": description.columns,
        "samples_per_pixel": description.samples_per_pixel,
        "bits_allocated": description.bits_allocated,
        "bits_stored": description.bits_stored,
        "pixel_representation": description.pixel_representation,
        "photometric_interpretation": description.photometric_interpretation,
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    if description.samples_per_pixel > 1:
        options["planar_configuration"] = description.planar_configuration
    return options


def decode_object_frame(data: bytes, number: int) -> np.ndarray:
    """Decode frame ``number`` (1-based) of a whole stored Part-10 object.

    For objects whose frames cannot be read by byte range (``StoredInstance.frame_ranges`` is
    None: Explicit VR Big Endian, Deflated Explicit VR Little Endian, sub-sampled native
    ``YBR_FULL_422``, bit-packed data): the object is parsed and decoded as pydicom's
    ``pixel_array`` does, with the same shapes and colour space as :func:`decode_frame`.

    Raises :class:`NotAnImage` without Pixel Data, :class:`CorruptFrame` if the object or the
    frame cannot be decoded, and :class:`IndexError` for a frame number outside the object.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data))
            if "PixelData" not in dataset:
                raise NotAnImage("the instance has no Pixel Data")
            frames = _frame_count(dataset)
            if not 1 <= number <= frames:
                raise IndexError(f"frame {number} is not in this instance ({frames} frames)")
            array: np.ndarray = dataset.pixel_array
    except (NotAnImage, IndexError):
        raise
    except Exception as exc:
        raise CorruptFrame(f"{type(exc).__name__}: {exc}") from exc
    return array[number - 1] if frames > 1 else array


def _frame_count(dataset: pydicom.Dataset) -> int:
    try:
        return max(int(dataset.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        del dataset.NumberOfFrames  # an unreadable value: treated as absent (one frame)
        return 1
