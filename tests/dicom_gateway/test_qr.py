"""Query/Retrieve SCP of the gateway (PS3.4 Annex C) with dcmtk and pynetdicom as peers.

One centre and one gateway per database kind for the whole module, holding:

* study A of county1 (3 CT slices, patient PA, 2024-01-10), sent through the gateway with
  storescu, so the gateway's spool still holds it;
* study B of county1 (250 tiny slices, patient PB, 2024-03-20), ingested at the centre only,
  so a retrieve must fetch it by WADO-RS;
* study R of county1 (2 slices, RLE Lossless), sent through the gateway;
* study C of county2 (2024-01-15): the gateway's site must never see it.

A dcmtk storescp listens as the site's modality VIEWER (registered at the centre with its host
and port) for C-MOVE.

Every test runs against a county gateway (look-ups over QIDO-RS) and against a gateway beside
the centre (``gateway.local_catalog``: look-ups in the centre's database), on each database.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE, build_role
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from telerad.dicom_gateway import Gateway
from telerad.dicom_gateway.catalog import CatalogSearch, CentreSearch, Requestor
from telerad.dicom_gateway.centre import CentreClient
from telerad.dicom_gateway.errors import CentreRefused
from telerad.dicom_gateway.qr import QueryRetrieve, handle_find
from telerad.dicom_gateway.retrieve import InstanceRef, InstanceSource
from telerad.storage import AuditEvent, IngestSource, Site
from telerad.worklist import add_modality, create_site_token, revoke_site_tokens, site_by_name
from tests.conftest import DATABASES, catalog_url
from tests.dicom_gateway.conftest import (
    Centre,
    dataset_bytes,
    dcmtk,
    free_port,
    gateway_settings,
    live_centre,
    running_gateway,
    wait_for,
)
from tests.factories import ct_datasets, part10

STUDY_ROOT = "-S"
PATIENT_ROOT = "-P"


@dataclass
class Study:
    """A study of the fixture: its UID and its instances as Part-10 bytes."""

    uid: str
    patient_id: str
    files: list[bytes]

    @property
    def sop_uids(self) -> set[str]:
        return {_header(f).SOPInstanceUID for f in self.files}

    @property
    def series_uid(self) -> str:
        return str(_header(self.files[0]).SeriesInstanceUID)


@dataclass
class World:
    """The running centre, gateway and destination, and the studies they hold."""

    centre: Centre
    gateway: Gateway
    viewer_port: int
    viewer_dir: Path
    search: str  # qido (a county gateway) or catalog (a gateway beside the centre)
    studies: dict[str, Study] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.gateway.dicom_port


def _header(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _study(patient_id: str, name: str, date: str, slices: int, size: int = 16) -> list[Dataset]:
    datasets = ct_datasets(slices, size, patient_id=patient_id, patient_name=name)
    for ds in datasets:
        ds.StudyDate = date
        ds.StudyDescription = f"study of {patient_id}"
    return datasets


def _ingest(centre: Centre, site_name: str, files: list[bytes]) -> None:
    with centre.services.sessions() as session:
        site = session.query(Site).filter(Site.name == site_name).one()
        source = IngestSource(site.id, site.issuer_of_patient_id, "test")
    for data in files:
        centre.services.archive.ingest_instance(data, source)


def _storescu(port: int, directory: Path, files: list[bytes], *options: str) -> None:
    paths = []
    for data in files:
        path = directory / f"{len(list(directory.iterdir())):04d}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    result = subprocess.run(
        [dcmtk("storescu"), *options, "-aet", "CT1", "-aec", "GATEWAY", "127.0.0.1",
         str(port), *paths],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()


SEARCHES = ("qido", "catalog")


@pytest.fixture(
    scope="module",
    params=[(db, mode) for db in DATABASES for mode in SEARCHES],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    database, mode = request.param
    directory = tmp_path_factory.mktemp("qr")
    viewer_port = free_port()
    viewer_dir = directory / "viewer"
    viewer_dir.mkdir()
    with catalog_url(database, directory) as url, live_centre(url, directory) as centre:
        with centre.services.writer.begin() as session:
            add_modality(session, site_by_name(session, "county1"), "VIEWER", "127.0.0.1",
                         viewer_port)  # fmt: skip
        storescp = subprocess.Popen(
            [dcmtk("storescp"), "+xa", "-aet", "VIEWER", "-od", str(viewer_dir),
             str(viewer_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        settings = gateway_settings(
            directory / "gateway", database_url=url, local_catalog=mode == "catalog"
        )
        try:
            with running_gateway(settings, centre.url, centre.site_token) as gateway:
                world = World(centre, gateway, viewer_port, viewer_dir, mode)
                yield _populate(world, directory)
        finally:
            storescp.terminate()
            storescp.wait(timeout=10)


def _populate(world: World, directory: Path) -> World:
    a = [part10(ds) for ds in _study("PA", "Alpha^Anna", "20240110", 3)]
    rle = _study("PR", "Rho^Rita", "20230505", 2)
    for ds in rle:
        ds.compress(RLELossless)
    r = [part10(ds) for ds in rle]
    b = [part10(ds) for ds in _study("PB", "Beta^Bert", "20240320", 250, size=8)]
    c = [part10(ds) for ds in _study("PC", "Alpha^Carl", "20240115", 2)]
    for key, files, pid in (("A", a, "PA"), ("R", r, "PR"), ("B", b, "PB"), ("C", c, "PC")):
        world.studies[key] = Study(str(_header(files[0]).StudyInstanceUID), pid, files)
    sent = directory / "sent"
    sent.mkdir()
    _storescu(world.port, sent, a)
    _storescu(world.port, sent, r, "-xr")  # propose RLE Lossless
    _ingest(world.centre, "county1", b)
    _ingest(world.centre, "county2", c)
    wait_for(lambda: world.gateway.outbox.counts()["confirmed"] == len(a) + len(r), timeout=60)
    return world


# -- C-FIND with dcmtk findscu ----------------------------------------------------------------


def findscu(world: World, model: str, keys: list[str], out: Path) -> list[Dataset]:
    """Run dcmtk findscu, extracting each response to a file; return them in order."""
    out.mkdir(parents=True, exist_ok=True)
    args = [arg for key in keys for arg in ("-k", key)]
    result = subprocess.run(
        [dcmtk("findscu"), model, "-X", "-od", str(out), "-aet", "CT1", "-aec", "GATEWAY",
         "127.0.0.1", str(world.port), *args],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _keywords(ds: Dataset) -> set[str]:
    return {element.keyword for element in ds}


ADDED = {"QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet"}


def test_findscu_study_level_returns_the_sites_studies_with_exactly_the_requested_keys(
    world: World, tmp_path: Path
) -> None:
    keys = [
        "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName", "PatientID", "StudyDate",
        "StudyDescription", "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
    ]  # fmt: skip
    found = findscu(world, STUDY_ROOT, keys, tmp_path)
    by_uid = {ds.StudyInstanceUID: ds for ds in found}
    a, b, r = (world.studies[k] for k in "ABR")
    assert set(by_uid) == {a.uid, b.uid, r.uid}  # not county2's study C
    for ds in found:
        assert _keywords(ds) == {k.split("=")[0] for k in keys} | ADDED
        assert ds.RetrieveAETitle == "GATEWAY"
    assert by_uid[a.uid].PatientName == "Alpha^Anna"
    assert by_uid[a.uid].PatientID == "PA"
    assert by_uid[b.uid].NumberOfStudyRelatedInstances == len(b.files)
    assert by_uid[b.uid].StudyDate == "20240320"
    assert by_uid[a.uid].ModalitiesInStudy == "CT"


@pytest.mark.parametrize(
    ("model", "keys", "expected"),
    [
        (STUDY_ROOT, ["PatientName=Alpha*"], {"A"}),  # wildcard; county2's Alpha^Carl hidden
        (STUDY_ROOT, ["PatientName=alpha^anna"], {"A"}),  # PN matching is case-insensitive
        (STUDY_ROOT, ["PatientID=P?"], {"A", "B", "R"}),
        (STUDY_ROOT, ["StudyDate=20240101-20240131"], {"A"}),  # C (2024-01-15) is county2's
        (STUDY_ROOT, ["StudyDate=20240201-"], {"B"}),
        (STUDY_ROOT, ["StudyDate=-20231231"], {"R"}),
        (PATIENT_ROOT, ["PatientID=PB"], {"B"}),
        (STUDY_ROOT, ["PatientName=Nobody*"], set()),
    ],
)
def test_findscu_study_matching(
    world: World, tmp_path: Path, model: str, keys: list[str], expected: set[str]
) -> None:
    found = findscu(world, model, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys],
                    tmp_path)  # fmt: skip
    assert {ds.StudyInstanceUID for ds in found} == {world.studies[k].uid for k in expected}


def test_findscu_uid_list_and_other_sites_study(world: World, tmp_path: Path) -> None:
    a, b, c = (world.studies[k] for k in "ABC")
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a.uid}\\{b.uid}\\{c.uid}"]
    found = findscu(world, STUDY_ROOT, keys, tmp_path / "list")
    assert {ds.StudyInstanceUID for ds in found} == {a.uid, b.uid}
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={c.uid}"]
    assert findscu(world, STUDY_ROOT, keys, tmp_path / "c") == []


@pytest.mark.parametrize("model", [STUDY_ROOT, PATIENT_ROOT])
def test_findscu_series_and_image_levels(world: World, tmp_path: Path, model: str) -> None:
    a = world.studies["A"]
    upper = ["PatientID=PA"] if model == PATIENT_ROOT else []
    series = findscu(world, model, [
        "QueryRetrieveLevel=SERIES", *upper, f"StudyInstanceUID={a.uid}", "SeriesInstanceUID",
        "Modality", "NumberOfSeriesRelatedInstances",
    ], tmp_path / "series")  # fmt: skip
    assert [(ds.SeriesInstanceUID, ds.Modality) for ds in series] == [(a.series_uid, "CT")]
    assert series[0].NumberOfSeriesRelatedInstances == len(a.files)
    assert series[0].QueryRetrieveLevel == "SERIES"
    images = findscu(world, model, [
        "QueryRetrieveLevel=IMAGE", *upper, f"StudyInstanceUID={a.uid}",
        f"SeriesInstanceUID={a.series_uid}", "SOPInstanceUID", "InstanceNumber", "SOPClassUID",
    ], tmp_path / "image")  # fmt: skip
    assert {ds.SOPInstanceUID for ds in images} == a.sop_uids
    assert sorted(int(ds.InstanceNumber) for ds in images) == [1, 2, 3]
    assert {ds.SOPClassUID for ds in images} == {CTImageStorage}
    one = sorted(a.sop_uids)[0]
    single = findscu(world, model, [
        "QueryRetrieveLevel=IMAGE", *upper, f"StudyInstanceUID={a.uid}",
        f"SeriesInstanceUID={a.series_uid}", f"SOPInstanceUID={one}",
    ], tmp_path / "one")  # fmt: skip
    assert [ds.SOPInstanceUID for ds in single] == [one]


def test_findscu_patient_level(world: World, tmp_path: Path) -> None:
    found = findscu(world, PATIENT_ROOT, [
        "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "IssuerOfPatientID",
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ], tmp_path)  # fmt: skip
    by_id = {ds.PatientID: ds for ds in found}
    assert set(by_id) == {"PA", "PB", "PR"}  # never county2's PC
    for key in "ABR":
        study = world.studies[key]
        ds = by_id[study.patient_id]
        assert ds.NumberOfPatientRelatedStudies == 1
        assert ds.NumberOfPatientRelatedSeries == 1
        assert ds.NumberOfPatientRelatedInstances == len(study.files)
        assert ds.IssuerOfPatientID == "COUNTY1"
        assert ds.QueryRetrieveLevel == "PATIENT"
    assert str(by_id["PB"].PatientName) == "Beta^Bert"
    wildcard = findscu(world, PATIENT_ROOT, ["QueryRetrieveLevel=PATIENT", "PatientID",
                                             "PatientName=B*"], tmp_path / "w")  # fmt: skip
    assert [ds.PatientID for ds in wildcard] == ["PB"]


# -- C-FIND statuses with pynetdicom ----------------------------------------------------------


def _scu(world: World, *contexts: str, roles: list[object] | None = None) -> object:
    ae = AE(ae_title="CT1")
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", world.port, ae_title="GATEWAY", ext_neg=roles)
    assert assoc.is_established
    return assoc


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    if level:
        ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "*" is no valid UID, but a valid universal match
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("model", "level"),
    [
        (StudyRootQueryRetrieveInformationModelFind, "PATIENT"),  # no PATIENT in study root
        (StudyRootQueryRetrieveInformationModelFind, ""),
        (PatientRootQueryRetrieveInformationModelFind, "FRAME"),
    ],
)
def test_find_invalid_level_is_identifier_mismatch(world: World, model: str, level: str) -> None:
    assoc = _scu(world, model)
    try:
        responses = list(assoc.send_c_find(_identifier(level, PatientID=""), model))
    finally:
        assoc.release()
    assert [status.Status for status, _ in responses] == [0xA900]


def test_find_unsupported_key_answers_pending_warning(world: World) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    identifier = _identifier("STUDY", StudyInstanceUID=world.studies["A"].uid)
    identifier.add_new(0x00191010, "LO", "private")
    assoc = _scu(world, model)
    try:
        responses = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    assert [status.Status for status, _ in responses] == [0xFF01, 0x0000]
    assert responses[0][1].StudyInstanceUID == world.studies["A"].uid
    assert 0x00191010 not in responses[0][1]


def test_find_cancel(world: World) -> None:
    """A C-CANCEL ends the C-FIND with 0xFE00 and no further matches (PS3.4 C.4.1.2).

    The handler runs against the real centre, but with a stand-in for pynetdicom's event
    whose ``is_cancelled`` turns true after the first match: over a real association the
    moment a C-CANCEL is noticed depends on thread scheduling (pynetdicom also drops a cancel
    that arrives before the handler starts), which made this test fail on a loaded machine.
    Delivering the C-CANCEL and setting ``is_cancelled`` is pynetdicom's part."""
    b = world.studies["B"]
    model = StudyRootQueryRetrieveInformationModelFind
    request = C_FIND()
    request.MessageID, request.AffectedSOPClassUID = 7, model

    class CancelAfterFirst:
        def __init__(self) -> None:
            self.request = request
            self.identifier = _identifier("IMAGE", StudyInstanceUID=b.uid, SOPInstanceUID="")
            self.assoc = SimpleNamespace(
                requestor=SimpleNamespace(ae_title="CT1", address="127.0.0.1")
            )
            self.checks = 0

        @property
        def is_cancelled(self) -> bool:
            self.checks += 1
            return self.checks > 1

    responses = list(handle_find(CancelAfterFirst(), world.gateway.query_retrieve))
    assert [status for status, _ in responses] == [0xFF00, 0xFE00]
    uids = {pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID for f in b.files}
    assert responses[0][1].SOPInstanceUID in uids


