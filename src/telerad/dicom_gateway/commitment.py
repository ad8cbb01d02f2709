"""Storage Commitment Push Model, SCP side (PS3.4 Annex J).

The SCP's N-ACTION handler only parses the request and queues it here; a worker thread decides
and replies, because each handler runs on its association's thread and the answer depends on the
centre. An instance is committed only when the centre confirmed it durably stored with the hash
the gateway sent; instances never received, or refused by the centre, are failed at once; the
rest are waited for until ``timeout``, then failed with 0x0213 (resource limitation).

The N-EVENT-REPORT (PS3.4 J.3.3, Event Type 1 all committed, 2 some failed) goes on the
requesting association if it is still open, otherwise on a new association to the modality's
configured address, proposing the SCP role for the Storage Commitment SOP Class (PS3.4 J.3.3,
PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from telerad.dicom_gateway.outbox import CONFIRMED, DEAD, Outbox
from telerad.dicom_gateway.site import Address
from telerad.storage import is_valid_uid

logger = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.1).
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
#: Failure Reason (0008,1197) values, PS3.4 J.3.3.1.
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
RESOURCE_LIMITATION = 0x0213


@dataclass(frozen=True, slots=True)
class CommitmentItems:
    """The parsed Action Information of an N-ACTION (PS3.4 Table J.3-1)."""

    transaction_uid: str
    references: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID)


@dataclass(slots=True)
class CommitmentRequest:
    """A queued request: who asked, what, and the association it came on (may have ended)."""

    calling_ae: str
    items: CommitmentItems
    association: Any
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """The decision: committed references, and failed ones with their reasons."""

    transaction_uid: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]

    @property
    def event_type(self) -> int:
        """1: Storage Commitment Request Successful; 2: Complete - Failures Exist."""
        return 2 if self.failed else 1

    def to_dataset(self) -> Dataset:
        """The Event Information of the N-EVENT-REPORT (PS3.4 Tables J.3-2 and J.3-3)."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if self.committed:
            ds.ReferencedSOPSequence = DicomSequence(
                [_reference(cls, uid) for cls, uid in self.committed]
            )
        if self.failed:
            items = []
            for cls, uid, reason in self.failed:
                item = _reference(cls, uid)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = DicomSequence(items)
        return ds


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def parse_commitment_request(info: Dataset | None) -> CommitmentItems:
    """Validate the N-ACTION Action Information.

    Raises
    ------
    ValueError
        No valid Transaction UID, or no Referenced SOP Sequence with valid UIDs.
    """
    if info is None:
        raise ValueError("no Action Information")
    transaction_uid = str(info.get("TransactionUID", ""))
    if not is_valid_uid(transaction_uid):
        raise ValueError("Transaction UID missing or invalid")
    references = []
    for item in info.get("ReferencedSOPSequence", []):
        pair = (str(item.get("ReferencedSOPClassUID", "")),
                str(item.get("ReferencedSOPInstanceUID", "")))  # fmt: skip
        if not all(is_valid_uid(uid) for uid in pair):
            raise ValueError("a Referenced SOP Sequence item has an invalid UID")
        references.append(pair)
    if not references:
        raise ValueError("Referenced SOP Sequence is empty")
    return CommitmentItems(transaction_uid, tuple(references))


def decide(items: CommitmentItems, outbox: Outbox, *, final: bool) -> CommitmentResult | None:
    """Committed = confirmed by the centre with the same SOP Class; ``None`` while some are
    still on their way (unless ``final``: then those fail with 0x0213)."""
    received = outbox.received_states([uid for _, uid in items.references])
    committed: list[tuple[str, str]] = []
    failed: list[tuple[str, str, int]] = []
    waiting = False
    for cls, uid in items.references:
        state, stored_class = received.get(uid, (None, None))
        if state == CONFIRMED and stored_class == cls:
            committed.append((cls, uid))
        elif state == CONFIRMED:
            failed.append((cls, uid, CLASS_INSTANCE_CONFLICT))
        elif state is None:
            failed.append((cls, uid, NO_SUCH_OBJECT_INSTANCE))
        elif state == DEAD:
            failed.append((cls, uid, PROCESSING_FAILURE))
        elif final:
            failed.append((cls, uid, RESOURCE_LIMITATION))
        else:
            waiting = True
    if waiting:
        return None
    return CommitmentResult(items.transaction_uid, tuple(committed), tuple(failed))


