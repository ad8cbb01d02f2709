"""WADO-RS (PS3.18 §10.4) on SQLite and PostgreSQL: a dicomweb-client round trip for every
transfer syntax among pydicom's bundled test files against a live server, negotiation (§8.7),
bad input, caching headers, CORS and forwarded headers.

Each bundled file gets fresh Study/Series/SOP Instance UIDs (several share UIDs) and is stored
by STOW-RS as a county1 radiographer; rad1 (who reads for county1) retrieves it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from telerad.settings import Settings
from telerad.storage import BASE_URI_MARKER, AuditEvent, Instance
from telerad.viewer_api import create_app
from telerad.viewer_api.pixels import PixelDescription, decode_frame
from tests.conftest import Api
from tests.factories import ct_datasets, multipart_related, new_uid, part10

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
EVRLE = "1.2.840.10008.1.2.1"
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
         "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}  # fmt: skip
#: Bundled files no installed codec decodes (pydicom's pixel_array fails too): a JPEG 2000
#: codestream corrupted on purpose.
UNDECODABLE = {"JPEG2000-embedded-sequence-delimiter.dcm"}
OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _quiet_read(source: Path | bytes, **options: object) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = source if isinstance(source, bytes) else source.read_bytes()
        return pydicom.dcmread(io.BytesIO(data), **options)  # type: ignore[arg-type]


def _pixels(ds: pydicom.Dataset) -> list[np.ndarray] | None:
    """pydicom's decoded frames (None if it cannot decode them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                frames = int(ds.get("NumberOfFrames") or 1)
            except ValueError:  # badVR.dcm's '1A': the catalog keeps one frame
                del ds.NumberOfFrames
                frames = 1
            array = ds.pixel_array
    except Exception:
        return None
    frame_dims = 3 if int(ds.get("SamplesPerPixel") or 1) > 1 else 2
    return list(array) if frames > 1 or array.ndim > frame_dims else [array]


def _with_fresh_uids(path: Path) -> bytes | None:
    """The file re-saved in its own transfer syntax with new UIDs (None if pydicom cannot)."""
    try:
        ds = _quiet_read(path)
        if "PixelData" not in ds or "TransferSyntaxUID" not in ds.file_meta:
            return None
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if "SOPClassUID" not in ds:
            return None
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    except Exception:
        return None


@dataclass
class Stored:
    """One bundled file as stored: its bytes, header and pydicom's decoded frames."""

    name: str
    raw: bytes
    ds: pydicom.Dataset
    pixels: list[np.ndarray] | None

    @property
    def uids(self) -> tuple[str, str, str]:
        return self.ds.StudyInstanceUID, self.ds.SeriesInstanceUID, self.ds.SOPInstanceUID

    @property
    def syntax(self) -> str:
        return str(self.ds.file_meta.TransferSyntaxUID)

    @property
    def path(self) -> str:
        study, series, instance = self.uids
        return f"/dicomweb/studies/{study}/series/{series}/instances/{instance}"


def _candidates() -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        raw = _with_fresh_uids(path)
        if raw is not None:
            found.append((path.name, raw))
    return found


CANDIDATES = _candidates()


def instance_path(ds: pydicom.Dataset) -> str:
    """The WADO-RS path of an instance."""
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    return f"/dicomweb/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}"


def store(api: Api, who: str, instances: list[bytes]) -> requests.Response:
    body, content_type = multipart_related(instances)
    headers = {"Content-Type": content_type, **api.headers(who)}
    return api.client.post("/dicomweb/studies", content=body, headers=headers)


@pytest.fixture(scope="module")
def stored(shared_api: Api) -> dict[str, Stored]:
    """Every candidate the ingest path accepts (the others are refused by STOW, tested there)."""
    accepted = {}
    for name, raw in CANDIDATES:
        if store(shared_api, "rg1", [raw]).status_code == 200:
            ds = _quiet_read(raw)
            accepted[name] = Stored(name, raw, ds, _pixels(ds))
    return accepted


