"""Synthetic CT studies for demonstrations, tests and benchmarks.

`generate_ct_study` yields a chest phantom as CT Image Storage instances
(PS3.3 A.3, SOP Class 1.2.840.10008.5.1.4.1.1.2): a body ellipse of fat and
soft tissue, ribs, sternum and a vertebral column with discs, two lungs, the
heart, the descending aorta, the liver below the right lung, a few lesions and
a curved patient table, with a little Gaussian noise. Values are painted in
Hounsfield units and stored as 12-bit unsigned integers with RescaleIntercept
-1024, so ``HU = stored - 1024``.

The anatomy is laid out on a fixed 400 mm field of view and a scan length of
about 300 mm, whatever the matrix size and slice count, so any number of
slices shows the whole chest. UIDs and pixel noise are derived from ``seed``;
the study date and time are those of the call, as a scanner's would be.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, TypedDict, Unpack

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["StudyOptions", "ct_study_bytes", "generate_ct_study", "write_ct_study"]

Image = NDArray[np.float32]
Mask = NDArray[np.bool_]

RESCALE_INTERCEPT: Final = -1024
BITS_STORED: Final = 12
AIR_HU: Final = -1000.0
FIELD_OF_VIEW_MM: Final = 400.0
SCAN_LENGTH_MM: Final = 300.0
NOISE_SD_HU: Final = 10.0
_UID_ROOT: Final = "telerad-demo"


class StudyOptions(TypedDict, total=False):
    """Keyword options of `generate_ct_study`, forwarded by the writers."""

    rows: int
    columns: int
    patient_name: str
    patient_id: str
    study_uid: str | None
    seed: int
    accession_number: str
    modality_ae: str


@dataclass(frozen=True)
class _Grid:
    """Pixel centre coordinates in mm, shaped to broadcast to (rows, columns)."""

    x: Image
    y: Image
    cos_rib: Image
    sin_rib: Image


@dataclass(frozen=True)
class _Study:
    """What every instance of one generated series shares."""

    patient_name: str
    patient_id: str
    patient_sex: str
    accession_number: str
    station: str
    study_uid: str
    series_uid: str
    frame_uid: str
    when: datetime
    slices: int
    rows: int
    columns: int
    pixel_spacing: float
    slice_spacing: float


@dataclass(frozen=True)
class _Lesion:
    """A sphere of uniform density; ``t`` is its position along the scan (0-1)."""

    x: float
    y: float
    t: float
    radius: float
    hu: float


_LESIONS: Final = (
    _Lesion(x=-75.0, y=-10.0, t=0.40, radius=9.0, hu=35.0),  # right lung nodule
    _Lesion(x=70.0, y=20.0, t=0.55, radius=5.0, hu=25.0),  # left lung nodule
    _Lesion(x=-70.0, y=20.0, t=0.95, radius=12.0, hu=5.0),  # hypodense liver lesion
    _Lesion(x=4.0, y=58.0, t=0.50, radius=6.0, hu=1200.0),  # sclerotic vertebral lesion
)


# --- geometry ---------------------------------------------------------------


def _make_grid(rows: int, columns: int, spacing: float) -> _Grid:
    """Pixel centres in patient LPS mm, the image centred on the scanner axis."""
    x = ((np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * spacing)[None, :]
    y = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * spacing)[:, None]
    theta = 12 * np.arctan2(y, x)
    return _Grid(x=x, y=y, cos_rib=np.cos(theta), sin_rib=np.sin(theta))


def _ellipse(grid: _Grid, cx: float, cy: float, a: float, b: float) -> Mask:
    """Pixels inside the ellipse centred at (cx, cy) with semi-axes a (x), b (y)."""
    if a <= 0 or b <= 0:
        return np.zeros(np.broadcast_shapes(grid.x.shape, grid.y.shape), dtype=bool)
    inside: Mask = ((grid.x - cx) / a) ** 2 + ((grid.y - cy) / b) ** 2 <= 1.0
    return inside


def _bump(t: float, start: float, end: float) -> float:
    """A half-sine profile: 0 outside [start, end], 1 at its middle."""
    if not start < t < end:
        return 0.0
    return math.sin(math.pi * (t - start) / (end - start))


def _paint(image: Image, mask: Mask, hu: float) -> None:
    np.copyto(image, np.float32(hu), where=mask)


# --- anatomy, painted back to front -----------------------------------------


def _paint_table(image: Image, grid: _Grid) -> None:
    """A curved carbon-fibre table under the supine patient."""
    top = grid.y + 0.0006 * grid.x**2 - 128.0
    within = np.abs(grid.x) < 225.0
    _paint(image, (top >= 0.0) & (top < 12.0) & within, -400.0)
    _paint(image, (top >= 0.0) & (top < 2.0) & within, 300.0)


def _paint_body(image: Image, grid: _Grid, t: float) -> tuple[float, float]:
    """Subcutaneous fat and muscle; returns the body's semi-axes."""
    a, b = 160.0 + 12.0 * _bump(t, -0.2, 1.2), 112.0 + 6.0 * _bump(t, -0.2, 1.2)
    _paint(image, _ellipse(grid, 0.0, 0.0, a, b), -100.0)
    _paint(image, _ellipse(grid, 0.0, 0.0, a - 12.0, b - 10.0), 45.0)
    return a, b


