"""The gateway's DICOM listener: Verification, Storage and Storage Commitment SCP (pynetdicom).

* C-ECHO (PS3.4 Annex A) and C-STORE (PS3.4 Annex B) for every storage SOP class pynetdicom
  knows, in every transfer syntax it lists: the handler never decodes pixel data, so compressed
  syntaxes cost nothing to accept.
* N-ACTION of the Storage Commitment Push Model (PS3.4 Annex J); the N-EVENT-REPORT comes later
  from :class:`telerad.dicom_gateway.commitment.Committer`.
* With a :class:`telerad.dicom_gateway.qr.QueryRetrieve`: C-FIND, C-MOVE and C-GET of the
  Patient Root and Study Root models (PS3.4 Annex C, :mod:`telerad.dicom_gateway.qr`); the
  storage contexts then also accept the SCU/SCP role selection a C-GET SCU proposes
  (PS3.7 D.3.3.4).
* Calling AE titles are checked at association time against the site's modalities (rejected
  with result 1, source 1, reason 3 "calling AE title not recognized", PS3.8 §9.3.4).
* TCP_NODELAY on every accepted socket, a large maximum PDU, SO_REUSEPORT so that several SCP
  processes can share one port, and optional TLS (PS3.15 Annex B.1) with client certificates.

Handlers are thin: they call one domain function and map its exceptions to a status through
:data:`STORE_STATUS`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any, cast

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE, N_ACTION
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from telerad.dicom_gateway.commitment import (
    COMMITMENT_INSTANCE_UID,
    CommitmentRequest,
    Committer,
    parse_commitment_request,
)
from telerad.dicom_gateway.dimse_codec import install_fast_dimse
from telerad.dicom_gateway.errors import (
    RequestMismatch,
    SpoolFull,
    SpoolUnavailable,
)
from telerad.dicom_gateway.outbox import ROUTINE, URGENT
from telerad.dicom_gateway.qr import QueryRetrieve, handle_find, handle_get, handle_move
from telerad.dicom_gateway.reactor import (
    IDLE_WAIT_SECONDS,
    CheapCopyContexts,
    install_bulk_recv,
    install_responsive_dul,
    install_responsive_reactor,
    serve_stores_inline,
    wake_reactor_on_acse,
)
from telerad.dicom_gateway.receiver import Receiver, StoreRequest
from telerad.settings import DicomSettings
from telerad.storage import InvalidInstance

logger = logging.getLogger(__name__)

#: C-STORE status per exception (PS3.4 Table B.2-1; 0x0110 is PS3.7 Annex C "processing
#: failure"). Looked up along the exception's MRO.
STORE_STATUS: dict[type[Exception], int] = {
    SpoolFull: 0xA700,  # Refused: Out of Resources
    SpoolUnavailable: 0xA701,  # Refused: Out of Resources (cannot write)
    RequestMismatch: 0xA900,  # Error: Data Set does not match SOP Class
    InvalidInstance: 0xC000,  # Error: Cannot understand
}
PROCESSING_FAILURE = 0x0110
#: C-STORE Priority (PS3.7 §9.1.1.1): 0x0001 HIGH forwards before MEDIUM and LOW.
_HIGH_PRIORITY = 0x0001


def status_for(exc: Exception) -> int:
    """The DIMSE status of an exception, from :data:`STORE_STATUS`."""
    for cls in type(exc).__mro__:
        if cls in STORE_STATUS:
            return STORE_STATUS[cls]
    return PROCESSING_FAILURE


def _failure(status: int, comment: str) -> Dataset:
    """A status data set with an Error Comment (0000,0902): at most 64 ASCII characters and
    never patient data (our messages only name UIDs and causes)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def _element(tag: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 §7.1.2); UI values are NUL-padded."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", *tag, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", *tag, vr, len(value)) + value


def part10(dataset: bytes, sop_class_uid: str, sop_instance_uid: str, syntax: str) -> bytes:
    """The received data set as a Part-10 file: preamble, ``DICM`` and our File Meta group
    (PS3.10 §7.1), encoded directly — pydicom's validated FileMetaDataset costs about a
    millisecond per instance, which is most of the handler's CPU."""
    group = b"".join((
        _element((2, 0x0001), b"OB", b"\0\1"),
        _element((2, 0x0002), b"UI", sop_class_uid.encode()),
        _element((2, 0x0003), b"UI", sop_instance_uid.encode()),
        _element((2, 0x0010), b"UI", syntax.encode()),
        _element((2, 0x0012), b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode()),
        _element((2, 0x0013), b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode()),
    ))  # fmt: skip
    length = struct.pack("<HH2sHI", 2, 0x0000, b"UL", 4, len(group))
    return b"\0" * 128 + b"DICM" + length + group + dataset


