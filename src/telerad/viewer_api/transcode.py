"""Re-encode stored instances and frames in Explicit VR Little Endian (PS3.5 §A.2).

WADO-RS sends this syntax when a client asks for it or gives no transfer-syntax parameter
(PS3.18 §8.7.3). Encapsulated pixel data is decoded (colour comes out as RGB, see
:mod:`telerad.viewer_api.pixels`; Photometric Interpretation is updated to match), Implicit VR
and Deflated data sets are re-encoded, and Explicit VR Big Endian values are byte-swapped. The
SOP Instance UID is kept: a lossless re-encoding is the same instance (PS3.5 §8.1.3 applies
only to lossy compression; a lossy stored instance decoded on request is flagged by its
Lossy Image Compression (0028,2110) attribute, which is kept).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from telerad.viewer_api.negotiation import EXPLICIT_VR_LITTLE_ENDIAN
from telerad.viewer_api.pixels import CorruptFrame

#: Value representations whose bytes are words of this size (swapped from big endian).
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def to_explicit_little_endian(data: bytes) -> bytes:
    """The Part-10 object ``data`` re-encoded in Explicit VR Little Endian.

    Raises :class:`CorruptFrame` when the pixel data (or the data set) cannot be decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data))
            syntax = UID(dataset.file_meta.TransferSyntaxUID)
            if not syntax.is_little_endian:
                _swap_words(dataset)
            if "PixelData" in dataset and (syntax.is_encapsulated or not syntax.is_little_endian):
                _decode_pixels(dataset, syntax)
            dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
            buffer = io.BytesIO()
            dcmwrite(
                buffer, dataset, implicit_vr=False, little_endian=True, enforce_file_format=True
            )
    except Exception as exc:  # codecs and the parser raise many types on bad input
        raise CorruptFrame(f"cannot be decoded: {type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


def _decode_pixels(dataset: Dataset, syntax: UID) -> None:
    """Replace Pixel Data by its native little-endian encoding (PS3.5 §8.1.1)."""
    pixels, properties = get_decoder(syntax).as_array(dataset)
    bits = int(dataset.BitsAllocated)
    value = pack_bits(pixels) if bits == 1 else native_bytes(pixels)
    dataset.PixelData = value
    dataset["PixelData"].VR = "OB" if bits <= 8 else "OW"
    dataset["PixelData"].is_undefined_length = False
    photometric = properties.get("photometric_interpretation")
    if photometric:
        dataset.PhotometricInterpretation = str(photometric)
    if int(dataset.get("SamplesPerPixel") or 1) > 1:
        dataset.PlanarConfiguration = 0


def _swap_words(dataset: Dataset) -> None:
    """Swap word-valued binary elements read from Explicit VR Big Endian (not Pixel Data,
    which is decoded instead)."""
    for element in dataset.iterall():
        size = _WORD_SIZES.get(str(element.VR))
        if size and element.tag != 0x7FE00010 and isinstance(element.value, bytes):
            words = np.frombuffer(element.value, dtype=f">u{size}")
            element.value = words.astype(f"<u{size}").tobytes()


def native_bytes(array: np.ndarray) -> bytes:
    """Little-endian bytes of decoded pixels (colour interleaved, Planar Configuration 0)."""
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
