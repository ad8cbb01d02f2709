"""Query/Retrieve SCP (PS3.4 Annex C): C-FIND, C-MOVE and C-GET, Patient Root and Study Root.

The gateway keeps no catalog of its own (DESIGN.md): a C-FIND is one QIDO-RS search with the
site token (:mod:`telerad.dicom_gateway.find`), so the centre's matcher and site scope apply;
C-MOVE and C-GET find the instances the same way and send each one as stored, from the spool
or from the centre (:mod:`telerad.dicom_gateway.retrieve`). A gateway beside the centre runs
that same search on the centre's database instead of over HTTP
(:mod:`telerad.dicom_gateway.catalog`).

Handlers are thin generators in pynetdicom's style (``doc_handle_find/_move/_get``): they
call :class:`QueryRetrieve` and map exceptions to statuses through :data:`QR_STATUS`.
pynetdicom counts the C-STORE sub-operations and sends the final status (0x0000; 0xB000 with
the Failed SOP Instance UID List when some failed; 0xA702 when all failed, PS3.4 C.4.2.3.1,
C.4.3.3.1). A failure found before any sub-operation (bad identifier, centre unreachable) is
reported with one (never started) sub-operation counted as failed, because pynetdicom sends a
handler's failure status only after the count of sub-operations.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from telerad.dicom_gateway.catalog import CatalogSearch, CentreSearch, Requestor, Searcher
from telerad.dicom_gateway.centre import CentreClient
from telerad.dicom_gateway.errors import (
    CentreRefused,
    CentreUnavailable,
    InvalidIdentifier,
    QueryRejected,
)
from telerad.dicom_gateway.find import (
    FindRequest,
    find_request,
    model_for,
    response_identifiers,
    retrieve_request,
)
from telerad.dicom_gateway.outbox import LocalCopy, Outbox
from telerad.dicom_gateway.retrieve import (
    InstanceRef,
    InstanceSource,
    for_peer,
    move_contexts,
    unsendable,
)
from telerad.dicom_gateway.site import Address
from telerad.dicom_gateway.spool import Spool
from telerad.settings import Settings

logger = logging.getLogger(__name__)

PENDING = 0xFF00
#: Pending, "one or more Optional Keys were not supported" (PS3.4 Table C.4-1).
PENDING_WARNING = 0xFF01
CANCELLED = 0xFE00
#: "Unable to process" (PS3.4 Tables C.4-1, C.4-2, C.4-3: 0xCxxx) for unexpected errors.
UNABLE_TO_PROCESS = 0xC000
#: Status per exception, looked up along its MRO (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
QR_STATUS: dict[type[Exception], int] = {
    InvalidIdentifier: 0xA900,  # Identifier does not match SOP Class
    QueryRejected: 0xA900,  # the centre's matcher refused a key or value
    CentreUnavailable: 0xC001,  # Unable to process: the centre cannot be reached
    CentreRefused: 0xC002,  # Unable to process: the centre refused the site token or request
}


def status_for(exc: Exception) -> int:
    """The Q/R status of an exception, from :data:`QR_STATUS`."""
    for cls in type(exc).__mro__:
        if cls in QR_STATUS:
            return QR_STATUS[cls]
    return UNABLE_TO_PROCESS


def failure(exc: Exception, operation: str, calling_ae: str) -> Dataset:
    """A status data set with an Error Comment (at most 64 characters, no patient data)."""
    status = status_for(exc)
    log = logger.exception if status == UNABLE_TO_PROCESS else logger.warning
    log("%s from %s: %#06x %s", operation, calling_ae, status, exc)
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = str(exc).encode("ascii", "replace").decode()[:64]
    return ds


@dataclass(frozen=True, slots=True)
class FindAnswer:
    """A C-FIND's matches, and the pending status to send them with."""

    identifiers: Iterator[Dataset]
    pending: int
    count: int


@dataclass(frozen=True, slots=True)
class Retrieval:
    """The instances a C-MOVE or C-GET will send."""

    refs: list[InstanceRef]
    copies: dict[str, LocalCopy]