@pytest.fixture(scope="module")
def live(shared_api: Api) -> Iterator[str]:
    """The same app and services behind a real uvicorn on a free port (dicomweb-client speaks
    requests, not the TestClient's transport)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(shared_api.services.settings, shared_api.services)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def client(api: Api, live: str, who: str = "rad1") -> DICOMwebClient:
    return DICOMwebClient(url=f"{live}/dicomweb", headers=api.headers(who))


def get(api: Api, path: str, who: str = "rad1", **headers: str) -> requests.Response:
    return api.client.get(path, headers={**api.headers(who), **headers})


def parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    message = Message()
    message["content-type"] = response.headers["content-type"]
    assert message.get_content_type() == "multipart/related"
    boundary = message.get_param("boundary")
    assert isinstance(boundary, str)
    body = response.content
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    found = []
    for chunk in body[: -len(f"\r\n--{boundary}--\r\n")].split(f"\r\n--{boundary}\r\n".encode()):
        chunk = chunk.removeprefix(f"--{boundary}\r\n".encode())
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        found.append((headers["Content-Type"], data))
    return found


def test_bundled_files_cover_the_transfer_syntaxes(stored: dict[str, Stored]) -> None:
    syntaxes = {s.syntax for s in stored.values()}
    expected = [
        "1.2.840.10008.1.2", EVRLE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    ]  # fmt: skip
    assert set(expected) <= syntaxes
    assert len(stored) >= 40


# --- the round trip, per bundled file ---------------------------------------------------------

NAMES = [name for name, _raw in CANDIDATES]


def _one(stored: dict[str, Stored], name: str) -> Stored:
    if name not in stored:
        pytest.skip("STOW refuses this file (tests/viewer_api/test_stow.py covers why)")
    return stored[name]


@pytest.mark.parametrize("name", NAMES)
def test_instance_as_stored_is_byte_identical(
    shared_api: Api, live: str, stored: dict[str, Stored], name: str
) -> None:
    item = _one(stored, name)
    study, series, instance = item.uids
    response = get(
        shared_api,
        item.path,
        Accept='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    assert response.status_code == 200
    [(content_type, data)] = parts(response)
    assert data == item.raw
    assert content_type == f"application/dicom; transfer-syntax={item.syntax}"
    retrieved = client(shared_api, live).retrieve_instance(study, series, instance)
    assert retrieved.SOPInstanceUID == instance
    assert retrieved.file_meta.TransferSyntaxUID == item.syntax


@pytest.mark.parametrize("name", NAMES)
def test_default_transfer_syntax_is_explicit_little_endian(
    shared_api: Api, stored: dict[str, Stored], name: str
) -> None:
    """No transfer-syntax parameter: Explicit VR Little Endian, except lossy stored data
    (PS3.18 §8.7.3); pixels survive the transcoding (RGB for YBR JPEG)."""
    item = _one(stored, name)
    response = get(shared_api, item.path, Accept='multipart/related; type="application/dicom"')
    if name in UNDECODABLE and item.syntax not in LOSSY:
        assert response.status_code == 422
        assert item.uids[2] in response.json()["detail"]
        return
    assert response.status_code == 200
    [(content_type, data)] = parts(response)
    expected = item.syntax if item.syntax in LOSSY else EVRLE
    assert content_type == f"application/dicom; transfer-syntax={expected}"
    ds = _quiet_read(data)
    assert ds.file_meta.TransferSyntaxUID == expected
    assert ds.SOPInstanceUID == item.uids[2]
    if item.pixels is not None:
        assert all(
            np.array_equal(a, b) for a, b in zip(_pixels(ds) or [], item.pixels, strict=True)
        )


@pytest.mark.parametrize("name", NAMES)
def test_explicit_uncompressed_request_transcodes(
    shared_api: Api, stored: dict[str, Stored], name: str
) -> None:
    item = _one(stored, name)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}'
    response = get(shared_api, item.path, Accept=accept)
    if item.syntax == EVRLE:  # nothing to decode: as stored, even if pydicom cannot decode it
        assert parts(response) == [(f"application/dicom; transfer-syntax={EVRLE}", item.raw)]
        return
    if item.pixels is None:
        assert response.status_code == 422
        return
    assert response.status_code == 200
    [(_content_type, data)] = parts(response)
    ds = _quiet_read(data)
    assert ds.file_meta.TransferSyntaxUID == EVRLE
    decoded = _pixels(ds)
    assert decoded is not None
    assert all(np.array_equal(a, b) for a, b in zip(decoded, item.pixels, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_the_stored_dicom_json(
    shared_api: Api, live: str, stored: dict[str, Stored], name: str
) -> None:
    item = _one(stored, name)
    study, series, instance = item.uids
    with shared_api.services.sessions() as session:
        text = session.scalars(
            select(Instance.metadata_json).where(Instance.sop_instance_uid == instance)
        ).one()
    port = live.rsplit(":", 1)[1]
    base = f"{live}/dicomweb".replace(f":{port}", "")  # dicomweb-client sends Host without port
    got = client(shared_api, live).retrieve_instance_metadata(study, series, instance)
    assert got == json.loads(text.replace(BASE_URI_MARKER, base))
    if "7FE00010" in got:
        assert (
            got["7FE00010"]["BulkDataURI"]
            == f"{base}/studies/{study}/series/{series}/instances/{instance}/bulk/7FE00010"
        )


@pytest.mark.parametrize("name", NAMES)
def test_frames_decode_to_pydicoms_pixels(
    shared_api: Api, live: str, stored: dict[str, Stored], name: str
) -> None:
    """OHIF's request (any syntax): native frames as octet-stream, compressed ones as their
    bitstream under the media type of their syntax; both decode to pydicom's pixel_array."""
    item = _one(stored, name)
    count = int(item.ds.get("NumberOfFrames") or 1) if name != "badVR.dcm" else 1
    numbers = ",".join(str(n) for n in range(1, count + 1))
    response = get(shared_api, f"{item.path}/frames/{numbers}", Accept=OHIF_FRAMES)
    if item.pixels is None and name not in UNDECODABLE:  # native, but not decodable
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"frame 1 of instance {item.uids[2]} ")
        return
    assert response.status_code == 200
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    found = parts(response)
    assert len(found) == count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some bundled files carry invalid UIs on purpose
        description = PixelDescription.from_metadata(item.ds.to_json_dict(), item.syntax)
    for number, (content_type, data) in enumerate(found, 1):
        syntax = content_type.split("transfer-syntax=")[1]
        if name in UNDECODABLE:
            assert syntax == item.syntax  # sent as stored: the viewer may have a codec
            continue
        assert item.pixels is not None
        expected = item.pixels[number - 1]
        if syntax == EVRLE:
            assert content_type.startswith("application/octet-stream;")
            assert data == _octets(expected, item.ds)
        else:
            assert syntax == item.syntax and not content_type.startswith("application/octet")
            assert np.array_equal(decode_frame(data, description), expected)
    if name not in UNDECODABLE and count == 1:
        [frame] = client(shared_api, live).retrieve_instance_frames(
            *item.uids, frame_numbers=[1], media_types=(("application/octet-stream", "*"),)
        )
        assert frame == found[0][1]


