"""Receiving one instance at the edge: check it, spool it, record it — or refuse it whole.

This is the domain call behind the C-STORE handler. The checks are the centre's own
(:func:`telerad.storage.check_instance`), so the gateway never acknowledges an instance the
centre would refuse; pixel data is never decoded. The spool writes and syncs the file while the
instance is checked and hashed (:meth:`Spool.begin`); a refused instance's partial file is
removed before the handler answers.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass

from telerad.dicom_gateway.errors import RequestMismatch, SpoolFull, SpoolUnavailable
from telerad.dicom_gateway.outbox import ROUTINE, Outbox, Received
from telerad.dicom_gateway.spool import Spool
from telerad.storage import InstanceHeader, InvalidInstance, check_instance

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """What the C-STORE request said about the data set it carried (PS3.7 §9.1.1.1)."""

    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    priority: int = ROUTINE


class Receiver:
    """Spool plus outbox: the one place instances enter the gateway."""

    def __init__(self, spool: Spool, outbox: Outbox) -> None:
        self.spool = spool
        self.outbox = outbox

    def store(self, data: bytes, request: StoreRequest) -> bool:
        """Keep a Part-10 instance durably; ``False`` if this exact content was already kept.

        Raises
        ------
        InvalidInstance
            The centre's ingest checks refuse it.
        RequestMismatch
            Its SOP Class or Instance UID is not the request's.
        SpoolFull, SpoolUnavailable
            Nothing was written.
        """
        pending = self.spool.begin(data)  # the disk syncs it while we check it
        try:
            # hashing first: it releases the GIL, so the spool thread can start its write
            sha256 = hashlib.sha256(data).hexdigest()
            header = check_instance(data)
            if (header.sop_class_uid, header.sop_instance_uid) != (
                request.sop_class_uid,
                request.sop_instance_uid,
            ):
                raise RequestMismatch(
                    "the data set's SOP Class/Instance UID differ from the request"
                )
            if self.outbox.known_sha256(header.sop_instance_uid, sha256):
                pending.discard()
                return False
            relative = pending.finish()
        except BaseException:
            pending.discard()
            raise
        return self._record(relative, data, header, sha256, request)

    def reindex(self, relative: str) -> bool:
        """Index a complete spool file no outbox row names (left by a crash after its rename:
        the modality may have been told it is stored). Unusable files are removed."""
        data = self.spool.read(relative)
        try:
            header = check_instance(data)
        except InvalidInstance:
            logger.warning("removed unreadable spool file %s", relative)
            self.spool.remove(relative)
            return False
        sha256 = hashlib.sha256(data).hexdigest()
        request = StoreRequest("(recovered)", header.sop_class_uid, header.sop_instance_uid)
        return self._record(relative, data, header, sha256, request)

    def _record(
        self,
        relative: str,
        data: bytes,
        header: InstanceHeader,
        sha256: str,
        request: StoreRequest,
    ) -> bool:
        item = Received(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            calling_ae=request.calling_ae,
            path=relative,
            size=len(data),
            sha256=sha256,
            priority=request.priority,
        )
        try:
            new = self.outbox.record(item)
        except sqlite3.Error as exc:
            self.spool.remove(relative)
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise SpoolFull("the outbox disk is full") from exc
            raise SpoolUnavailable(f"outbox not writable: {exc}") from exc
        except BaseException:
            self.spool.remove(relative)
            raise
        if not new:
            self.spool.remove(relative)
        return new