class QueryRetrieve:
    """The domain calls behind the handlers; safe to share between associations."""

    def __init__(
        self,
        searcher: Searcher,
        source: InstanceSource,
        addresses: Callable[[str], Address | None],
        ae_title: str,
    ) -> None:
        self.searcher = searcher
        self.source = source
        self.addresses = addresses
        self.ae_title = ae_title

    def find(self, identifier: Dataset, sop_class_uid: str, requestor: Requestor) -> FindAnswer:
        """Search the site's studies for a C-FIND identifier (PS3.4 C.4.1.3.1).

        Raises
        ------
        InvalidIdentifier, QueryRejected, CentreUnavailable, CentreRefused
        """
        request = find_request(identifier, model_for(sop_class_uid))
        answer = self.searcher.search(request.resource, request.params, requestor)
        pending = PENDING_WARNING if (answer.ignored or request.unsupported) else PENDING
        identifiers = response_identifiers(request, answer.matches, self.ae_title)
        return FindAnswer(identifiers, pending, len(answer.matches))

    def retrieval(self, identifier: Dataset, sop_class_uid: str, requestor: Requestor) -> Retrieval:
        """The instances matching a C-MOVE/C-GET identifier (PS3.4 C.4.2.2.1, C.4.3.2.1).

        Raises
        ------
        InvalidIdentifier, QueryRejected, CentreUnavailable, CentreRefused
        """
        request: FindRequest = retrieve_request(identifier, model_for(sop_class_uid))
        answer = self.searcher.search(request.resource, request.params, requestor)
        refs, copies = self.source.annotate([InstanceRef.from_json(m) for m in answer.matches])
        return Retrieval(refs, copies)

    def prepared(
        self, ref: InstanceRef, copy: LocalCopy | None, accepted: list[PresentationContext]
    ) -> Dataset:
        """The instance ready for a C-STORE sub-operation, or a stand-in that fails it."""
        try:
            return for_peer(self.source.fetch(ref, copy).data, accepted)
        except Exception as exc:  # one instance's failure fails its sub-operation only
            logger.warning("cannot fetch %s for a retrieve: %s", ref.sop_instance_uid, exc)
            return unsendable(ref)

    def close(self) -> None:
        """Release the search's and the instance source's connections."""
        self.searcher.close()
        self.source.client.close()


def build_query_retrieve(
    settings: Settings,
    outbox: Outbox,
    spool: Spool,
    addresses: Callable[[str], Address | None],
    centre_url: str,
    site_token: str,
) -> QueryRetrieve:
    """The Q/R service with its own keep-alive client, so that queries never wait behind the
    forwarder's large STOW-RS requests; searching the centre's catalog itself when
    ``gateway.local_catalog`` (:mod:`telerad.dicom_gateway.catalog`)."""
    client = CentreClient(centre_url, site_token, timeout=settings.gateway.request_timeout,
                          connections=4)  # fmt: skip
    source = InstanceSource(outbox, spool, client)
    searcher: Searcher = (
        CatalogSearch(settings, site_token, centre_url)
        if settings.gateway.local_catalog
        else CentreSearch(client)
    )
    return QueryRetrieve(searcher, source, addresses, settings.dicom.ae_title)


def handle_find(event: evt.Event, qr: QueryRetrieve) -> Iterator[tuple[int | Dataset, Any]]:
    """C-FIND (PS3.4 C.4.1.2, C.4.1.3).

    Statuses: 0xFF00 pending, one match per response; 0xFF01 pending when some keys were not
    matched (unknown to the centre's matcher, or private); 0x0000 (sent by pynetdicom) after
    the last; 0xFE00 cancelled by C-CANCEL; 0xA900 identifier does not match the SOP Class
    (level, decoding, a value the matcher refuses); 0xC001 centre unreachable; 0xC002 centre
    refused; 0xC000 anything else.
    """
    request = cast(C_FIND, event.request)
    calling_ae = event.assoc.requestor.ae_title
    try:
        answer = qr.find(event.identifier, str(request.AffectedSOPClassUID), _requestor(event))
    except Exception as exc:
        yield failure(exc, "C-FIND", calling_ae), None
        return
    logger.info("C-FIND from %s: %d matches", calling_ae, answer.count)
    for identifier in answer.identifiers:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield answer.pending, identifier