def test_searches_are_audited_with_the_calling_ae(world: World) -> None:
    """Every look-up leaves an audit event naming the site's token and the study it showed:
    at the centre for a QIDO-RS search, in the gateway's batched writer for a catalog search
    (which also names the DIMSE operation and the calling AE title)."""
    a = world.studies["A"]
    assoc = _scu(world, StudyRootQueryRetrieveInformationModelFind)
    try:
        identifier = _identifier("STUDY", StudyInstanceUID=a.uid, PatientName="", RetrieveURL="")
        responses = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert [s.Status for s, _ in responses] == [0xFF00, 0x0000]
    # Either way the RetrieveURL is the centre's WADO-RS address of the study.
    assert responses[0][1].RetrieveURL == f"{world.centre.url}/dicomweb/studies/{a.uid}"
    searcher = world.gateway.query_retrieve.searcher
    if isinstance(searcher, CatalogSearch):
        searcher.audit.flush()
    else:
        world.centre.services.audit.flush()
    with world.centre.services.sessions() as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.detail, AuditEvent.outcome)
            .where(AuditEvent.study_uid == a.uid)
            .order_by(AuditEvent.id.desc())
        ).all()
    assert events, "no audit event for the study the C-FIND showed"
    actor, action, detail, outcome = events[0]
    assert actor == "site:county1" and outcome == "success"
    if world.search == "catalog":
        assert action == "c-find-study"
        assert detail.startswith("calling AE CT1:") and a.uid in detail
    else:
        assert action == "qido-study"


