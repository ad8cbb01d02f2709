"""Lossless wire forms: JPEG-LS only when decoding gives back the very same pixel bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLSLossless

from telerad.demo import ct_study_bytes
from telerad.dicom_gateway.wire import transcode_lossless


def test_ct_is_transcoded_smaller_and_bit_identical() -> None:
    data = ct_study_bytes(1)[0]
    encoded = transcode_lossless(data, "1.2.840.10008.1.2.1")
    assert encoded is not None
    assert len(encoded) < 0.6 * len(data)
    before, after = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(encoded))
    assert after.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert after.pixel_array.tobytes() == bytes(before.PixelData)
    for element in before:
        if element.tag != 0x7FE00010:
            assert after[element.tag].value == element.value, element.keyword
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID


def test_compressed_and_colour_instances_travel_as_they_are() -> None:
    jpeg = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    assert transcode_lossless(jpeg, "1.2.840.10008.1.2.4.91") is None
    rgb = Path(get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm")).read_bytes()
    assert transcode_lossless(rgb, "1.2.840.10008.1.2.1") is None
    assert transcode_lossless(b"not dicom", "1.2.840.10008.1.2.1") is None