#: How long an idle association's DUL thread waits between polls (pynetdicom: 1 ms). It wakes at
#: once on data from the peer and on a primitive to send (reactor fixes 3 and 6), so this only
#: paces its timer checks; polling every millisecond cost ~5 % of a core per idle association.
DUL_POLL_SECONDS = IDLE_WAIT_SECONDS


def quiet_pynetdicom() -> None:
    """pynetdicom logs warnings and errors only: its INFO is a line per DIMSE message.

    Its "standard" event handlers, bound to every association, then only format messages
    nobody logs (and copy each received data set to say whether it is present), so they are
    not bound (``LOG_HANDLER_LEVEL = "none"``); nor are C-FIND, C-GET and C-MOVE identifiers
    decoded and formatted for those INFO lines (``LOG_REQUEST_IDENTIFIERS``,
    ``LOG_RESPONSE_IDENTIFIERS``). Call before the AE is built.
    """
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def handle_connection_open(event: evt.Event) -> None:
    """Set the new association's DUL polling delay (:data:`DUL_POLL_SECONDS`), let its DUL
    thread serve C-STORE requests itself (:func:`.reactor.serve_stores_inline`) and its ACSE
    primitives wake its reactor (:func:`.reactor.wake_reactor_on_acse`), and encode and decode
    its command sets by hand (:func:`.dimse_codec.install_fast_dimse`)."""
    event.assoc.dul._run_loop_delay = DUL_POLL_SECONDS
    install_fast_dimse(event.assoc)
    serve_stores_inline(event.assoc)
    wake_reactor_on_acse(event.assoc)


def handle_echo(event: evt.Event) -> int:
    """C-ECHO (PS3.4 A.4): always 0x0000 Success."""
    return 0x0000


def handle_store(event: evt.Event, receiver: Receiver) -> int | Dataset:
    """C-STORE (PS3.4 B.2.3).

    Statuses: 0x0000 stored (or the same content was already stored); 0xA700 spool full;
    0xA701 spool/outbox not writable; 0xA900 data set UIDs differ from the request;
    0xC000 not a storable instance (unreadable, truncated, invalid UIDs); 0x0110 anything else.
    """
    request = cast(C_STORE, event.request)
    store = StoreRequest(
        calling_ae=event.assoc.requestor.ae_title,
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        priority=URGENT if request.Priority == _HIGH_PRIORITY else ROUTINE,
    )
    try:
        data = part10(
            event.encoded_dataset(include_meta=False), store.sop_class_uid,
            store.sop_instance_uid, str(event.context.transfer_syntax),
        )  # fmt: skip
        receiver.store(data, store)
    except Exception as exc:
        status = status_for(exc)
        log = logger.exception if status == PROCESSING_FAILURE else logger.warning
        log("C-STORE from %s of %s: %#06x %s", store.calling_ae, store.sop_instance_uid,
            status, exc)  # fmt: skip
        return _failure(status, str(exc))
    return 0x0000


def handle_commitment(event: evt.Event, committer: Committer) -> tuple[int, Dataset | None]:
    """N-ACTION Request Storage Commitment (PS3.4 J.3.2).

    Statuses: 0x0000 accepted (the result follows as an N-EVENT-REPORT); 0x0112 no such SOP
    Instance (not the well-known commitment instance); 0x0123 no such action type; 0x0115
    invalid argument (no Transaction UID or references); 0x0110 anything else.
    """
    request = cast(N_ACTION, event.request)
    if str(request.RequestedSOPInstanceUID) != COMMITMENT_INSTANCE_UID:
        return 0x0112, None
    if event.action_type != 1:
        return 0x0123, None
    try:
        parsed = parse_commitment_request(event.action_information)
    except ValueError as exc:
        logger.warning("storage commitment request refused: %s", exc)
        return 0x0115, None
    committer.submit(CommitmentRequest(event.assoc.requestor.ae_title, parsed, event.assoc))
    return 0x0000, None