def handle_move(event: evt.Event, qr: QueryRetrieve) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2.2, C.4.2.3): yields the destination, the number of sub-operations,
    then one pending (status, instance) per C-STORE sub-operation.

    Statuses: 0xA801 move destination unknown (not a modality of the site with host and port,
    or not reachable); 0xFF00 pending; 0x0000 all sent; 0xB000 some sub-operations failed
    (Failed SOP Instance UID List); 0xA702 all failed; 0xFE00 cancelled; 0xA900, 0xC001,
    0xC002, 0xC000 as for C-FIND, found before any sub-operation.
    """
    request = cast(C_MOVE, event.request)
    address = qr.addresses(event.move_destination or "")
    if address is None:
        logger.warning("C-MOVE to unknown destination %r", event.move_destination)
        yield None, None
        return
    try:
        retrieval = qr.retrieval(event.identifier, str(request.AffectedSOPClassUID),
                                 _requestor(event))  # fmt: skip
    except Exception as exc:
        yield (*address, {"contexts": [build_context(Verification)]})  # see the module doc
        yield 1
        yield failure(exc, "C-MOVE", event.assoc.requestor.ae_title), None
        return
    store: list[Any] = []  # the destination association, once accepted
    handlers = [
        (evt.EVT_CONN_OPEN, nodelay),
        (evt.EVT_ESTABLISHED, lambda e: store.append(e.assoc)),
    ]
    yield (*address, {"contexts": move_contexts(retrieval.refs), "evt_handlers": handlers})
    yield len(retrieval.refs)
    accepted = store[0].accepted_contexts if store else []
    yield from _sub_operations(event, qr, retrieval, accepted)


def handle_get(event: evt.Event, qr: QueryRetrieve) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3.2, C.4.3.3): the number of sub-operations, then one pending
    (status, instance) per C-STORE sub-operation on the same association, over the storage
    contexts the SCU proposed with the SCP role (PS3.7 D.3.3.4).

    Statuses: 0xFF00 pending; 0x0000 all sent; 0xB000 some failed (Failed SOP Instance UID
    List; an instance whose SOP Class/transfer syntax the SCU did not offer fails); 0xA702 all
    failed; 0xFE00 cancelled; 0xA900, 0xC001, 0xC002, 0xC000 as for C-FIND.
    """
    request = cast(C_GET, event.request)
    try:
        retrieval = qr.retrieval(event.identifier, str(request.AffectedSOPClassUID),
                                 _requestor(event))  # fmt: skip
    except Exception as exc:
        yield 1
        yield failure(exc, "C-GET", event.assoc.requestor.ae_title), None
        return
    yield len(retrieval.refs)
    yield from _sub_operations(event, qr, retrieval, event.assoc.accepted_contexts)


def _requestor(event: evt.Event) -> Requestor:
    operation = type(event.request).__name__.replace("_", "-")  # C-FIND, C-MOVE, C-GET
    return Requestor(operation, event.assoc.requestor.ae_title, event.assoc.requestor.address)


def nodelay(event: evt.Event) -> None:
    """TCP_NODELAY on an association we open: each C-STORE is a command PDU then data PDUs,
    and Nagle's algorithm would hold the next small write for the peer's delayed ACK."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _sub_operations(
    event: evt.Event, qr: QueryRetrieve, retrieval: Retrieval, accepted: list[Any]
) -> Iterator[tuple[int, Dataset | None]]:
    logger.info("%s from %s: %d instances", type(event.request).__name__.replace("_", "-"),
                event.assoc.requestor.ae_title, len(retrieval.refs))  # fmt: skip
    for ref in retrieval.refs:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield PENDING, qr.prepared(ref, retrieval.copies.get(ref.sop_instance_uid), accepted)