def _octets(pixels: np.ndarray, ds: pydicom.Dataset) -> bytes:
    """Uncompressed bulk data of decoded pixels: little endian, 1-bit packed (PS3.5 §8.1.1)."""
    if int(ds.BitsAllocated) == 1:
        return np.packbits(pixels.ravel(), bitorder="little").tobytes()
    return pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_octet_stream_frames_are_the_decoded_pixels(
    shared_api: Api, stored: dict[str, Stored], name: str
) -> None:
    item = _one(stored, name)
    accept = 'multipart/related; type="application/octet-stream"'
    response = get(shared_api, f"{item.path}/frames/1", Accept=accept)
    if item.pixels is None:
        assert response.status_code == 422
        assert f"frame 1 of instance {item.uids[2]} cannot be decoded" in response.json()["detail"]
        return
    assert response.status_code == 200
    [(content_type, data)] = parts(response)
    assert content_type == f"application/octet-stream; transfer-syntax={EVRLE}"
    assert data == _octets(item.pixels[0], item.ds)


# --- study and series, counts and streaming ---------------------------------------------------


@pytest.fixture(scope="module")
def ct_study(shared_api: Api) -> list[pydicom.Dataset]:
    study = new_uid()
    first = ct_datasets(3, study_uid=study)
    second = ct_datasets(2, study_uid=study)
    for ds in second:
        ds.SeriesInstanceUID, ds.SeriesNumber = second[0].SeriesInstanceUID, 7
    datasets = first + second
    assert store(shared_api, "rg1", [part10(ds) for ds in datasets]).status_code == 200
    return datasets


