"""What C-MOVE and C-GET send (PS3.4 C.4.2, C.4.3): the matching instances, each exactly as
stored, from the spool when the gateway still holds the copy the centre confirmed (no WAN),
otherwise from the centre by WADO-RS (PS3.18 §10.4.1.1.3, ``transfer-syntax=*``).

Each instance goes in its stored transfer syntax when the Storage SCP accepted it (the data
set bytes are unchanged: pydicom writes elements it never parsed as they were read). When the
peer accepted only other syntaxes, pynetdicom converts between the uncompressed ones and the
gateway decompresses a compressed one to Explicit VR Little Endian (pydicom's pixel data
handlers); what cannot be sent either way counts as a failed sub-operation.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

from telerad.dicom_gateway.centre import CentreClient
from telerad.dicom_gateway.outbox import LocalCopy, Outbox
from telerad.dicom_gateway.spool import Spool

logger = logging.getLogger(__name__)
#: pynetdicom's (and PS3.8 §9.3.2.2's) limit of presentation contexts per association.
MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One matching instance, from the centre's QIDO-RS answer."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    #: The stored transfer syntax, when the gateway knows it from its outbox.
    transfer_syntax_uid: str | None = None

    @classmethod
    def from_json(cls, match: dict[str, Any]) -> InstanceRef:
        """From an instance-level QIDO-RS result (PS3.18 Table 10.6.3-5)."""

        def value(tag: str) -> str:
            return str((match.get(tag, {}).get("Value") or [""])[0])

        return cls(value("0020000D"), value("0020000E"), value("00080018"), value("00080016"))


@dataclass(frozen=True, slots=True)
class Fetched:
    """An instance's Part-10 bytes and where they came from (``spool`` or ``centre``)."""

    data: bytes
    origin: str


class InstanceSource:
    """Fetch matching instances: spool first, centre otherwise."""

    def __init__(self, outbox: Outbox, spool: Spool, client: CentreClient) -> None:
        self.outbox = outbox
        self.spool = spool
        self.client = client

    def annotate(
        self, refs: Sequence[InstanceRef]
    ) -> tuple[list[InstanceRef], dict[str, LocalCopy]]:
        """The references with their stored transfer syntax where the outbox knows it, and the
        outbox's confirmed copies."""
        copies = self.outbox.confirmed_copies([ref.sop_instance_uid for ref in refs])
        annotated = [
            _with_syntax(ref, copies[ref.sop_instance_uid].transfer_syntax_uid)
            if ref.sop_instance_uid in copies else ref
            for ref in refs
        ]  # fmt: skip
        return annotated, copies

    def fetch(self, ref: InstanceRef, copy: LocalCopy | None) -> Fetched:
        """The instance as stored.

        Raises
        ------
        CentreError
            Not in the spool and the centre could not deliver it.
        """
        if copy is not None and copy.path is not None:
            data = self._read_spool(copy)
            if data is not None:
                return Fetched(data, "spool")
        data = self.client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_instance_uid)
        return Fetched(data, "centre")

    def _read_spool(self, copy: LocalCopy) -> bytes | None:
        """The spooled file if it is still there with the confirmed hash (the retention purge
        may remove it at any moment, and a disk may corrupt it)."""
        assert copy.path is not None
        try:
            data = self.spool.read(copy.path)
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != copy.sha256:
            logger.warning("spool file %s does not match its hash; using the centre", copy.path)
            return None
        return data


def _with_syntax(ref: InstanceRef, syntax: str) -> InstanceRef:
    return InstanceRef(ref.study_uid, ref.series_uid, ref.sop_instance_uid, ref.sop_class_uid,
                       syntax)  # fmt: skip


def move_contexts(refs: Iterable[InstanceRef]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination (PS3.7 D.3.3.2 negotiation):
    per SOP Class, one with Explicit and Implicit VR Little Endian (any instance can be sent
    there), and one per known stored transfer syntax, so that the peer may take the instances
    exactly as stored. At most :data:`MAX_CONTEXTS`, fallbacks first."""
    classes: dict[str, set[str]] = {}
    for ref in refs:
        syntaxes = classes.setdefault(ref.sop_class_uid, set())
        if ref.transfer_syntax_uid:
            syntaxes.add(ref.transfer_syntax_uid)
    contexts = [build_context(cls, list(UNCOMPRESSED)) for cls in sorted(classes)]
    for cls, syntaxes in sorted(classes.items()):
        contexts += [build_context(cls, syntax) for syntax in sorted(syntaxes)]
    return contexts[:MAX_CONTEXTS]


def for_peer(data: bytes, accepted: Sequence[PresentationContext]) -> Dataset:
    """The instance as a data set pynetdicom can send over ``accepted`` contexts (where we
    are the Storage SCU): unchanged when its syntax (or an uncompressed one pynetdicom can
    convert to) was accepted; decompressed when only uncompressed syntaxes were. Otherwise
    unchanged, and pynetdicom will count its C-STORE sub-operation as failed."""
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    syntaxes = {
        UID(str(cx.transfer_syntax[0]))
        for cx in accepted
        if cx.abstract_syntax == ds.SOPClassUID and cx.as_scu
    }
    if stored in syntaxes or not stored.is_compressed:
        return ds
    if syntaxes & set(UNCOMPRESSED):
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # any codec failure: the sub-operation fails, not the move
            logger.warning("cannot decompress %s for the peer: %s", ds.SOPInstanceUID, exc)
    return ds


def unsendable(ref: InstanceRef) -> Dataset:
    """A stand-in for an instance that could not be fetched: it has no transfer syntax, so
    pynetdicom's C-STORE refuses it and counts a failed sub-operation under its SOP Instance
    UID (Failed SOP Instance UID List, PS3.4 C.4.2.1.4.2)."""
    ds = Dataset()
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    return ds