def test_a_revoked_site_token_gets_no_answers(world: World) -> None:
    """Revoking the gateway's token at the centre stops its look-ups at once, whichever way
    it searches (0xC002 for a C-FIND): the centre refuses the token, or the catalog search,
    which checks it on every search, does."""
    with world.centre.services.writer.begin() as session:
        token = create_site_token(session, "county1", "revoked-soon")
    settings = world.gateway.settings
    searcher = (
        CatalogSearch(settings, token, world.centre.url)
        if world.search == "catalog"
        else CentreSearch(CentreClient(world.centre.url, token, timeout=10, connections=1))
    )
    qr = QueryRetrieve(searcher, world.gateway.query_retrieve.source, lambda _: None, "GATEWAY")
    identifier = _identifier("STUDY", StudyInstanceUID=world.studies["A"].uid)
    requestor = Requestor("C-FIND", "CT1", "127.0.0.1")
    try:
        answer = qr.find(identifier, StudyRootQueryRetrieveInformationModelFind, requestor)
        assert answer.count == 1
        with world.centre.services.writer.begin() as session:
            assert revoke_site_tokens(session, "county1", name="revoked-soon") == 1
        with pytest.raises(CentreRefused):
            qr.find(identifier, StudyRootQueryRetrieveInformationModelFind, requestor)
    finally:
        searcher.close()