def test_retrieve_study_and_series(
    shared_api: Api, live: str, ct_study: list[pydicom.Dataset]
) -> None:
    web = client(shared_api, live)
    study = ct_study[0].StudyInstanceUID
    got = web.retrieve_study(study)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(ds.SOPInstanceUID for ds in ct_study)
    series = ct_study[3].SeriesInstanceUID
    assert len(web.retrieve_series(study, series)) == 2
    metadata = web.retrieve_series_metadata(study, series)
    assert [m["00080018"]["Value"][0] for m in metadata] == [
        ds.SOPInstanceUID for ds in ct_study[3:]
    ]
    assert len(web.retrieve_study_metadata(study)) == 5


def test_metadata_is_gzipped_and_multipart_is_not(
    shared_api: Api, ct_study: list[pydicom.Dataset]
) -> None:
    study = ct_study[0].StudyInstanceUID
    response = get(shared_api, f"/dicomweb/studies/{study}/metadata", **{"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-type"] == "application/dicom+json"
    response = get(shared_api, f"/dicomweb/studies/{study}", **{"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers
    assert len(parts(response)) == 5


def test_retrievals_are_audited(shared_api: Api, ct_study: list[pydicom.Dataset]) -> None:
    study = ct_study[0].StudyInstanceUID
    ds = ct_study[0]
    path = f"/dicomweb/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    for suffix in ("", "/metadata", "/frames/1", "/bulk/7FE00010"):
        assert get(shared_api, path + suffix, "rad1").status_code == 200
    assert get(shared_api, f"/dicomweb/studies/{study}", "rad1").status_code == 200
    shared_api.services.audit.flush()  # reads are audited by the batched writer
    with shared_api.services.sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.study_uid == study, AuditEvent.actor == "rad1"
            )
        ).all()
    for action in ("wado-instance", "wado-metadata", "wado-frames", "wado-bulk", "wado-study"):
        assert action in actions


# --- bad input --------------------------------------------------------------------------------


def test_unknown_hidden_and_hostile_uids_are_the_same_404(
    shared_api: Api, ct_study: list[pydicom.Dataset]
) -> None:
    ds = ct_study[0]
    real = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    unknown = (new_uid(), new_uid(), new_uid())
    hostile = ("..%2F..%2Fetc%2Fpasswd", "1.2.3;DROP TABLE x", "9" * 200)
    bodies = set()
    for who, (study, series, instance) in (("rg2", real), ("rad1", unknown), ("rad1", hostile)):
        for path in (
            f"/dicomweb/studies/{study}",
            f"/dicomweb/studies/{study}/metadata",
            f"/dicomweb/studies/{study}/series/{series}",
            f"/dicomweb/studies/{study}/series/{series}/metadata",
            f"/dicomweb/studies/{study}/series/{series}/instances/{instance}",
            f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata",
            f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/1",
            f"/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulk/7FE00010",
        ):
            response = get(shared_api, path, who)
            assert response.status_code == 404, (who, path)
            bodies.add(response.content)
    assert bodies == {b'{"detail":"not found"}'}
    # The same study is visible to its own site.
    assert get(shared_api, f"/dicomweb/studies/{real[0]}/metadata", "rg1").status_code == 200


@pytest.mark.parametrize(
    ("frames", "status"),
    [
        ("0", 400),
        ("-1", 400),
        ("1,,2", 400),
        ("a", 400),
        ("1,", 400),
        (" 1", 400),
        ("1.5", 400),
        ("99999", 404),
        ("1,2", 404),
        ("1," * 10001 + "1", 400),
        ("1", 200),
        ("1,1", 200),
    ],
)
def test_frame_lists(
    shared_api: Api, ct_study: list[pydicom.Dataset], frames: str, status: int
) -> None:
    ds = ct_study[0]
    path = instance_path(ds)
    response = get(shared_api, f"{path}/frames/{frames}")
    assert response.status_code == status
    if status == 200:
        assert [data for _t, data in parts(response)] == [ds.PixelData] * len(frames.split(","))
    else:
        assert response.json()["detail"]


@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        ("", "image/png"),
        ("", "application/dicom"),  # single part: one instance per payload
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'),
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'),
        ("/metadata", "application/dicom+xml"),
        ("/metadata", 'multipart/related; type="application/dicom+xml"'),
    ],
)
def test_unsupported_accept_is_406(
    shared_api: Api, ct_study: list[pydicom.Dataset], suffix: str, accept: str
) -> None:
    study = ct_study[0].StudyInstanceUID
    response = get(shared_api, f"/dicomweb/studies/{study}{suffix}", Accept=accept)
    assert response.status_code == 406
    assert response.json()["detail"]


