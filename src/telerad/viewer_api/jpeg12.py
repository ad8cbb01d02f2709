"""A pydicom decoding plugin for 12-bit JPEG Extended (Process 4, 1.2.840.10008.1.2.4.51).

PS3.5 §A.4.1 allows 12-bit samples in JPEG Extended, and older CT and MR archives hold such
objects. pydicom's own plugins for this transfer syntax cannot decode them here: Pillow and
PyPI's python-gdcm are built with 8-bit libjpeg only, and pylibjpeg-libjpeg is GPL-3.0.
imagecodecs (BSD-3-Clause) bundles libjpeg-turbo 3, which decodes 8- and 12-bit precision in one
library; this module hands it the 12-bit frames, following pydicom's plugin interface
(https://pydicom.github.io/pydicom/stable/guides/decoding/decoder_plugins.html): the plugin is
added last to ``JPEGExtended12BitDecoder``, so pydicom tries its own plugins first and this one
when they fail. Checked against dcmtk's ``dcmdjpeg`` (IJG 12-bit), an independent decoder:
identical pixels for pydicom's two 12-bit test files (``tests/viewer_api/test_pixels.py``).

Output is what pydicom's plugins return for JPEG: the samples as stored, little endian, in the
container Bits Allocated gives; monochrome only (a 12-bit colour JPEG is refused, not guessed).
"""

from __future__ import annotations

import contextlib
from typing import Any

import imagecodecs
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.uid import UID, JPEGExtended12Bit

__all__ = ["DECODER_DEPENDENCIES", "LABEL", "is_available", "register"]

LABEL = "telerad-imagecodecs"
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("numpy", "imagecodecs>=2024.1.1")}


def is_available(uid: UID) -> bool:
    """Whether this plugin can decode ``uid`` here (imagecodecs with libjpeg-turbo 3)."""
    if uid != JPEGExtended12Bit:
        return False
    versions: dict[str, Any] = imagecodecs.version(dict)
    turbo = str(versions.get("libjpeg_turbo", "0")).split(".", 1)[0]
    return turbo.isdigit() and int(turbo) >= 3


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's samples as stored (pydicom's plugin contract)."""
    if runner.samples_per_pixel != 1:
        raise NotImplementedError("only monochrome 12-bit JPEG Extended is decoded")
    array = imagecodecs.jpeg8_decode(src)
    if array.dtype.itemsize * 8 != runner.bits_allocated:
        raise ValueError(
            f"the JPEG holds {array.dtype.itemsize * 8}-bit samples, "
            f"Bits Allocated is {runner.bits_allocated}"
        )
    if array.shape[:2] != (runner.rows, runner.columns):
        raise ValueError(f"the JPEG is {array.shape[1]}x{array.shape[0]}, not as described")
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder (once; later calls do nothing)."""
    with contextlib.suppress(ValueError):  # already added
        get_decoder(JPEGExtended12Bit).add_plugin(LABEL, (__name__, "_decode_frame"))
