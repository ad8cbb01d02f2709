"""Fixtures for the gateway: a live centre over real HTTP, a gateway on a free DICOM port,
dcmtk's tools (not pynetdicom's console scripts of the same names)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import uvicorn

from telerad.dicom_gateway import Gateway
from telerad.settings import Settings
from telerad.viewer_api import Services, create_app
from telerad.viewer_api.services import build_services
from telerad.worklist import add_modality, create_site, create_site_token, site_by_name
from tests.dcmtk import dcmtk  # noqa: F401 - re-exported for the tests


def dataset_bytes(data: bytes) -> bytes:
    """The encoded data set after the File Meta group (PS3.10 §7.1). Through DIMSE only the data
    set travels; the receiver writes its own File Meta (implementation UID and name), so this is
    what "unchanged" means for an instance sent over DICOM."""
    stream = io.BytesIO(data)
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    return data[stream.tell() :]


def free_port() -> int:
    """A TCP port free at this moment on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Centre:
    """The central API served by uvicorn on a real socket."""

    url: str
    port: int
    services: Services
    site_token: str
    server: uvicorn.Server


@contextmanager
def live_centre(
    database_url: str, directory: Path, *, modality_port: int | None = None
) -> Iterator[Centre]:
    """Sites county1 (modality CT1, optionally with a commitment address) and county2."""
    settings = Settings(data_dir=directory / "centre", database={"url": database_url})
    services = build_services(settings)
    with services.writer.begin() as session:
        create_site(session, "county1", issuer="COUNTY1")
        site = site_by_name(session, "county1")
        add_modality(session, site, "CT1", "127.0.0.1" if modality_port else None, modality_port)
        create_site(session, "county2", issuer="COUNTY2", ae_titles=("CT2",))
        token = create_site_token(session, "county1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        create_app(settings, services), log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Centre(f"http://127.0.0.1:{port}", port, services, token, server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        services.close()


def gateway_settings(
    directory: Path,
    *,
    dicom: dict[str, Any] | None = None,
    database_url: str | None = None,
    **gateway: Any,
) -> Settings:
    """Gateway settings for tests: quick stability and backoff, no status page, one SCP
    process; ``dicom`` overrides listener settings (timeouts, workers); ``database_url`` is
    the centre's database, for ``local_catalog=True``."""
    options: dict[str, Any] = {
        "stable_seconds": 1.0, "backoff_seconds": 0.2, "backoff_max_seconds": 2.0,
        "status_port": 0, "min_free_bytes": 0, "request_timeout": 20.0,
    }  # fmt: skip
    options.update(gateway)
    return Settings(
        data_dir=directory,
        dicom={
            "host": "127.0.0.1",
            "port": free_port(),
            "ae_title": "GATEWAY",
            "workers": 1,
            **(dicom or {}),
        },
        gateway=options,
        database={"url": database_url},
    )


@contextmanager
def running_gateway(settings: Settings, centre_url: str, token: str) -> Iterator[Gateway]:
    """A started gateway, stopped afterwards."""
    gateway = Gateway(settings, centre_url=centre_url, site_token=token)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with a message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")