def test_instance_level_negotiation(shared_api: Api, ct_study: list[pydicom.Dataset]) -> None:
    ds = ct_study[0]
    path = instance_path(ds)
    single = get(shared_api, path, Accept="application/dicom")
    assert single.status_code == 200
    assert single.headers["content-type"].startswith("application/dicom")
    assert _quiet_read(single.content).SOPInstanceUID == ds.SOPInstanceUID
    # The accept query parameter replaces the header (PS3.18 §8.3.3.1).
    assert get(shared_api, f"{path}?accept=image/png").status_code == 406
    # q-values: the unproducible first choice loses to the producible second.
    accept = "image/jls;q=0.9, multipart/related; type=application/dicom;q=0.5"
    assert get(shared_api, path, Accept=accept).status_code == 200
    frames = f"{path}/frames/1"
    assert get(shared_api, frames, Accept='multipart/related; type="image/jls"').status_code == 406
    one = get(shared_api, frames, Accept="application/octet-stream")
    assert one.status_code == 200 and one.content == ds.PixelData
    assert (
        get(shared_api, f"{path}/frames/1,1", Accept="application/octet-stream").status_code == 406
    )


def test_corrupt_pixel_stream_gives_a_clear_error_for_that_frame(shared_api: Api) -> None:
    """A JPEG instance whose bitstream is garbage is stored (ingest does not decode pixels);
    asking for decoded pixels gives 422 naming the frame, the stored bytes stay retrievable,
    and the server goes on serving."""
    ds = _quiet_read(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    length = len(next(frame))
    garbage = (b"\xff\xd8\xff\xdb" + bytes(range(7, 256)) * 64)[:length]
    ds.PixelData = pydicom.encaps.encapsulate([garbage])
    raw = part10(ds)
    assert store(shared_api, "rg1", [raw]).status_code == 200
    path = instance_path(ds)
    decoded = get(
        shared_api, f"{path}/frames/1", Accept='multipart/related; type="application/octet-stream"'
    )
    assert decoded.status_code == 422
    assert decoded.json()["detail"].startswith(
        f"frame 1 of instance {ds.SOPInstanceUID} cannot be decoded"
    )
    transcoded = get(
        shared_api,
        path,
        Accept=f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}',
    )
    assert transcoded.status_code == 422
    as_stored = get(shared_api, f"{path}/frames/1", Accept=OHIF_FRAMES)
    assert as_stored.status_code == 200
    assert parts(as_stored) == [("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", garbage)]
    assert shared_api.client.get("/healthz").status_code == 200


def test_bulk_data(shared_api: Api) -> None:
    """Pixel Data as all its frames; another binary element (nested in a sequence) by path."""
    ds = _quiet_read(TEST_FILES / "rtdose.dcm")  # 15 native frames
    ds.file_meta.TransferSyntaxUID = EVRLE  # so the private sequence keeps its VR
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    blob = bytes(range(256)) * 8
    item = pydicom.Dataset()
    item.add_new(0x00091010, "OB", blob)  # private: any reader keeps it as bytes
    item.add_new(0x00090010, "LO", "TELERAD TEST")
    ds.add_new(0x00091001, "SQ", pydicom.Sequence([item]))
    ds.add_new(0x00090010, "LO", "TELERAD TEST")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rtdose.dcm carries an invalid UI on purpose
        raw = part10(ds)
    assert store(shared_api, "rg1", [raw]).status_code == 200
    path = instance_path(ds)
    metadata = get(shared_api, f"{path}/metadata").json()[0]
    nested = metadata["00091001"]["Value"][0]["00091010"]["BulkDataURI"]
    assert nested.endswith("/bulk/00091001/0/00091010")
    response = get(shared_api, nested.removeprefix("http://testserver"))
    assert response.status_code == 200
    assert parts(response) == [("application/octet-stream", blob)]
    pixels = get(shared_api, f"{path}/bulk/7FE00010")
    frames = parts(pixels)
    assert len(frames) == 15
    assert b"".join(data for _t, data in frames) == ds.PixelData
    for bad in ("7FE0001", "zzzzzzzz", "00091001/x/00091010", "00091001/0"):
        assert get(shared_api, f"{path}/bulk/{bad}").status_code == 400
    assert get(shared_api, f"{path}/bulk/00091001/5/00091010").status_code == 404
    assert get(shared_api, f"{path}/bulk/00100010").status_code == 404


