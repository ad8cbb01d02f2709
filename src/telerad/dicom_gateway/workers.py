"""Extra SCP processes sharing the DICOM port (SO_REUSEPORT), so that several associations
use several cores: pynetdicom decodes PDUs in Python, one association per thread, under one GIL.

Each worker runs only the listener and its own Storage Commitment worker, over the same spool
directory and outbox file (SQLite serialises their commits); the main process forwards. The
allowed calling AE titles come from the site file the main process keeps (``site.json``),
re-read when it changes. A worker dies with its parent (``PR_SET_PDEATHSIG``), so a killed
gateway never leaves a listener behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from telerad.dicom_gateway.commitment import Committer
from telerad.dicom_gateway.outbox import Outbox
from telerad.dicom_gateway.qr import build_query_retrieve
from telerad.dicom_gateway.receiver import Receiver
from telerad.dicom_gateway.scp import CallingAePolicy, quiet_pynetdicom, start_scp
from telerad.dicom_gateway.site import Address, SiteConfig
from telerad.dicom_gateway.spool import Spool
from telerad.settings import Settings

logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def start_workers(
    settings: Settings, count: int, centre: tuple[str, str] | None = None
) -> list[BaseProcess]:
    """Start ``count`` SCP worker processes (spawned: no threads or sockets inherited).

    ``centre`` is the centre's URL and the site token, for the query/retrieve SCP; they reach
    the child through multiprocessing's pipe, never its command line or environment."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    for index in range(count):
        process = context.Process(
            target=run_worker, args=(_worker_settings(settings), index, centre),
            name=f"scp-{index}", daemon=True,
        )  # fmt: skip
        process.start()
        processes.append(process)
    return processes


def stop_workers(processes: list[BaseProcess]) -> None:
    """SIGTERM, then SIGKILL whoever does not stop within 10 s."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def _worker_settings(settings: Settings) -> dict[str, Any]:
    """What a worker needs, as plain values (secrets such as the site token are not sent; the
    rest of its settings come from the environment it inherits, as the parent's did)."""
    return {
        "data_dir": str(settings.data_dir),
        "dicom": settings.dicom.model_dump(mode="json"),
        "gateway": settings.gateway.model_dump(mode="json", exclude={"site_token"}),
        # The centre's database, which a gateway beside it searches (gateway.local_catalog).
        "database": settings.database.model_dump(mode="json"),
    }


def run_worker(options: dict[str, Any], index: int, centre: tuple[str, str] | None = None) -> None:
    """Entry point of a worker process."""
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s scp-{index} %(name)s: %(message)s"
    )
    quiet_pynetdicom()
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    settings = Settings(**options)
    directory = settings.gateway_path
    outbox = Outbox(directory / "outbox.db")
    spool = Spool(directory, min_free_bytes=settings.gateway.min_free_bytes)
    site = SiteFile(directory / "site.json", settings)
    committer = Committer(
        outbox, ae_title=settings.dicom.ae_title, addresses=site.address_of,
        timeout=settings.gateway.commitment_timeout,
    )  # fmt: skip
    committer.start()
    qr = build_query_retrieve(settings, outbox, spool, site.address_of, *centre) if centre else None
    server = start_scp(settings.dicom, Receiver(spool, outbox), committer, site.policy, qr)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    while not stopping.wait(2.0):
        site.reload()
    server.shutdown()
    committer.stop()
    if qr is not None:
        qr.close()
    outbox.close()
    sys.exit(0)


class SiteFile:
    """The main process's ``site.json`` (or the settings' modalities), as a calling AE policy."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.policy = CallingAePolicy(
            accept_any=settings.gateway.accept_any_ae, refresh=self.reload
        )
        self.site = SiteConfig(tuple(settings.gateway.modalities), settings.gateway.accept_any_ae)
        self._mtime = -1.0
        self.reload()

    def reload(self) -> None:
        """Apply the file if it changed since the last look (settings' modalities win)."""
        if not self.settings.gateway.modalities:
            try:
                mtime = self.path.stat().st_mtime
                if mtime == self._mtime:
                    return
                self.site = SiteConfig.from_document(json.loads(self.path.read_text()))
            except (OSError, ValueError):
                return
            self._mtime = mtime
        accept_any = self.site.accept_any or self.settings.gateway.accept_any_ae
        self.policy.update(self.site.ae_titles, accept_any=accept_any)

    def address_of(self, ae_title: str) -> Address | None:
        """Where a modality accepts Storage Commitment replies."""
        return self.site.address_of(ae_title)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, however it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(1)
