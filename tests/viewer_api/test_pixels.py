"""Decoding stored frames: every pydicom test file with pixel data, stored through ingest and read
back by byte range, decodes to pydicom's own ``pixel_array`` (or is known undecodable here)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from telerad.storage import (
    Archive,
    IngestSource,
    InvalidInstance,
    Scope,
    StoredInstance,
    create_catalog_engine,
    find_instance,
    migrate,
    open_object_store,
    read_frame,
)
from telerad.viewer_api.pixels import (
    CorruptFrame,
    NotAnImage,
    PixelDescription,
    decode_frame,
    decode_object_frame,
)
from tests.factories import ct_datasets, new_uid, part10

#: Only the files shipped inside pydicom (never the ones it would download).
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SOURCE = IngestSource(site_id=None, issuer="TEST", label="test")
#: Files no installed codec decodes (pydicom's pixel_array fails on them too), and why.
KNOWN_UNDECODABLE = {
    # A JPEG 2000 codestream corrupted on purpose (pydicom's own test of a bad stream).
    "JPEG2000-embedded-sequence-delimiter.dcm": "corrupt codestream",
}

#: Files whose Number of Frames is no valid IS: the catalog keeps one frame, pydicom infers more.
UNREADABLE_FRAME_COUNT = {"badVR.dcm"}


def _read(path: Path) -> pydicom.Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path)
    except Exception:
        return None


def _pixel_files() -> list[Path]:
    found = []
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file() or path.suffix not in ("", ".dcm"):
            continue
        ds = _read(path)
        if ds is not None and "PixelData" in ds and "TransferSyntaxUID" in ds.file_meta:
            found.append(path)
    return found


PIXEL_FILES = _pixel_files()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """A SQLite archive per file (decoding does not depend on the catalog kind; several test
    files share SOP Instance UIDs, so each gets its own)."""
    directory = tmp_path
    engine = create_catalog_engine(f"sqlite:///{directory / 'catalog.db'}")
    migrate(engine)
    yield Archive(engine, open_object_store("filesystem", root=directory / "objects"))
    engine.dispose()


def _store(archive: Archive, raw: bytes) -> StoredInstance:
    archive.ingest_instance(raw, SOURCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    with archive.sessions() as session:
        return find_instance(
            session, Scope(None), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )


def _reference_frames(path: Path) -> list[np.ndarray] | None:
    """pydicom's pixel_array, frame by frame (None if pydicom cannot decode the file)."""
    ds = _read(path)
    assert ds is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                frames = int(ds.get("NumberOfFrames") or 1)
            except ValueError:  # badVR.dcm: '1A' is no IS value; treat it as absent
                del ds.NumberOfFrames
                frames = 1
            array = ds.pixel_array
    except Exception:
        return None
    frame_dims = 3 if int(ds.get("SamplesPerPixel") or 1) > 1 else 2
    return list(array) if frames > 1 or array.ndim > frame_dims else [array]


TWELVE_BIT_JPEG = ["JPGExtended.dcm", "JPEG-lossy.dcm"]


