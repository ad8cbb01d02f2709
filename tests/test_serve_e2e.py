"""End to end as a newcomer would do it: ``telerad serve`` with no configuration, accounts
made with the CLI, a 100-slice CT stored with dicomweb-client (a client we did not write),
found by QIDO-RS for the right people and invisible to the others; a 300-slice CT sent with
dcmtk's storescu to the gateway that ``serve`` runs, complete at the centre, byte-identical."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import select

from telerad.demo import generate_ct_study, write_ct_study
from telerad.storage import Instance, create_catalog_engine, open_object_store, session_factory
from tests.dcmtk import dcmtk
from tests.dicom_gateway.conftest import dataset_bytes

ADMIN_PASSWORD = "first admin password"
USER_PASSWORD = "radiographer password"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _telerad(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "telerad.cli", "--data-dir", str(data_dir), *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    port, dicom_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELERAD_")}
    env["TELERAD_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    env["TELERAD_GATEWAY__STATUS_PORT"] = "0"
    env["TELERAD_GATEWAY__STABLE_SECONDS"] = "2"
    log = (tmp_path / "serve.log").open("w")  # a file, not a pipe nobody reads (it would fill)
    process = subprocess.Popen(
        [sys.executable, "-m", "telerad.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--http-port", str(port), "--dicom-port", str(dicom_port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # migrations and start-up on a loaded 2-core machine
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or slow to answer
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("telerad serve did not start: " + (tmp_path / "serve.log").read_text())
            time.sleep(0.1)
        process.dicom_port = dicom_port  # type: ignore[attr-defined]
        yield base, tmp_path / "data", process
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _login(base: str, username: str, password: str) -> str:
    response = requests.post(
        f"{base}/api/auth/token", data={"username": username, "password": password}, timeout=10
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _client(base: str, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def test_store_and_find_a_100_slice_ct(server: tuple[str, Path, subprocess.Popen[str]]) -> None:
    base, data_dir, _process = server
    _telerad(data_dir, "site", "add", "county1", "--issuer", "COUNTY1", "--ae", "CT1")
    _telerad(data_dir, "site", "add", "county2")
    _telerad(data_dir, "user", "add", "rg1", "--role", "radiographer", "--site", "county1",
             "--password-stdin", stdin=USER_PASSWORD + "\n")  # fmt: skip
    _telerad(data_dir, "user", "add", "rg2", "--role", "radiographer", "--site", "county2",
             "--password-stdin", stdin=USER_PASSWORD + "\n")  # fmt: skip
    site_token = _telerad(data_dir, "site", "token", "county1").strip()
    assert site_token.startswith("trs_")

    datasets = list(generate_ct_study(100, patient_name="Wang^XiaoDong=王^小东", patient_id="CN-7"))
    study_uid = str(datasets[0].StudyInstanceUID)
    gateway = _client(base, site_token)
    for start in range(0, 100, 25):
        response = gateway.store_instances(datasets[start : start + 25])
        assert len(response.ReferencedSOPSequence) == 25
        assert "FailedSOPSequence" not in response

    for who, password in (("admin", ADMIN_PASSWORD), ("rg1", USER_PASSWORD)):
        client = _client(base, _login(base, who, password))
        studies = client.search_for_studies(search_filters={"PatientName": "王*"})
        assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
        study = studies[0]
        assert study["00201208"]["Value"] == [100]  # NumberOfStudyRelatedInstances
        assert study["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
        assert study["00080061"]["Value"] == ["CT"]
        assert study["00100010"]["Value"][0]["Ideographic"] == "王^小东"
        assert study["00100020"]["Value"] == ["CN-7"]
        series = client.search_for_series(study_instance_uid=study_uid)
        assert series[0]["00201209"]["Value"] == [100]
        instances = client.search_for_instances(study_instance_uid=study_uid)
        assert len(instances) == 100
        assert {i["00280010"]["Value"][0] for i in instances} == {512}

    other = _client(base, _login(base, "rg2", USER_PASSWORD))
    assert other.search_for_studies(search_filters={"StudyInstanceUID": study_uid}) == []
    assert other.search_for_series(study_instance_uid=study_uid) == []


def _wait_complete(base: str, token: str, study_uid: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        response = requests.get(
            f"{base}/api/studies/{study_uid}/status",
            headers={"Authorization": f"Bearer {token}"}, timeout=10,
        )  # fmt: skip
        if response.status_code == 200:
            status = response.json()
            if status["complete"]:
                return status
        time.sleep(0.5)
    pytest.fail(f"study not complete at the centre: {status}")


def _wait_port(port: int) -> None:
    for _ in range(200):
        result = subprocess.run(
            [dcmtk("echoscu"), "-aec", "TELERAD", "127.0.0.1", str(port)],
            capture_output=True, timeout=10,
        )  # fmt: skip
        if result.returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail("the gateway's DICOM port never answered C-ECHO")


@pytest.mark.slow
def test_storescu_300_slice_ct_arrives_complete_and_identical(
    server: tuple[str, Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    base, data_dir, process = server
    port = process.dicom_port  # type: ignore[attr-defined]
    files = write_ct_study(tmp_path / "ct", slices=300)
    _wait_port(port)
    sent = subprocess.run(
        [dcmtk("storescu"), "-aet", "CT1", "-aec", "TELERAD", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=600, env={"TCP_NODELAY": "1"},
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    token = _login(base, "admin", ADMIN_PASSWORD)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    status = _wait_complete(base, token, study_uid)
    assert status["received"] == status["expected"] == 300

    client = _client(base, token)
    assert len(client.search_for_instances(study_instance_uid=study_uid)) == 300
    originals = sorted(dataset_bytes(p.read_bytes()) for p in files)
    engine = create_catalog_engine(f"sqlite:///{data_dir / 'telerad.db'}")
    objects = open_object_store("filesystem", root=data_dir / "objects")
    try:
        with session_factory(engine)() as session:
            keys = session.scalars(select(Instance.object_key)).all()
        stored = sorted(dataset_bytes(objects.get(key)) for key in keys)
    finally:
        engine.dispose()
    assert stored == originals  # every attribute and the pixel data, byte for byte


def test_demo_send_reaches_the_centre(
    server: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    base, data_dir, process = server
    port = process.dicom_port  # type: ignore[attr-defined]
    _wait_port(port)
    out = _telerad(data_dir, "demo", "--send", "--slices", "5", "--port", str(port))
    assert "sent 5 CT slices" in out and "0x0000: 5" in out
    token = _login(base, "admin", ADMIN_PASSWORD)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        studies = _client(base, token).search_for_studies()
        if studies and studies[0]["00201208"]["Value"] == [5]:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the demo study did not reach the centre")