class CallingAePolicy:
    """Which calling AE titles may associate: the site's modalities, or any in development."""

    def __init__(
        self,
        ae_titles: set[str] | None = None,
        *,
        accept_any: bool = False,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._titles = frozenset(ae_titles or ())
        self.accept_any = accept_any
        #: Called before each association is judged: an SCP worker process re-reads the site
        #: file there (a ``stat`` when unchanged), so a modality the gateway has just learnt
        #: of is never refused by a worker that has not looked yet.
        self._refresh = refresh

    def update(self, ae_titles: set[str], *, accept_any: bool | None = None) -> None:
        """Replace the allowed titles (and the development flag, if given)."""
        with self._lock:
            self._titles = frozenset(t.strip() for t in ae_titles)
            if accept_any is not None:
                self.accept_any = accept_any

    def as_required_list(self) -> list[str]:
        """pynetdicom's ``require_calling_aet``: ``[]`` accepts any, so an empty site gets
        ``[""]``, a title no peer can send (AE titles are never blank, PS3.5 Table 6.2-1)."""
        if self._refresh is not None:
            self._refresh()
        if self.accept_any:
            return []
        with self._lock:
            return sorted(self._titles) or [""]


class GatewayAE(AE):
    """An AE whose allowed calling AE titles are read from a policy at each association."""

    policy: CallingAePolicy

    @property
    def require_calling_aet(self) -> list[str]:
        policy = getattr(self, "policy", None)
        return policy.as_required_list() if policy else list(self._require_calling_aet)

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self._require_calling_aet = list(ae_titles)


class FastAssociationServer(ThreadedAssociationServer):
    """Association server with SO_REUSEPORT on the listener and TCP_NODELAY per connection,
    cheap per-association context copies and prompt DIMSE message pickup
    (:mod:`telerad.dicom_gateway.reactor`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = CheapCopyContexts(self.contexts)
        install_responsive_reactor()
        install_responsive_dul()
        install_bulk_recv()

    def server_bind(self) -> None:
        assert self.socket is not None
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # accept() returns a blocking socket whatever the listener's timeout: without this a
        # peer that stalls mid-PDU would hold its thread and association slot for ever
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address


def tls_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """A server TLS context (PS3.15 B.1: TLS 1.2+), requiring client certificates when a CA
    bundle is configured; ``None`` without a certificate."""
    if settings.tls_certificate is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certificate, settings.tls_private_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


#: Transfer syntaxes of the storage contexts, in order of preference: pynetdicom accepts the
#: first of these a proposed context lists, and explicit VR keeps every element's VR (and is
#: how most instances are stored, so a C-GET peer offering it gets them unconverted).
STORAGE_SYNTAXES = [
    ExplicitVRLittleEndian,
    *(syntax for syntax in ALL_TRANSFER_SYNTAXES if syntax != ExplicitVRLittleEndian),
]

#: The Query/Retrieve SOP Classes served (PS3.4 C.6.1, C.6.2).
QUERY_RETRIEVE_CLASSES = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)


def build_ae(
    settings: DicomSettings, policy: CallingAePolicy, *, query_retrieve: bool = False
) -> GatewayAE:
    """The acceptor with every storage context, verification and storage commitment, and
    the Query/Retrieve classes when ``query_retrieve``."""
    ae = GatewayAE(ae_title=settings.ae_title)
    ae.policy = policy
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.acse_timeout = settings.acse_timeout
    # C-GET: accept the role a peer proposes (SCU and/or SCP) on storage contexts
    roles = {"scu_role": True, "scp_role": True} if query_retrieve else {}
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), STORAGE_SYNTAXES, **roles)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES[:4])
    ae.add_supported_context(StorageCommitmentPushModel, ALL_TRANSFER_SYNTAXES[:4])
    if query_retrieve:
        for sop_class in QUERY_RETRIEVE_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES[:4])
    return ae


def start_scp(
    settings: DicomSettings,
    receiver: Receiver,
    committer: Committer,
    policy: CallingAePolicy,
    query_retrieve: QueryRetrieve | None = None,
) -> FastAssociationServer:
    """Start listening (non-blocking); ``server.shutdown()`` stops it."""
    ae = build_ae(settings, policy, query_retrieve=query_retrieve is not None)
    handlers: list[tuple[Any, Callable[..., Any], list[Any]] | tuple[Any, Callable[..., Any]]] = [
        (evt.EVT_CONN_OPEN, handle_connection_open),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_N_ACTION, handle_commitment, [committer]),
    ]
    if query_retrieve is not None:
        handlers += [
            (evt.EVT_C_FIND, handle_find, [query_retrieve]),
            (evt.EVT_C_MOVE, handle_move, [query_retrieve]),
            (evt.EVT_C_GET, handle_get, [query_retrieve]),
        ]
    server: FastAssociationServer = ae.make_server(  # type: ignore[assignment]
        (settings.host, settings.port),
        ssl_context=tls_context(settings),
        evt_handlers=handlers,
        server_class=FastAssociationServer,
    )
    ae._servers.append(server)  # as AE.start_server does; server.shutdown() removes it
    thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
    thread.start()
    logger.info(
        "DICOM SCP %s listening on %s:%d%s", settings.ae_title, settings.host,
        server.server_address[1], " (TLS)" if server.ssl_context else "",
    )  # fmt: skip
    return server