def test_etag_and_cache_headers(shared_api: Api, ct_study: list[pydicom.Dataset]) -> None:
    ds = ct_study[0]
    path = instance_path(ds)
    for suffix in ("", "/frames/1", "/bulk/7FE00010"):
        first = get(shared_api, path + suffix)
        etag = first.headers["etag"]
        assert etag.startswith('"') and len(etag) > 20
        assert first.headers["cache-control"].startswith("private")
        assert first.headers["cross-origin-resource-policy"] == "cross-origin"
        again = get(shared_api, path + suffix, **{"If-None-Match": etag})
        assert again.status_code == 304 and again.headers["etag"] == etag
        other = get(shared_api, path + suffix, **{"If-None-Match": '"other"'})
        assert other.status_code == 200
    octet = get(
        shared_api, f"{path}/frames/1", Accept='multipart/related; type="application/octet-stream"'
    )
    assert octet.headers["etag"] != get(shared_api, f"{path}/frames/1,1").headers["etag"]


# --- browsers: CORS and proxies ----------------------------------------------------------------


def _app_with(api: Api, **viewer: object) -> TestClient:
    """Another app over the same services, with other viewer settings."""
    changed = api.services.settings.viewer.model_copy(update=viewer)
    settings = api.services.settings.model_copy(update={"viewer": changed})
    return TestClient(create_app(settings, dataclasses.replace(api.services, settings=settings)))


def test_cors_preflight_and_headers(shared_api: Api, ct_study: list[pydicom.Dataset]) -> None:
    origin = "https://viewer.example"
    study = ct_study[0].StudyInstanceUID
    with _app_with(shared_api, cors_origins=[origin]) as browser:
        preflight = browser.options(
            f"/dicomweb/studies/{study}/metadata",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization, accept"},
        )  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "accept" in allowed
        response = browser.get(
            f"/dicomweb/studies/{study}/metadata",
            headers={"Origin": origin, **shared_api.headers("rad1")},
        )
        assert response.headers["access-control-allow-origin"] == origin
        assert "etag" in response.headers["access-control-expose-headers"].lower()
        stranger = browser.options(
            f"/dicomweb/studies/{study}",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert stranger.status_code == 400
        assert "access-control-allow-origin" not in stranger.headers
    plain = get(shared_api, f"/dicomweb/studies/{study}/metadata", Origin=origin)
    assert not any(h.startswith("access-control-") for h in plain.headers)


def test_forwarded_headers_from_trusted_proxies_only(
    shared_api: Api, ct_study: list[pydicom.Dataset]
) -> None:
    ds = ct_study[0]
    path = instance_path(ds) + "/metadata"
    proxied = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pacs.example:8443",
        **shared_api.headers("rad1"),
    }
    forwarded = {
        "Forwarded": 'for=10.1.2.3;proto=https;host="pacs.example"',
        **shared_api.headers("rad1"),
    }

    def pixel_uri(browser: TestClient, headers: dict[str, str]) -> str:
        return str(browser.get(path, headers=headers).json()[0]["7FE00010"]["BulkDataURI"])

    with _app_with(shared_api, forwarded_allow_ips=["*"]) as behind_proxy:
        assert pixel_uri(behind_proxy, proxied).startswith(
            "https://pacs.example:8443/dicomweb/studies/"
        )
        assert pixel_uri(behind_proxy, forwarded).startswith(
            "https://pacs.example/dicomweb/studies/"
        )
    # The TestClient's peer is not a trusted address by default: its headers are ignored.
    assert pixel_uri(shared_api.client, proxied).startswith("http://testserver/dicomweb/")
    http = shared_api.services.settings.http.model_copy(
        update={"public_url": "https://public.example"}
    )
    viewer = shared_api.services.settings.viewer.model_copy(update={"forwarded_allow_ips": ["*"]})
    settings = shared_api.services.settings.model_copy(update={"http": http, "viewer": viewer})
    services = dataclasses.replace(shared_api.services, settings=settings)
    with TestClient(create_app(settings, services)) as configured:
        assert pixel_uri(configured, proxied).startswith("https://public.example/dicomweb/")


def test_settings_accept_viewer_options() -> None:
    settings = Settings(
        viewer={"cors_origins": ["https://a.example"], "forwarded_allow_ips": ["10.0.0.0/8"]}
    )
    assert settings.viewer.forwarded_allow_ips == ["10.0.0.0/8"]