# -- C-MOVE -----------------------------------------------------------------------------------


def movescu(world: World, destination: str, keys: list[str]) -> subprocess.CompletedProcess[bytes]:
    args = [arg for key in keys for arg in ("-k", key)]
    return subprocess.run(
        [dcmtk("movescu"), "-S", "-d", "-aet", "CT1", "-aec", "GATEWAY", "-aem", destination,
         "127.0.0.1", str(world.port), *args],
        capture_output=True, timeout=120,
    )  # fmt: skip


def _received(directory: Path, uids: set[str], timeout: float = 30) -> dict[str, bytes]:
    """The files storescp wrote for ``uids``, by SOP Instance UID."""

    def collect() -> dict[str, bytes] | None:
        found = {}
        for path in directory.iterdir():
            try:
                data = path.read_bytes()
                uid = str(_header(data).SOPInstanceUID)
            except Exception:  # still being written
                continue
            if uid in uids:
                found[uid] = data
        return found if set(found) == uids else None

    result = wait_for(collect, timeout=timeout)
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("key", ["A", "R", "B"], ids=["spool", "rle-spool", "wado"])
def test_movescu_sends_the_study_byte_identical(world: World, key: str) -> None:
    study = world.studies[key]
    result = movescu(world, "VIEWER", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}"])
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    received = _received(world.viewer_dir, study.sop_uids)
    for data in study.files:
        uid = _header(data).SOPInstanceUID
        assert dataset_bytes(received[uid]) == dataset_bytes(data)
        meta = pydicom.dcmread(io.BytesIO(received[uid]), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == _header(data).file_meta.TransferSyntaxUID
    log = (result.stdout + result.stderr).decode()
    assert re.findall(r"Completed Suboperations\s*: (\d+)", log)[-1] == str(len(study.files))
    assert re.findall(r"DIMSE Status\s*: 0x(\w+)", log)[-1] == "0000"


def _move(world: World, destination: str, identifier: Dataset) -> list[Dataset]:
    model = StudyRootQueryRetrieveInformationModelMove
    assoc = _scu(world, model)
    try:
        return [status for status, _ in assoc.send_c_move(identifier, destination, model)]
    finally:
        assoc.release()


def test_move_unknown_destination(world: World) -> None:
    identifier = _identifier("STUDY", StudyInstanceUID=world.studies["A"].uid)
    statuses = _move(world, "NOBODY", identifier)
    assert [s.Status for s in statuses] == [0xA801]
    # CT1 is a modality of the site, but without an address
    assert [s.Status for s in _move(world, "CT1", identifier)] == [0xA801]


def test_move_of_another_sites_study_moves_nothing(world: World) -> None:
    identifier = _identifier("STUDY", StudyInstanceUID=world.studies["C"].uid)
    [final] = _move(world, "VIEWER", identifier)
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 0
    assert final.NumberOfFailedSuboperations == 0
    time.sleep(0.5)
    names = {p.name for p in world.viewer_dir.iterdir()}
    assert not any(uid in name for uid in world.studies["C"].sop_uids for name in names)


@pytest.mark.parametrize(
    "identifier",
    [_identifier("STUDY"), _identifier("STUDY", StudyInstanceUID="*"), _identifier("SERIES")],
    ids=["no-uid", "universal", "no-series-uid"],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_move_without_unique_key_is_refused(world: World, identifier: Dataset) -> None:
    statuses = _move(world, "VIEWER", identifier)
    assert statuses[-1].Status == 0xA900


def test_move_series_and_image_level(world: World) -> None:
    a = world.studies["A"]
    one = sorted(a.sop_uids)[0]
    identifier = _identifier("IMAGE", StudyInstanceUID=a.uid, SeriesInstanceUID=a.series_uid,
                             SOPInstanceUID=one)  # fmt: skip
    statuses = _move(world, "VIEWER", identifier)
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 1
    assert [s.Status for s in statuses[:-1]] == [0xFF00]
    identifier = _identifier("SERIES", StudyInstanceUID=a.uid, SeriesInstanceUID=a.series_uid)
    statuses = _move(world, "VIEWER", identifier)
    assert statuses[-1].NumberOfCompletedSuboperations == len(a.files)


# -- C-GET ------------------------------------------------------------------------------------


def test_getscu_receives_the_study(world: World, tmp_path: Path) -> None:
    for key in ("A", "B"):
        study = world.studies[key]
        out = tmp_path / key
        out.mkdir()
        result = subprocess.run(
            [dcmtk("getscu"), "-S", "-d", "-aet", "CT1", "-aec", "GATEWAY", "-od", str(out),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}",
             "127.0.0.1", str(world.port)],
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        received = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes()
            for p in out.iterdir()
        }
        assert set(received) == study.sop_uids
        for data in study.files:
            assert dataset_bytes(received[str(_header(data).SOPInstanceUID)]) == dataset_bytes(data)


def _get(world: World, identifier: Dataset, syntax: str) -> tuple[list[Dataset], list[Dataset]]:
    """C-GET with pynetdicom offering CT Image Storage in ``syntax`` only."""
    model = StudyRootQueryRetrieveInformationModelGet
    ae = AE(ae_title="CT1")
    ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage, syntax)
    received: list[Dataset] = []

    def on_store(event: object) -> int:
        ds = event.dataset  # type: ignore[attr-defined]
        ds.file_meta = event.file_meta  # type: ignore[attr-defined]
        received.append(ds)
        return 0x0000

    from pynetdicom import evt

    assoc = ae.associate("127.0.0.1", world.port, ae_title="GATEWAY",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    try:
        statuses = [status for status, _ in assoc.send_c_get(identifier, model)]
    finally:
        assoc.release()
    return statuses, received


def test_get_decompresses_for_a_peer_without_the_stored_syntax(world: World) -> None:
    r = world.studies["R"]
    statuses, received = _get(world, _identifier("STUDY", StudyInstanceUID=r.uid),
                              ExplicitVRLittleEndian)  # fmt: skip
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == len(r.files)
    originals = {str(_header(f).SOPInstanceUID): pydicom.dcmread(io.BytesIO(f)) for f in r.files}
    assert {str(ds.SOPInstanceUID) for ds in received} == set(originals)
    for ds in received:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)