def _paint_ribs(image: Image, grid: _Grid, z: float, a: float, b: float) -> None:
    """Rib segments on a ring inside the chest wall; they drift with z as ribs slope."""
    ring = _ellipse(grid, 0.0, 0.0, a - 18.0, b - 18.0)
    ring &= ~_ellipse(grid, 0.0, 0.0, a - 26.0, b - 26.0)
    phase = 2.0 * math.pi * z / 30.0
    ring &= grid.cos_rib * math.cos(phase) - grid.sin_rib * math.sin(phase) > 0.2
    _paint(image, ring, 750.0)


def _paint_thorax(image: Image, grid: _Grid, t: float, b: float) -> None:
    """Liver, lungs, heart, aorta and sternum; lungs above, liver below the diaphragm."""
    liver = min(max((t - 0.6) / 0.25, 0.0), 1.0)
    _paint(image, _ellipse(grid, -45.0, 5.0, 95.0 * liver, 75.0 * liver), 60.0)
    lung = _bump(t, 0.02, 0.92) ** 0.5
    _paint(image, _ellipse(grid, -72.0, 5.0, 52.0 * lung, 78.0 * lung), -850.0)
    _paint(image, _ellipse(grid, 72.0, 5.0, 50.0 * lung, 76.0 * lung), -850.0)
    heart = _bump(t, 0.35, 0.8)
    _paint(image, _ellipse(grid, 18.0, -20.0, 48.0 * heart, 40.0 * heart), 40.0)
    _paint(image, _ellipse(grid, 25.0, 40.0, 12.0, 12.0), 45.0)
    sternum = 1.0 if 0.15 < t < 0.7 else 0.0
    _paint(image, _ellipse(grid, 0.0, 22.0 - b, 16.0 * sternum, 7.0 * sternum), 600.0)


def _paint_spine(image: Image, grid: _Grid, z: float) -> None:
    """A vertebra every 25 mm, with a disc between neighbours, and the spinal canal."""
    in_disc = (z % 25.0) < 5.0
    _paint(image, _ellipse(grid, 0.0, 60.0, 19.0, 16.0), 80.0 if in_disc else 950.0)
    if not in_disc:
        _paint(image, _ellipse(grid, 0.0, 60.0, 16.5, 13.5), 250.0)
    _paint(image, _ellipse(grid, 0.0, 88.0, 15.0, 14.0), 700.0)
    _paint(image, _ellipse(grid, 0.0, 88.0, 8.0, 7.0), 15.0)


def _paint_lesions(image: Image, grid: _Grid, z: float, length: float) -> None:
    for lesion in _LESIONS:
        dz = z - lesion.t * length
        if abs(dz) < lesion.radius:
            r = math.sqrt(lesion.radius**2 - dz**2)
            _paint(image, _ellipse(grid, lesion.x, lesion.y, r, r), lesion.hu)


