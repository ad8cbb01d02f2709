"""DICOM over TLS (PS3.15 Annex B.1): the listener requires a client certificate signed by the
configured CA; a modality with one stores, one without cannot even associate."""

from __future__ import annotations

import io
import ssl
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from telerad.demo import ct_study_bytes
from tests.dicom_gateway.conftest import free_port, gateway_settings, running_gateway


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=telerad test CA", "-keyout", str(d / "ca.key"),
             "-out", str(d / "ca.pem"))  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return d


def _client_context(pki: Path, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_certificate:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context


def test_tls_with_client_certificates(pki: Path, tmp_path: Path) -> None:
    settings = gateway_settings(
        tmp_path, modalities=[{"ae_title": "CT1"}],
        dicom={"tls_certificate": str(pki / "server.pem"),
               "tls_private_key": str(pki / "server.key"),
               "tls_client_ca": str(pki / "ca.pem")},
    )  # fmt: skip
    dataset = pydicom.dcmread(io.BytesIO(ct_study_bytes(1, rows=32, columns=32)[0]))
    with running_gateway(settings, f"http://127.0.0.1:{free_port()}", "trs_unused") as gw:
        modality = AE(ae_title="CT1")
        modality.add_requested_context(CTImageStorage)
        good = modality.associate(
            "127.0.0.1", gw.dicom_port, ae_title="GATEWAY",
            tls_args=(_client_context(pki, with_certificate=True), "127.0.0.1"),
        )  # fmt: skip
        assert good.is_established
        assert good.send_c_store(dataset).Status == 0x0000
        good.release()
        anonymous = modality.associate(
            "127.0.0.1", gw.dicom_port, ae_title="GATEWAY",
            tls_args=(_client_context(pki, with_certificate=False), "127.0.0.1"),
        )  # fmt: skip
        assert not anonymous.is_established
        plain = modality.associate("127.0.0.1", gw.dicom_port, ae_title="GATEWAY")
        assert not plain.is_established
        rows = gw.outbox.items(str(dataset.StudyInstanceUID))
    assert [r.sop_instance_uid for r in rows] == [str(dataset.SOPInstanceUID)]