def test_get_in_the_stored_syntax_when_offered(world: World) -> None:
    r = world.studies["R"]
    statuses, received = _get(world, _identifier("STUDY", StudyInstanceUID=r.uid), RLELossless)
    assert statuses[-1].Status == 0x0000
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {RLELossless}


def test_get_fails_sub_operations_the_peer_cannot_take(world: World) -> None:
    """An uncompressed instance cannot go over a JPEG-LS-only context: 0xA702, all failed."""
    a = world.studies["A"]
    statuses, received = _get(world, _identifier("STUDY", StudyInstanceUID=a.uid),
                              "1.2.840.10008.1.2.4.80")  # fmt: skip
    assert received == []
    final = statuses[-1]
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == len(a.files)


# -- where retrieved instances come from ------------------------------------------------------


def test_source_prefers_the_spool_and_falls_back_to_the_centre(world: World) -> None:
    source: InstanceSource = world.gateway.query_retrieve.source
    for key, origin in (("A", "spool"), ("B", "centre")):
        study = world.studies[key]
        refs = [
            InstanceRef(study.uid, study.series_uid, str(h.SOPInstanceUID), str(h.SOPClassUID))
            for h in map(_header, study.files[:2])
        ]
        annotated, copies = source.annotate(refs)
        for ref, data in zip(annotated, study.files[:2], strict=True):
            fetched = source.fetch(ref, copies.get(ref.sop_instance_uid))
            assert fetched.origin == origin
            assert dataset_bytes(fetched.data) == dataset_bytes(data)