class Committer:
    """The worker that answers Storage Commitment requests."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        ae_title: str,
        addresses: Callable[[str], Address | None],
        timeout: float,
        poll_seconds: float = 0.5,
    ) -> None:
        self.outbox = outbox
        self.ae_title = ae_title
        self.addresses = addresses
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self._queue: queue.Queue[CommitmentRequest] = queue.Queue()
        self._pending: list[CommitmentRequest] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent: list[tuple[str, int, str]] = []  # (transaction UID, event type, how)

    def submit(self, request: CommitmentRequest) -> None:
        """Queue a request (called from the association thread; returns at once)."""
        logger.info(
            "storage commitment %s from %s: %d instances", request.items.transaction_uid,
            request.calling_ae, len(request.items.references),
        )  # fmt: skip
        self._queue.put(request)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="stg-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (requests not answered yet are lost with the process; the modality
        asks again — PS3.4 J.3.3 lets the SCU re-request with the same Transaction UID)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain()
            still: list[CommitmentRequest] = []
            for request in self._pending:
                final = time.time() - request.received_at >= self.timeout
                result = decide(request.items, self.outbox, final=final)
                if result is None:
                    still.append(request)
                else:
                    self._reply(request, result)
            self._pending = still
            self._stop.wait(self.poll_seconds)

    def _drain(self) -> None:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _reply(self, request: CommitmentRequest, result: CommitmentResult) -> None:
        try:
            how = self._send(request, result)
        except Exception:
            logger.exception("storage commitment %s: reply failed", result.transaction_uid)
            return
        self.sent.append((result.transaction_uid, result.event_type, how))
        logger.info(
            "storage commitment %s to %s: %d committed, %d failed (%s)",
            result.transaction_uid, request.calling_ae, len(result.committed),
            len(result.failed), how,
        )  # fmt: skip

    def _send(self, request: CommitmentRequest, result: CommitmentResult) -> str:
        association = request.association
        open_association = association is not None and association.is_established
        if open_association and _send_on(association, result, timeout=30.0):
            return "same association"
        address = self.addresses(request.calling_ae)
        if address is None:
            raise RuntimeError(f"no address configured for modality {request.calling_ae}")
        self._send_new_association(request.calling_ae, address, result)
        return "new association"

    def _send_new_association(
        self, calling_ae: str, address: Address, result: CommitmentResult
    ) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        association = ae.associate(address[0], address[1], ae_title=calling_ae, ext_neg=[role])
        if not association.is_established:
            raise RuntimeError(f"modality {calling_ae} at {address} refused the association")
        try:
            status = association.send_n_event_report(
                result.to_dataset(), result.event_type, StorageCommitmentPushModel,
                COMMITMENT_INSTANCE_UID,
            )[0]  # fmt: skip
            if status is None or status.get("Status") != 0x0000:
                raise RuntimeError(f"N-EVENT-REPORT answered {status}")
        finally:
            association.release()


def _send_on(association: Any, result: CommitmentResult, *, timeout: float) -> bool:
    """Send on the still-open association, in a helper thread: pynetdicom pauses the acceptor's
    reactor for it and could wait forever if the association ends at that very moment."""
    outcome: list[bool] = []

    def send() -> None:
        try:
            status = association.send_n_event_report(
                result.to_dataset(), result.event_type, StorageCommitmentPushModel,
                COMMITMENT_INSTANCE_UID,
            )[0]  # fmt: skip
            outcome.append(status is not None and status.get("Status") == 0x0000)
        except Exception:
            logger.exception("N-EVENT-REPORT on the open association failed")
            outcome.append(False)

    thread = threading.Thread(target=send, name="stg-commit-send", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])
