"""Tests for telerad.demo: the synthetic CT study is valid DICOM and looks like a CT."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from telerad.demo import ct_study_bytes, generate_ct_study, write_ct_study

SLICES = 24


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_study(tmp_path_factory.mktemp("ct"), SLICES, rows=256, columns=256, seed=7)


@pytest.fixture(scope="module")
def study(study_files: list[Path]) -> list[pydicom.FileDataset]:
    return [pydicom.dcmread(path) for path in study_files]


def _hu(ds: pydicom.Dataset) -> NDArray[np.float64]:
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def test_files_are_named_by_instance_number(study_files: list[Path]) -> None:
    assert [p.name for p in study_files] == [f"{n:04d}.dcm" for n in range(1, SLICES + 1)]


def test_files_reread_as_ct_image_storage(study: list[pydicom.FileDataset]) -> None:
    for ds in study:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CTImageStorage
        assert ds.Modality == "CT"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.Manufacturer == "telerad demo"
        assert str(ds.PatientName) == "Demo^Phantom"


def test_pixel_encoding_is_consistent(study: list[pydicom.FileDataset]) -> None:
    ds = study[0]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    assert ds.pixel_array.dtype == np.uint16
    assert ds.pixel_array.shape == (256, 256)
    assert int(ds.pixel_array.max()) < 2**12


def test_hounsfield_units_span_air_to_bone(study: list[pydicom.FileDataset]) -> None:
    hu = _hu(study[SLICES // 2])
    corner = hu[:16, :16]
    assert abs(corner.mean() - (-1000)) < 5
    assert hu.max() >= 700
    fraction_lung = np.mean((hu > -900) & (hu < -750))
    fraction_soft_tissue = np.mean((hu > 0) & (hu < 90))
    assert fraction_lung > 0.05
    assert fraction_soft_tissue > 0.15


def test_positions_increase_along_z(study: list[pydicom.FileDataset]) -> None:
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in study])
    steps = np.diff(z)
    assert np.all(steps > 0)
    assert np.allclose(steps, float(study[0].SliceThickness))
    assert [ds.InstanceNumber for ds in study] == list(range(1, SLICES + 1))
    assert [float(ds.SliceLocation) for ds in study] == pytest.approx(list(z))
    assert all(list(ds.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0] for ds in study)


def test_uids_are_valid_and_unique(study: list[pydicom.FileDataset]) -> None:
    sop_uids = {ds.SOPInstanceUID for ds in study}
    assert len(sop_uids) == SLICES
    series = {(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in study}
    assert len(series) == 1
    shared = set(series.pop())
    assert len(shared) == 3
    assert not shared & sop_uids
    assert all(UID(uid).is_valid for uid in sop_uids | shared)


def test_same_seed_gives_same_uids_and_pixels() -> None:
    first = list(generate_ct_study(3, rows=64, columns=64, seed=3))
    again = list(generate_ct_study(3, rows=64, columns=64, seed=3))
    other = list(generate_ct_study(3, rows=64, columns=64, seed=4))
    assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in again]
    assert first[0].StudyInstanceUID == again[0].StudyInstanceUID
    assert all(a.PixelData == b.PixelData for a, b in zip(first, again, strict=True))
    assert first[0].StudyInstanceUID != other[0].StudyInstanceUID
    assert not {ds.SOPInstanceUID for ds in first} & {ds.SOPInstanceUID for ds in other}
    assert first[0].PixelData != other[0].PixelData


def test_given_study_uid_is_used() -> None:
    ds = next(generate_ct_study(1, rows=32, columns=32, study_uid="1.2.3.4"))
    assert ds.StudyInstanceUID == "1.2.3.4"
    assert ds.SeriesInstanceUID != "1.2.3.4"


def test_default_matrix_is_512(tmp_path: Path) -> None:
    ds = next(generate_ct_study(1))
    assert (ds.Rows, ds.Columns) == (512, 512)
    assert len(ds.PixelData) == 512 * 512 * 2


def test_study_bytes_are_part10(study: list[pydicom.FileDataset]) -> None:
    encoded = ct_study_bytes(SLICES, rows=256, columns=256, seed=7)
    assert len(encoded) == SLICES
    assert all(blob[128:132] == b"DICM" for blob in encoded)
    reread = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(blob)) for blob in encoded]
    assert [ds.SOPInstanceUID for ds in reread] == [ds.SOPInstanceUID for ds in study]


@pytest.mark.parametrize(("slices", "rows", "columns"), [(0, 8, 8), (1, 0, 8), (1, 8, -1)])
def test_rejects_empty_geometry(slices: int, rows: int, columns: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        next(generate_ct_study(slices, rows=rows, columns=columns))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_dicom_validator_reports_no_errors(tmp_path: Path) -> None:
    """dciodvfy (dicom3tools) checks the CT Image IOD; without it dcmtk checks the encoding."""
    (path,) = write_ct_study(tmp_path, 1)
    if shutil.which("dciodvfy"):
        result = _run("dciodvfy", str(path))
        report = result.stdout + result.stderr
        assert result.returncode == 0, report
        assert "CTImage" in report
        assert "Error" not in report
        assert "Warning" not in report
    elif shutil.which("dcmdump"):
        result = _run("dcmdump", "--log-level", "warn", "+P", "SOPClassUID", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert "=CTImageStorage" in result.stdout
        assert _run("dcmftest", str(path)).stdout.startswith("yes:")
    else:
        pytest.skip("neither dicom3tools' dciodvfy nor dcmtk's dcmdump is installed")


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk is not installed")
def test_dcmtk_parses_every_element(study_files: list[Path]) -> None:
    result = _run("dcmdump", "--log-level", "warn", str(study_files[0]))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "(0028,0101) US 12" in result.stdout
    assert "(0018,0060) DS [120]" in result.stdout
    assert "(0028,1052) DS [-1024]" in result.stdout
    assert "(7fe0,0010) OW" in result.stdout