def _phantom_slice(grid: _Grid, t: float, z: float, length: float) -> Image:
    """Noise-free Hounsfield units of the slice at scan fraction t, z mm from the start."""
    shape = np.broadcast_shapes(grid.x.shape, grid.y.shape)
    image: Image = np.full(shape, AIR_HU, dtype=np.float32)
    _paint_table(image, grid)
    a, b = _paint_body(image, grid, t)
    _paint_ribs(image, grid, z, a, b)
    _paint_thorax(image, grid, t, b)
    _paint_spine(image, grid, z)
    _paint_lesions(image, grid, z, length)
    return image


def _to_stored(hu: Image, rng: np.random.Generator) -> NDArray[np.uint16]:
    """Add noise and map HU to 12-bit stored values (PS3.3 C.11.1.1.2 rescale)."""
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(NOISE_SD_HU)
    stored = np.rint(hu - RESCALE_INTERCEPT)
    np.clip(stored, 0, 2**BITS_STORED - 1, out=stored)
    return stored.astype(np.uint16)


# --- DICOM header -----------------------------------------------------------


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[_UID_ROOT, *map(str, parts)]))


def _ds(value: float) -> str:
    """A decimal string short enough for DS (16 characters)."""
    return f"{value:.6g}"


def _study(
    *,
    slices: int,
    rows: int,
    columns: int,
    patient_name: str,
    patient_id: str,
    study_uid: str | None,
    seed: int,
    accession_number: str,
    modality_ae: str,
) -> _Study:
    study_uid = study_uid or _uid("study", seed, patient_id, accession_number)
    return _Study(
        patient_name=patient_name,
        patient_id=patient_id,
        patient_sex="FM"[seed % 2],
        accession_number=accession_number,
        station=modality_ae,
        study_uid=study_uid,
        series_uid=_uid("series", seed, study_uid),
        frame_uid=_uid("frame", seed, study_uid),
        when=datetime.now().replace(microsecond=0),
        slices=slices,
        rows=rows,
        columns=columns,
        pixel_spacing=FIELD_OF_VIEW_MM / max(rows, columns),
        slice_spacing=min(max(SCAN_LENGTH_MM / slices, 0.625), 5.0),
    )


