"""WADO-RS rendered resources and thumbnails over HTTP, on SQLite and PostgreSQL.

Every image answer is decoded and compared with a reference computed here: pydicom's own
``pixel_array`` (a decode independent of the server's byte-range path) put through the PS3.3
Modality and VOI LUT formulas written out in numpy below.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels.processing import apply_color_lut
from pydicom.uid import generate_uid
from sqlalchemy import select

from telerad.storage import AuditEvent
from tests.conftest import Api
from tests.factories import (
    corrupt_rle_instance,
    ct_instances,
    encapsulated_pdf,
    multiframe_ct,
    multipart_related,
    new_uid,
)
from tests.viewer_api.test_pixels import KNOWN_UNDECODABLE, PIXEL_FILES, UNREADABLE_FRAME_COUNT

PRESET_WINDOWS = {"lung": (-600, 1500), "bone": (400, 1800), "brain": (40, 80), "liver": (30, 150)}


# --- helpers -----------------------------------------------------------------------------------


def stow(api: Api, instances: list[bytes]) -> Any:
    body, content_type = multipart_related(instances)
    return api.client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type, **api.headers("site")},
    )


def stored(api: Api, instances: list[bytes]) -> list[pydicom.Dataset]:
    response = stow(api, instances)
    assert response.status_code == 200, response.text
    return [read(raw) for raw in instances]


def read(raw: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(raw))


def url(ds: pydicom.Dataset, level: str = "instance", kind: str = "rendered") -> str:
    path = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance") or level.startswith("frames/"):
        path += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance" or level.startswith("frames/"):
        path += f"/instances/{ds.SOPInstanceUID}"
    if level.startswith("frames/"):
        path += f"/{level}"
    return f"{path}/{kind}"


def get(api: Api, path: str, who: str = "admin", **headers: str) -> Any:
    return api.client.get(path, headers={**api.headers(who), **headers})


def image(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))).astype(np.int64)


def first(value: Any) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def voi(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 / C.11.2.1.3: output range 0..255."""
    c, w = center, width
    if function == "SIGMOID":
        return 255 / (1 + np.exp(np.clip(-4 * (x - c) / w, -700, 700)))
    if function == "LINEAR_EXACT":
        ramp = ((x - c) / w + 0.5) * 255
        return np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, ramp))
    ramp = ((x - (c - 0.5)) / max(w - 1, 1e-9) + 0.5) * 255
    return np.where(x <= c - 0.5 - (w - 1) / 2, 0, np.where(x > c - 0.5 + (w - 1) / 2, 255, ramp))


