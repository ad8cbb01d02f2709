"""Header parsing, frame location and DICOM JSON, on pydicom's bundled files and ours."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames

from telerad.storage.errors import InvalidInstance
from telerad.storage.parsing import BASE_URI_MARKER, parse_instance
from tests.factories import encoded_name_instance, one_instance

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
BUNDLED = sorted(p.name for p in TEST_FILES.glob("*.dcm"))


def _bundled(name: str) -> str:
    return str(TEST_FILES / name)


def _reference_frames(path: str) -> list[bytes] | None:
    """Frames as pydicom splits them, or None when pydicom cannot (then we only need to
    not crash)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pydicom.dcmread(path)
            count = int(reference.get("NumberOfFrames") or 1)
            if reference.file_meta.TransferSyntaxUID.is_encapsulated:
                return list(generate_frames(reference.PixelData, number_of_frames=count))
            size = len(reference.PixelData) // count
            return [reference.PixelData[i * size : (i + 1) * size] for i in range(count)]
    except Exception:
        return None


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_file_parses_or_is_refused_precisely(name: str) -> None:
    """Every file of pydicom's test data: refused with InvalidInstance, or parsed with frame
    ranges that give back exactly pydicom's frames."""
    path = _bundled(name)
    raw = Path(path).read_bytes()
    try:
        parsed = parse_instance(raw)
    except InvalidInstance:
        return
    if parsed.frame_ranges is None:
        return
    frames = [b"".join(raw[o : o + n] for o, n in frame) for frame in parsed.frame_ranges]
    expected = _reference_frames(path)
    if expected is not None:
        assert [f.rstrip(b"\0") for f in frames] == [f.rstrip(b"\0") for f in expected]


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"]
)
def test_frames_are_located_for_common_syntaxes(name: str) -> None:
    parsed = parse_instance(Path(_bundled(name)).read_bytes())
    assert parsed.frame_ranges is not None
    assert len(parsed.frame_ranges) == (parsed.number_of_frames or 1)


def test_metadata_is_dicom_json_with_bulk_data_uris() -> None:
    parsed = parse_instance(Path(_bundled("CT_small.dcm")).read_bytes())
    metadata = json.loads(parsed.metadata_json())
    assert metadata["0020000D"]["Value"] == [parsed.study_uid]
    pixel = metadata["7FE00010"]
    assert pixel["BulkDataURI"].startswith(BASE_URI_MARKER + "/studies/" + parsed.study_uid)
    assert "InlineBinary" not in pixel
    rebuilt = pydicom.Dataset.from_json(
        {k: v for k, v in metadata.items() if "BulkDataURI" not in v}
    )
    assert rebuilt.SOPInstanceUID == parsed.sop_instance_uid


@pytest.mark.parametrize("charset", ["GB18030", "GBK", "ISO_IR 192"])
def test_chinese_names_decode_into_component_groups(charset: str) -> None:
    parsed = parse_instance(encoded_name_instance(charset, "Wang^XiaoDong=王^小东", "P-CN"))
    assert parsed.attributes["PatientName"] == "Wang^XiaoDong=王^小东"
    assert parsed.attributes["PatientNameAlphabetic"] == "Wang^XiaoDong"
    assert parsed.attributes["PatientNameIdeographic"] == "王^小东"
    name_json = json.loads(parsed.metadata_json())["00100010"]["Value"][0]
    assert name_json == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}


def test_empty_person_name_components_are_dropped() -> None:
    parsed = parse_instance(one_instance(PatientName="Doe^John^^^"))
    assert parsed.attributes["PatientName"] == "Doe^John"