def _file_meta(sop_uid: str, station: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = station
    return meta


def _set_patient_study(ds: Dataset, study: _Study) -> None:
    """Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1)."""
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19640312"
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.when.strftime("%Y%m%d")
    ds.StudyTime = study.when.strftime("%H%M%S")
    ds.ReferringPhysicianName = "Referrer^Demo"
    ds.StudyID = "1"
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"


def _set_series_equipment(ds: Dataset, study: _Study) -> None:
    """General Series, Frame of Reference and General Equipment (C.7.3.1, C.7.4.1, C.7.5.1)."""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = study.series_uid
    ds.SeriesNumber = 2
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = "AXIAL 5MM STANDARD" if study.slice_spacing >= 5 else "AXIAL STANDARD"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "telerad demo"
    ds.ManufacturerModelName = "Phantom"
    ds.StationName = study.station[:16]
    ds.SoftwareVersions = "1"


def _set_plane(ds: Dataset, study: _Study, index: int) -> None:
    """Image Plane module (C.7.6.2): z grows by one slice spacing per instance."""
    z = index * study.slice_spacing
    ds.PixelSpacing = [_ds(study.pixel_spacing)] * 2
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [
        _ds(-(study.columns - 1) / 2 * study.pixel_spacing),
        _ds(-(study.rows - 1) / 2 * study.pixel_spacing),
        _ds(z),
    ]
    ds.SliceThickness = _ds(study.slice_spacing)
    ds.SliceLocation = _ds(z)


def _set_ct_image(ds: Dataset, study: _Study, index: int) -> None:
    """General Image, Image Pixel, CT Image and VOI LUT modules (C.7.6.1, C.8.2.1, C.11.2)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = ds.StudyTime
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = study.rows
    ds.Columns = study.columns
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.XRayTubeCurrent = 200
    ds.ConvolutionKernel = "STANDARD"
    ds.ReconstructionDiameter = _ds(FIELD_OF_VIEW_MM)
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]


def _instance(study: _Study, index: int, pixels: NDArray[np.uint16]) -> Dataset:
    ds = Dataset()
    sop_uid = _uid("instance", study.series_uid, index)
    ds.file_meta = _file_meta(sop_uid, study.station)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = study.when.strftime("%Y%m%d")
    ds.InstanceCreationTime = study.when.strftime("%H%M%S")
    _set_patient_study(ds, study)
    _set_series_equipment(ds, study)
    _set_plane(ds, study, index)
    _set_ct_image(ds, study, index)
    ds.add_new(0x7FE00010, "OW", pixels.astype("<u2", copy=False).tobytes())
    return ds


# --- public API -------------------------------------------------------------


def generate_ct_study(
    slices: int = 100,
    *,
    rows: int = 512,
    columns: int = 512,
    patient_name: str = "Demo^Phantom",
    patient_id: str = "DEMO0001",
    study_uid: str | None = None,
    seed: int = 0,
    accession_number: str = "DEMO1",
    modality_ae: str = "CT_SCANNER",
) -> Iterator[Dataset]:
    """Yield a synthetic axial chest CT series, one CT Image Storage instance per slice.

    Parameters
    ----------
    slices
        Number of axial slices; the slice spacing is chosen so that the series
        covers about 300 mm (between 0.625 and 5 mm per slice).
    rows, columns
        Matrix size; the field of view is 400 mm across the larger side.
    patient_name, patient_id, accession_number
        Identifiers written into the Patient and General Study modules.
    study_uid
        Study Instance UID to use; derived from ``seed``, ``patient_id`` and
        ``accession_number`` when omitted.
    seed
        Seeds the pixel noise and the UIDs: equal arguments give equal UIDs
        and pixel data.
    modality_ae
        The scanner's AE title, written as Source Application Entity Title
        (file meta) and Station Name.

    Yields
    ------
    pydicom.Dataset
        CT Image IOD (PS3.3 A.3) instances with explicit VR little endian file
        meta, in increasing ``InstanceNumber`` and ``ImagePositionPatient`` z.

    Raises
    ------
    ValueError
        If ``slices``, ``rows`` or ``columns`` is not positive.
    """
    if min(slices, rows, columns) < 1:
        raise ValueError("slices, rows and columns must be positive")
    study = _study(
        slices=slices,
        rows=rows,
        columns=columns,
        patient_name=patient_name,
        patient_id=patient_id,
        study_uid=study_uid,
        seed=seed,
        accession_number=accession_number,
        modality_ae=modality_ae,
    )
    grid = _make_grid(rows, columns, study.pixel_spacing)
    rng = np.random.default_rng(seed)
    length = slices * study.slice_spacing
    for index in range(slices):
        z = index * study.slice_spacing
        hu = _phantom_slice(grid, (index + 0.5) / slices, z, length)
        yield _instance(study, index, _to_stored(hu, rng))


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_ct_study(out_dir: Path, slices: int = 100, **kwargs: Unpack[StudyOptions]) -> list[Path]:
    """Write `generate_ct_study` as DICOM Part-10 files (PS3.10) into ``out_dir``.

    Files are named by instance number, zero-padded (``0001.dcm``, ...), so
    that they sort in slice order. ``out_dir`` is created if needed.

    Returns
    -------
    list of pathlib.Path
        The files written, in instance order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(slices)))
    paths = []
    for ds in generate_ct_study(slices, **kwargs):
        path = out_dir / f"{ds.InstanceNumber:0{width}d}.dcm"
        path.write_bytes(_part10(ds))
        paths.append(path)
    return paths


def ct_study_bytes(slices: int = 100, **kwargs: Unpack[StudyOptions]) -> list[bytes]:
    """Return `generate_ct_study` as DICOM Part-10 encoded instances (PS3.10), in order."""
    return [_part10(ds) for ds in generate_ct_study(slices, **kwargs)]