def reference_grey(
    ds: pydicom.Dataset, pixels: np.ndarray, window: tuple[float, float, str] | None = None
) -> np.ndarray:
    """Display values of one monochrome frame: stored value, rescale, window, MONOCHROME1."""
    bits = int(ds.BitsStored)
    values = pixels.astype(np.int64) & ((1 << bits) - 1)
    if int(ds.PixelRepresentation) == 1:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    modality = values * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0
    )
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        window = (first(ds.WindowCenter), first(ds.WindowWidth), function)
    if window is None:
        lo, hi = float(modality.min()), float(modality.max())
        display = (modality - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(modality)
    else:
        display = voi(modality.astype(np.float64), *window)
    display = np.floor(np.clip(display, 0, 255) + 0.5)
    return 255 - display if ds.PhotometricInterpretation == "MONOCHROME1" else display


def reference_frames(ds: pydicom.Dataset) -> list[np.ndarray] | None:
    """pydicom's frames of ``ds`` (None when pydicom cannot decode them either)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            int(ds.get("NumberOfFrames") or 1)
    except ValueError:  # badVR.dcm: '1A' is no IS value; treated as absent, as the server does
        del ds.NumberOfFrames
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = ds.pixel_array
    except Exception:
        return None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    many = array.ndim > (3 if samples > 1 else 2)
    return list(array) if many else [array]


def reference_display(ds: pydicom.Dataset, frame: np.ndarray) -> np.ndarray:
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return (rgb >> (8 * rgb.dtype.itemsize - 8)).astype(np.int64)
    if frame.ndim == 3:
        return (frame.astype(np.int64) >> max(int(ds.BitsStored) - 8, 0)).clip(0, 255)
    return reference_grey(ds, frame)


def assert_close(got: np.ndarray, expected: np.ndarray, tolerance: int = 1) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tolerance


@pytest.fixture(scope="module")
def ct(shared_api: Api) -> list[pydicom.Dataset]:
    """A stored 5-slice CT series, 48 rows by 64 columns (non-square: aspect ratio shows)."""
    raws = [_ct_rows_columns(raw, 48, 64) for raw in ct_instances(5, size=64, patient_id="REND1")]
    return stored(shared_api, raws)


def _ct_rows_columns(raw: bytes, rows: int, columns: int) -> bytes:
    from tests.factories import part10

    ds = read(raw)
    pixels = ds.pixel_array[:rows, :columns].copy()
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = pixels.tobytes()
    return part10(ds)


# --- CT: file window, explicit windows, presets, JPEG ------------------------------------------


def test_rendered_ct_uses_the_file_window_and_rescale(shared_api: Api, ct: list[Any]) -> None:
    for ds in ct:
        response = get(shared_api, url(ds), Accept="image/png")

        assert response.headers["content-type"] == "image/png"
        assert_close(image(response), reference_grey(ds, ds.pixel_array))


@pytest.mark.parametrize(
    ("query", "window"),
    [
        ("window=40,400", (40, 400, "LINEAR")),
        ("window=40,400,linear", (40, 400, "LINEAR")),
        ("window=-600,1500,linear-exact", (-600, 1500, "LINEAR_EXACT")),
        ("window=100,250,sigmoid", (100, 250, "SIGMOID")),
        ("window=0.5,1", (0.5, 1, "LINEAR")),
        *[(f"window={name}", (*w, "LINEAR")) for name, w in PRESET_WINDOWS.items()],
        *[(f"preset={name}", (*w, "LINEAR")) for name, w in PRESET_WINDOWS.items()],
    ],
)
def test_explicit_windows_and_presets(
    shared_api: Api, ct: list[Any], query: str, window: tuple[float, float, str]
) -> None:
    ds = ct[2]

    response = get(shared_api, f"{url(ds)}?{query}", Accept="image/png")

    assert_close(image(response), reference_grey(ds, ds.pixel_array, window))


def test_jpeg_is_the_default_and_close_to_the_reference(shared_api: Api, ct: list[Any]) -> None:
    ds = ct[1]
    expected = reference_grey(ds, ds.pixel_array)

    response = get(shared_api, f"{url(ds)}?quality=100")

    assert response.headers["content-type"] == "image/jpeg"
    errors = np.abs(image(response) - expected)
    assert errors.mean() < 1.0 and errors.max() <= 8  # lossy, but barely at quality 100
    low = image(get(shared_api, f"{url(ds)}?quality=5"))
    assert np.abs(low - expected).mean() > errors.mean()  # quality is applied
    assert len(get(shared_api, f"{url(ds)}?quality=5").content) < len(response.content)


def test_gif_is_offered(shared_api: Api, ct: list[Any]) -> None:
    ds = ct[0]
    response = get(shared_api, url(ds), Accept="image/gif")
    assert response.headers["content-type"] == "image/gif"
    decoded = Image.open(io.BytesIO(response.content)).convert("L")
    got = np.asarray(decoded).astype(np.int64)
    assert_close(got, reference_grey(ds, ds.pixel_array))  # a grey GIF is lossless


# --- viewport ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("viewport", "size"),  # the CT is 64 columns by 48 rows
    [
        ("32,32", (32, 24)),
        ("64,64", (64, 48)),
        ("256,256", (256, 192)),  # scaled up to fit
        ("100,30", (40, 30)),
        (",24", (32, 24)),
        ("16,", (16, 12)),
        ("64,64,0,0,32,48", (43, 64)),  # the left half, fitted
        ("20,20,8,8,16,16", (20, 20)),
        ("64,64,60,40,100,100", (32, 64)),  # clipped to 4 x 8, then fitted by its height
    ],
)
def test_viewport_scales_to_fit_preserving_aspect(
    shared_api: Api, ct: list[Any], viewport: str, size: tuple[int, int]
) -> None:
    response = get(shared_api, f"{url(ct[0])}?viewport={viewport}", Accept="image/png")
    assert Image.open(io.BytesIO(response.content)).size == size == _fit(viewport, 64, 48)


def _fit(viewport: str, columns: int, rows: int) -> tuple[int, int]:
    """Expected size, computed independently from the PS3.18 §8.3.5.1.3 rule."""
    parts = viewport.split(",")
    sx, sy, sw, sh = (0, 0, columns, rows) if len(parts) == 2 else (int(p) for p in parts[2:])
    width, height = min(abs(sw), columns - sx), min(abs(sh), rows - sy)
    scales = [int(t) / s for t, s in zip(parts[:2], (width, height), strict=True) if t]
    scale = min(scales)
    return max(1, round(width * scale)), max(1, round(height * scale))


def test_viewport_region_and_flip_show_the_right_pixels(shared_api: Api, ct: list[Any]) -> None:
    ds = ct[3]
    full = reference_grey(ds, ds.pixel_array)

    region = image(get(shared_api, f"{url(ds)}?viewport=16,8,10,20,16,8", Accept="image/png"))
    flipped = image(get(shared_api, f"{url(ds)}?viewport=64,48,0,0,-64,48", Accept="image/png"))

    assert_close(region, full[20:28, 10:26])
    assert_close(flipped, full[:, ::-1])


# --- study, series, thumbnails, multi-frame --------------------------------------------------


def test_series_and_study_render_the_middle_instance_of_the_largest_series(
    shared_api: Api,
) -> None:
    study_uid = new_uid()
    small = ct_instances(1, size=32, study_uid=study_uid, patient_id="REND2")
    large = ct_instances(5, size=32, study_uid=study_uid, patient_id="REND2", seed=7)
    small_ds, large_ds = stored(shared_api, small), stored(shared_api, large)
    middle = sorted(large_ds, key=lambda d: int(d.InstanceNumber))[2]
    expected = reference_grey(middle, middle.pixel_array)

    for level in ("series", "study"):
        response = get(shared_api, url(middle, level), Accept="image/png")
        assert_close(image(response), expected)
        thumb = get(shared_api, url(middle, level, "thumbnail"), Accept="image/png")
        assert Image.open(io.BytesIO(thumb.content)).size == (128, 128)  # default thumbnail box
    assert small_ds[0].StudyInstanceUID == study_uid


def test_multiframe_frames_instance_gif_and_thumbnail(shared_api: Api) -> None:
    [ds] = stored(shared_api, [multiframe_ct(frames=3, size=16, PatientID="REND3")])
    frames = ds.pixel_array

    for number in (1, 2, 3):
        response = get(shared_api, url(ds, f"frames/{number}"), Accept="image/png")
        assert_close(image(response), reference_grey(ds, frames[number - 1]))
    assert_close(image(get(shared_api, url(ds), Accept="image/png")), reference_grey(ds, frames[0]))
    thumbnail = image(get(shared_api, url(ds, kind="thumbnail") + "?viewport=16,16"))
    assert np.abs(thumbnail - reference_grey(ds, frames[1])).mean() < 2  # the middle frame

    animation = Image.open(io.BytesIO(get(shared_api, url(ds), Accept="image/gif").content))
    assert animation.n_frames == 3
    for number in range(3):
        animation.seek(number)
        got = np.asarray(animation.convert("L")).astype(np.int64)
        assert_close(got, reference_grey(ds, frames[number]))


# --- every pydicom test file with pixel data --------------------------------------------------


def _with_fresh_uids(path: Path) -> bytes | None:
    """The file with new Study/Series/SOP UIDs (several test files share them), encoded in its
    own transfer syntax with its Pixel Data bytes unchanged; None if pydicom cannot rewrite it."""
    from tests.factories import part10

    ds = read(path.read_bytes())
    original = ds.PixelData
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = part10(ds)
    except Exception:
        return None
    again = read(raw)
    assert again.PixelData == original
    assert again.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    return raw


@pytest.mark.parametrize("path", PIXEL_FILES, ids=lambda p: p.name)
def test_every_pydicom_file_renders_like_the_reference(shared_api: Api, path: Path) -> None:
    raw = _with_fresh_uids(path)
    if raw is None:
        pytest.skip("pydicom cannot re-encode this file with fresh UIDs")
    response = stow(shared_api, [raw])
    if response.status_code != 200:
        pytest.skip(f"ingest refuses this file ({response.status_code})")
    ds = read(raw)

    answer = get(shared_api, url(ds), Accept="image/png")

    frames = reference_frames(ds)
    if frames is None:  # pydicom cannot decode it either: a clear 422 naming the frame
        assert answer.status_code == 422, answer.text
        assert "frame 1" in answer.json()["detail"]
        return
    assert path.name not in KNOWN_UNDECODABLE
    if path.name in UNREADABLE_FRAME_COUNT:  # the catalog keeps one frame
        frames = frames[:1]
    assert_close(image(answer), reference_display(ds, frames[0]))
    if len(frames) > 1:
        last = get(shared_api, url(ds, f"frames/{len(frames)}"), Accept="image/png")
        assert_close(image(last), reference_display(ds, frames[-1]))
    jpeg = get(shared_api, url(ds, kind="thumbnail"))
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"


# --- HTTP semantics: caching headers, negotiation, errors ------------------------------------


def test_etag_and_if_none_match(shared_api: Api, ct: list[Any]) -> None:
    ds = ct[0]
    response = get(shared_api, url(ds))
    etag = response.headers["etag"]

    again = get(shared_api, url(ds), **{"If-None-Match": etag})
    listed = get(shared_api, url(ds), **{"If-None-Match": f'"x", W/{etag}'})
    other = get(shared_api, f"{url(ds)}?window=lung", **{"If-None-Match": etag})

    assert etag.startswith('"') and etag.endswith('"')
    assert again.status_code == 304 and again.content == b""
    assert listed.status_code == 304
    assert other.status_code == 200 and other.headers["etag"] != etag
    assert get(shared_api, url(ds), Accept="image/png").headers["etag"] != etag
    for headers in (response.headers, again.headers):
        assert headers["etag"] == etag
        assert headers["cache-control"].startswith("private, max-age=")
        assert headers["cross-origin-resource-policy"] == "cross-origin"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("image/webp, image/png;q=0.9, */*;q=0.1", "image/png"),
        ("image/jpeg;q=0.2, image/gif;q=0.8", "image/gif"),
        ("image/*, image/jpeg;q=0", "image/png"),
        ("text/html", 406),
        ("application/dicom", 406),
        ("image/jpeg;q=0, image/png;q=0, image/gif;q=0", 406),
        ("multipart/related; type=image/jpeg", 406),
    ],
)
def test_accept_negotiation(
    shared_api: Api, ct: list[Any], accept: str | None, expected: Any
) -> None:
    headers = {} if accept is None else {"Accept": accept}
    response = get(shared_api, url(ct[0]), **headers)
    if expected == 406:
        assert response.status_code == 406
    else:
        assert response.status_code == 200
        assert response.headers["content-type"] == expected


def test_accept_query_parameter_overrides_the_header(shared_api: Api, ct: list[Any]) -> None:
    response = get(shared_api, f"{url(ct[0])}?accept=image/png", Accept="image/jpeg")
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "query",
    [
        "window=abc", "window=40", "window=40,0", "window=40,400,cubic", "window=nan,4",
        "window=1,2,3,4", "preset=spleen", "window=lung&preset=bone", "viewport=0,0",
        "viewport=a,b", "viewport=1,2,3", "viewport=,", "viewport=99999,10",
        "viewport=10,10,-1,0,5,5", "viewport=10,10,0,0,0,5", "viewport=10,10,500,0,5,5",
        "quality=0", "quality=101", "quality=x", "quality=", "viewport=10,10,0,0,1e400,3",
    ],
)  # fmt: skip
def test_malformed_parameters_are_400(shared_api: Api, ct: list[Any], query: str) -> None:
    response = get(shared_api, f"{url(ct[0])}?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("frames", "status"),
    [("0", 404), ("2", 404), ("99999999999999999999", 404), ("1,2", 400), ("abc", 400),
     ("-1", 400), ("1.0", 400), ("\u0661", 400)],
)  # fmt: skip
def test_frame_numbers(shared_api: Api, ct: list[Any], frames: str, status: int) -> None:
    for kind in ("rendered", "thumbnail"):
        response = get(shared_api, url(ct[0], f"frames/{frames}", kind))
        assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "uid", ["1..2", "1.2.3<script>", "1." + "2" * 70, "1.2.03", "%2e%2e%2f", "1.2.3 4"]
)
def test_hostile_uids_are_refused(shared_api: Api, ct: list[Any], uid: str) -> None:
    ds = ct[0]
    for path in (
        f"/dicomweb/studies/{uid}/rendered",
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{uid}/thumbnail",
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{uid}/rendered",
    ):
        response = get(shared_api, path)
        assert response.status_code in (400, 404), response.text


def test_other_sites_study_looks_missing(shared_api: Api, ct: list[Any]) -> None:
    ds = ct[0]
    missing = get(shared_api, url(ds).replace(ds.SOPInstanceUID, new_uid()))

    for level in ("study", "series", "instance", "frames/1"):
        for kind in ("rendered", "thumbnail"):
            denied = get(shared_api, url(ds, level, kind), "rg2")
            assert denied.status_code == 404
            assert denied.json() == missing.json()
    assert get(shared_api, url(ds), "rg1").status_code == 200
    assert get(shared_api, url(ds), "rad1").status_code == 200
    assert shared_api.client.get(url(ds)).status_code == 401


def test_access_is_audited(shared_api: Api, ct: list[Any]) -> None:
    ds = ct[4]
    path = url(ds, "series", "thumbnail")

    get(shared_api, path, "rg1")
    shared_api.services.audit.flush()

    with shared_api.services.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.resource == path, AuditEvent.actor == "rg1")
        ).all()
    assert [e.action for e in events] == ["thumbnail-series"]
    assert events[0].study_uid == ds.StudyInstanceUID


# --- PDF, non-images, corrupt pixel data ------------------------------------------------------


def test_encapsulated_pdf_is_returned_as_pdf(shared_api: Api) -> None:
    document = b"%PDF-1.4\n% telerad test\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF"
    [ds] = stored(shared_api, [encapsulated_pdf(document, PatientID="REND4")])

    for level in ("instance", "series", "study"):
        response = get(shared_api, url(ds, level))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/pdf"
        assert response.content == document
    assert get(shared_api, url(ds), Accept="image/png").status_code == 406
    assert get(shared_api, url(ds, kind="thumbnail")).status_code == 404  # no image to show
    assert get(shared_api, url(ds, "frames/1")).status_code == 404


def test_corrupt_pixel_stream_is_422_and_the_server_keeps_serving(
    shared_api: Api, ct: list[Any]
) -> None:
    [ds] = stored(shared_api, [corrupt_rle_instance()])

    for path in (url(ds), url(ds, "frames/1"), url(ds, kind="thumbnail"), url(ds, "series")):
        response = get(shared_api, path)
        assert response.status_code == 422, response.text
        assert "frame" in response.json()["detail"]
    assert get(shared_api, url(ct[0])).status_code == 200
