"""One gateway: SCP, spool, outbox, forwarder, manifests, storage commitment, status page.

Start-up restarts where the last run stopped: rows a killed process left ``sending`` are pending
again, spool files no row names are removed, and the forwarder resumes with what the centre has
not acknowledged. The calling AE titles come from the settings when listed there, otherwise
from the centre (``GET /api/sites/me``, refreshed every minute and cached in the gateway
directory for when the WAN is down).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from multiprocessing.process import BaseProcess
from pathlib import Path
from urllib.parse import urlsplit

from telerad.dicom_gateway.centre import CentreClient
from telerad.dicom_gateway.commitment import Committer
from telerad.dicom_gateway.errors import CentreError
from telerad.dicom_gateway.forwarder import Completeness, Forwarder
from telerad.dicom_gateway.outbox import Outbox
from telerad.dicom_gateway.qr import build_query_retrieve
from telerad.dicom_gateway.receiver import Receiver
from telerad.dicom_gateway.scp import CallingAePolicy, FastAssociationServer, start_scp
from telerad.dicom_gateway.site import Address, SiteConfig
from telerad.dicom_gateway.spool import Spool
from telerad.dicom_gateway.workers import start_workers, stop_workers
from telerad.settings import Settings

logger = logging.getLogger(__name__)
_SITE_REFRESH_SECONDS = 60.0


def wire_mode(settings: Settings, centre_url: str) -> str:
    """``auto`` means no transcoding over loopback (CPU is dearer than bytes there)."""
    mode = settings.gateway.wire
    if mode != "auto":
        return mode
    host = urlsplit(centre_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return "none" if loopback else "lossless"


class Gateway:
    """Build with settings, :meth:`start`, :meth:`stop`."""

    def __init__(self, settings: Settings, *, centre_url: str, site_token: str) -> None:
        self.settings = settings
        self.directory: Path = settings.gateway_path
        self.outbox = Outbox(self.directory / "outbox.db")
        self.spool = Spool(self.directory, min_free_bytes=settings.gateway.min_free_bytes)
        self.receiver = Receiver(self.spool, self.outbox)
        gateway = settings.gateway
        self.client = CentreClient(
            centre_url, site_token, timeout=gateway.request_timeout,
            connections=gateway.parallel + 2,
        )  # fmt: skip
        self._centre = (centre_url, site_token)
        self.query_retrieve = build_query_retrieve(
            settings, self.outbox, self.spool, self.address_of, centre_url, site_token
        )
        self.wire = wire_mode(settings, centre_url)
        self.policy = CallingAePolicy(accept_any=gateway.accept_any_ae)
        self._site = SiteConfig(tuple(gateway.modalities), gateway.accept_any_ae)
        self.committer = Committer(
            self.outbox, ae_title=settings.dicom.ae_title, addresses=self.address_of,
            timeout=gateway.commitment_timeout,
        )  # fmt: skip
        self.forwarder = Forwarder(self.outbox, self.spool, self.client, gateway, wire=self.wire)
        self.completeness = Completeness(self.outbox, self.client, gateway, self.spool)
        self.server: FastAssociationServer | None = None
        self._stop = threading.Event()
        self._site_thread: threading.Thread | None = None
        self._fetched = False
        self._workers: list[BaseProcess] = []

    # -- life cycle --------------------------------------------------------------------------

    def recover(self) -> None:
        """Undo what a killed process left half done (see the module docstring)."""
        requeued = self.outbox.recover()
        orphans = self.spool.unreferenced(self.outbox.spooled_paths())
        indexed = sum(self.receiver.reindex(relative) for relative in orphans)
        counts = self.outbox.counts()
        logger.info(
            "gateway outbox: %s; %d in-flight requeued, %d spool files indexed again",
            counts, requeued, indexed,
        )  # fmt: skip

    def start(self, *, scp: bool = True) -> None:
        """Recover, then start every part (``scp=False``: forwarding only)."""
        self.recover()
        self.refresh_site()
        self.committer.start()
        self.forwarder.start()
        self.completeness.start()
        if not self.settings.gateway.modalities:
            self._site_thread = threading.Thread(
                target=self._refresh_loop, name="site-sync", daemon=True
            )
            self._site_thread.start()
        if scp:
            self.server = start_scp(self.settings.dicom, self.receiver, self.committer,
                                    self.policy, self.query_retrieve)  # fmt: skip
            extra = (self.settings.dicom.workers or os.cpu_count() or 1) - 1
            self._workers = start_workers(self.settings, extra, self._centre) if extra > 0 else []
        if self.policy.accept_any:
            logger.warning(
                "DEVELOPMENT MODE: the DICOM listener accepts ANY calling AE title; "
                "list the site's modalities to restrict it"
            )

    def stop(self) -> None:
        """Stop listening, then the workers; the outbox keeps everything not yet sent."""
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()  # also closes the socket
        stop_workers(self._workers)
        self.forwarder.stop()
        self.completeness.stop()
        self.committer.stop()
        self.client.close()
        self.query_retrieve.close()
        self.outbox.close()

    @property
    def dicom_port(self) -> int:
        """The bound DICOM port (useful when configured as 0 in tests)."""
        return int(self.server.server_address[1]) if self.server else self.settings.dicom.port

    # -- the site's modalities ---------------------------------------------------------------

    def refresh_site(self) -> None:
        """Load the allowed modalities: settings, else the centre, else the cached copy."""
        if self.settings.gateway.modalities:
            self._apply(self._site)
            return
        cache = self.directory / "site.json"
        try:
            site = self.client.site()
        except CentreError as exc:
            logger.warning("cannot fetch the site's modalities from the centre: %s", exc)
            if cache.exists() and not self._site.modalities and not self._site.accept_any:
                self._apply(SiteConfig.from_document(json.loads(cache.read_text())))
            return
        _write_atomic(cache, json.dumps(site))
        self._fetched = True
        self._apply(SiteConfig.from_document(site))

    def _apply(self, site: SiteConfig) -> None:
        self._site = site
        titles = site.ae_titles
        self.policy.update(
            titles, accept_any=site.accept_any or self.settings.gateway.accept_any_ae
        )

    def _refresh_loop(self) -> None:
        interval = 2.0 if self._fetched is False else _SITE_REFRESH_SECONDS
        while not self._stop.wait(interval):
            self.refresh_site()
            interval = _SITE_REFRESH_SECONDS if self._fetched else 2.0

    def address_of(self, ae_title: str) -> Address | None:
        """Where a modality listens for Storage Commitment replies on a new association."""
        return self._site.address_of(ae_title)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