@pytest.mark.skipif(shutil.which("dcmdjpeg") is None, reason="dcmtk's dcmdjpeg not installed")
@pytest.mark.parametrize("name", TWELVE_BIT_JPEG)
def test_twelve_bit_jpeg_extended_decodes_as_dcmtk_does(
    archive: Archive, name: str, tmp_path: Path
) -> None:
    """12-bit JPEG Extended (telerad.viewer_api.jpeg12, imagecodecs) against an independent
    decoder: dcmtk's dcmdjpeg (IJG's 12-bit libjpeg) writes the same object uncompressed. The
    in-process reference of the other tests (pydicom's pixel_array) would use our own plugin."""
    path = TEST_FILES / name
    out = tmp_path / "decompressed.dcm"
    done = subprocess.run(["dcmdjpeg", str(path), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reference = pydicom.dcmread(out)
    assert reference.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    expected = np.frombuffer(reference.PixelData, dtype="<u2").reshape(
        reference.Rows, reference.Columns
    )
    instance = _store(archive, path.read_bytes())
    description = PixelDescription.from_metadata(
        json.loads(instance.metadata_json), instance.transfer_syntax_uid
    )
    assert (description.transfer_syntax_uid, description.bits_stored) == (
        "1.2.840.10008.1.2.4.51",
        12,
    )

    decoded = decode_frame(read_frame(archive.objects, instance, 1), description)

    assert decoded.dtype == np.uint16 and expected.max() > 255  # really 12-bit content
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize("path", PIXEL_FILES, ids=lambda p: p.name)
def test_stored_frames_decode_like_pydicom(archive: Archive, path: Path) -> None:
    raw = path.read_bytes()
    try:
        instance = _store(archive, raw)
    except InvalidInstance:
        pytest.skip("ingest refuses this file (tested in tests/storage/test_parsing.py)")
    reference = _reference_frames(path)
    metadata = json.loads(instance.metadata_json)
    description = PixelDescription.from_metadata(metadata, instance.transfer_syntax_uid)
    assert description.rows == _read(path).Rows  # type: ignore[union-attr]
    if path.name in KNOWN_UNDECODABLE:
        assert reference is None
        with pytest.raises(CorruptFrame):
            decode_frame(read_frame(archive.objects, instance, 1), description)
        return
    assert reference is not None, f"{path.name}: pydicom decodes it, add it to the table"
    if instance.frame_ranges is None:  # big endian, deflated, sub-sampled: whole object
        decoded = [decode_object_frame(raw, n) for n in range(1, len(reference) + 1)]
    else:
        if path.name in UNREADABLE_FRAME_COUNT:
            reference = reference[: instance.frame_count]
        assert instance.frame_count == len(reference)
        decoded = [
            decode_frame(read_frame(archive.objects, instance, n), description)
            for n in range(1, instance.frame_count + 1)
        ]
    for number, (ours, theirs) in enumerate(zip(decoded, reference, strict=True), 1):
        assert ours.shape == theirs.shape, f"frame {number}"
        assert ours.dtype == theirs.dtype, f"frame {number}"
        assert np.array_equal(ours, theirs), f"frame {number}"


def test_every_locally_present_transfer_syntax_is_covered() -> None:
    """The parametrised files above span the transfer syntaxes the issue names."""
    syntaxes = {str(_read(p).file_meta.TransferSyntaxUID) for p in PIXEL_FILES}  # type: ignore[union-attr]
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5",
                "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):  # fmt: skip
        assert uid in syntaxes


def _description(**changes: object) -> PixelDescription:
    values: dict[str, object] = {
        "rows": 4, "columns": 4, "samples_per_pixel": 1, "bits_allocated": 16,
        "bits_stored": 12, "pixel_representation": 0, "photometric_interpretation": "MONOCHROME2",
        "planar_configuration": 0, "number_of_frames": 1,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
    }  # fmt: skip
    values.update(changes)
    return PixelDescription(**values)  # type: ignore[arg-type]


def test_native_frame_of_wrong_length_is_corrupt() -> None:
    pixels = np.arange(16, dtype="<u2").reshape(4, 4)
    assert np.array_equal(decode_frame(pixels.tobytes(), _description()), pixels)
    for bad in (pixels.tobytes()[:-2], pixels.tobytes() + b"\0\0\0\0", b""):
        with pytest.raises(CorruptFrame):
            decode_frame(bad, _description())


COMPRESSED = [
    JPEGBaseline8Bit,
    RLELossless,
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
]


@pytest.mark.parametrize("syntax", COMPRESSED)
@pytest.mark.parametrize("stream", [b"", b"\xff\xd8\xff\xe0garbage", bytes(range(256)) * 4])
def test_garbage_compressed_stream_is_corrupt(syntax: str, stream: bytes) -> None:
    with pytest.raises(CorruptFrame):
        decode_frame(stream, _description(transfer_syntax_uid=syntax, bits_stored=16))


def test_unknown_transfer_syntax_is_corrupt() -> None:
    with pytest.raises(CorruptFrame):
        decode_frame(b"\0" * 32, _description(transfer_syntax_uid="1.2.3.4.5"))


def test_metadata_without_pixels_is_not_an_image() -> None:
    ds = ct_datasets(1)[0]
    ds.StudyInstanceUID = new_uid()
    metadata = json.loads(json.dumps(ds.to_json_dict()))
    description = PixelDescription.from_metadata(metadata, "1.2.840.10008.1.2.1")
    assert (description.rows, description.columns) == (ds.Rows, ds.Columns)
    del metadata["7FE00010"]
    with pytest.raises(NotAnImage):
        PixelDescription.from_metadata(metadata, "1.2.840.10008.1.2.1")
    metadata["7FE00010"] = {"vr": "OW"}
    del metadata["00280010"]
    with pytest.raises(NotAnImage):
        PixelDescription.from_metadata(metadata, "1.2.840.10008.1.2.1")
    del ds.PixelData
    with pytest.raises(NotAnImage):
        decode_object_frame(part10(ds), 1)
