"""Six latency fixes for pynetdicom's reactors, kept out of the handlers.

1. **Message pickup.** pynetdicom's acceptor reactor (``Association._run_reactor``) sleeps
   1 ms, then polls its DIMSE queue without blocking. Every C-STORE request therefore waits on
   average half a millisecond after its last PDU arrived before the handler runs — about a
   tenth of a 512 KiB CT slice's whole turnaround. :func:`install_responsive_reactor` replaces
   that one sleep, for acceptor reactor threads only, with a wait on the DIMSE queue's own
   condition (at most the same 1 ms), so a complete message is served as soon as the DUL thread
   queues it. The loop, its release/abort checks and every other sleep are unchanged.
2. **Association set-up.** For every association pynetdicom ``deepcopy``-s the server's
   supported presentation contexts (here 170 storage SOP classes x 45 transfer syntaxes, plus
   verification and commitment): ~0.15 s of CPU per association, paid by every modality that
   opens one association per series. :class:`CheapCopyContexts` returns an equivalent copy —
   new ``PresentationContext`` objects with their own transfer syntax lists — in a few ms.
3. **Socket pickup.** The DUL reactor (``DULServiceProvider.run_reactor``, one thread per
   association, PS3.8 §9) also sleeps 1 ms (``_run_loop_delay``) whenever a pass found neither
   a PDU on the socket nor a primitive to send. So a request that arrives while it sleeps, and
   a response the handler has just queued, each wait up to a millisecond: twice per C-STORE,
   and per C-FIND response. :func:`install_responsive_dul` replaces that sleep, in every DUL
   thread of the process (the SCP's, and the SCU's of C-MOVE sub-operations and Storage
   Commitment reports), with a ``select`` on the association's socket and on a wake-up socket
   that the DUL's outgoing queue (``to_provider_queue``) signals on every ``put``: the reactor
   wakes on the first byte in or the first primitive out, and still after at most the same
   1 ms when neither comes. Each association gets one socket pair, closed with its DUL
   thread. Measured with a pynetdicom SCU on one association against the gateway's SCP class:
   a C-ECHO round trip went from 3.6 ms to 2.4 ms (``bench/cfind.py`` prints the C-ECHO round
   trip of the running gateway beside Orthanc's).

4. **Reading PDUs.** ``AssociationSocket.recv(n)`` reads a PDU's ``n`` bytes 4096 at a time,
   extending a ``bytearray`` after each ``recv``: 138 system calls and as many Python loop
   turns for one 512 KiB CT slice in 128 KiB PDUs (counted with cProfile in
   ``bench/ingest_dimse.py --profile``). :func:`install_bulk_recv` makes it read into one
   buffer of the PDU's size with ``recv_into``, as much as the socket holds each time. What it
   returns (the bytes read, fewer when the peer closes) and raises (timeouts, ``OSError``) is
   unchanged, for plain and TLS sockets.

5. **C-STORE without a thread hand-off.** A complete DIMSE message is decoded by the DUL thread,
   queued, picked up by the association's reactor thread, served there, and its response queued
   back to the DUL thread to be sent: two hand-offs between threads that wait on each other,
   per C-STORE, on top of the handler's own work. :func:`serve_stores_inline` makes the DUL
   thread of an acceptor association serve a C-STORE request itself, as soon as it is decoded,
   through pynetdicom's own Storage service class (same event, same handler, same response and
   status checks), much as pynetdicom already serves N-EVENT-REPORT requests outside the
   reactor. The response is queued to the same DUL thread, which sends it on its next pass.
   Anything else (C-ECHO, C-FIND, N-ACTION, responses to our own requests) and any C-STORE that
   arrives while the reactor thread is serving another request, or that the standard path
   would refuse (unknown context, release under way), goes the standard way. C-FIND was tried
   too (``bench/cfind.py``: 6.0 -> 5.0 ms) and left out: served by the DUL thread, its matches
   would all be queued before the first is sent, and a C-CANCEL could not stop a long listing
   (PS3.4 C.4.1.2), since the thread that reads it would be busy.

6. **Idle associations.** Both reactors still poll every millisecond for what does not wake
   them: the acceptor reactor for the peer's A-RELEASE or A-ABORT, which the DUL thread queues
   on its ``to_user_queue``. Four idle associations cost the SCP process a fifth of a core,
   taken from the associations that are busy. :func:`wake_reactor_on_acse` makes that queue
   notify the reactor's wait, so that the reactor waits :data:`IDLE_WAIT_SECONDS` between
   polls; the DUL thread, woken by its socket and its outgoing queue (fix 3), polls as
   seldom (``_run_loop_delay``, set by the SCP). What is left on a timer: ARTIM and idle
   timeouts (seconds) and the end of the DUL thread after the association has ended, which
   the peer no longer waits for.

All six rely on pynetdicom internals (checked on 3.0): the reactors' ``time`` module
references, ``DIMSEServiceProvider.msg_queue`` and ``DULServiceProvider.to_provider_queue``
(:class:`queue.Queue`), ``AssociationSocket.socket`` and ``.recv``,
``Association._serve_request`` and ``._accepted_cx``, and ``PresentationContext``'s
attributes. If those change, the fallbacks are pynetdicom's own behaviour, never an error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import select
import socket
import ssl
import threading
import time
import weakref
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import association, dul, transport
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

logger = logging.getLogger(__name__)

#: The sleep pynetdicom's acceptor reactor takes between polls of its DIMSE queue.
REACTOR_SLEEP_SECONDS = 0.001
#: How long an idle acceptor reactor, or an idle DUL thread, waits between polls once every
#: event it waits for wakes it (fix 6).
IDLE_WAIT_SECONDS = 0.02

_install_lock = threading.Lock()
#: Per DUL thread: its :class:`_Wakeup`.
_dul_thread = threading.local()


class _TimeModule:
    """Stands in for the ``time`` module inside a pynetdicom module: everything but
    ``sleep`` is the real module's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _ReactorClock(_TimeModule):
    """``time`` inside :mod:`pynetdicom.association`."""

    @staticmethod
    def sleep(seconds: float) -> None:
        messages = _acceptor_queue() if seconds == REACTOR_SLEEP_SECONDS else None
        if messages is None:
            time.sleep(seconds)
            return
        acse = getattr(getattr(threading.current_thread(), "dul", None), "to_user_queue", None)
        with messages.not_empty:
            if messages.queue:  # the deque; qsize() would take the held mutex again
                return
            # Checked under the lock the ACSE queue notifies under (fix 6): a primitive queued
            # after this check wakes the wait. One still queued keeps the 1 ms poll.
            idle = isinstance(acse, _NotifyingUserQueue) and not acse.queue
            messages.not_empty.wait(IDLE_WAIT_SECONDS if idle else seconds)


def _acceptor_queue() -> queue.Queue[Any] | None:
    """The DIMSE message queue of the acceptor association running this thread, if any."""
    thread = threading.current_thread()
    if not isinstance(thread, association.Association) or not thread.is_acceptor:
        return None
    messages = getattr(getattr(thread, "dimse", None), "msg_queue", None)
    return messages if isinstance(messages, queue.Queue) else None


def install_responsive_reactor() -> None:
    """Make acceptor reactors pick up complete DIMSE messages at once (idempotent)."""
    with _install_lock:
        if not isinstance(getattr(association, "time", None), _ReactorClock):
            setattr(association, "time", _ReactorClock())  # noqa: B010 - not an export


class _WakingQueue(queue.Queue[Any]):
    """A DUL's outgoing primitive queue that also writes a byte to its wake-up socket on every
    put (installed by changing the queue's class, so items already queued stay).

    The byte is written once the queue's lock is released: the write lets go of the GIL, and
    a DUL thread woken by an earlier byte would otherwise block on the lock held by a thread
    that is itself waiting for the GIL."""

    waker: socket.socket

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with contextlib.suppress(OSError):  # full (already signalled) or closed (DUL ended)
            self.waker.send(b"\0")


class _Wakeup:
    """One DUL's wake-up socket pair. Kept in the DUL thread's local storage, which
    Python drops when the thread ends, closing the pair (the DUL object itself sits in a
    reference cycle with its association, so tying the sockets to it would keep them open
    until a full garbage collection)."""

    def __init__(self, provider: dul.DULServiceProvider) -> None:
        self.reader, writer = socket.socketpair()
        self.reader.setblocking(False)
        writer.setblocking(False)
        outgoing = provider.to_provider_queue
        outgoing.waker = writer  # type: ignore[attr-defined]
        outgoing.__class__ = _WakingQueue
        weakref.finalize(self, _close, self.reader, writer)

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


class _DulClock(_TimeModule):
    """``time`` inside :mod:`pynetdicom.dul`."""

    @staticmethod
    def sleep(seconds: float) -> None:
        provider = threading.current_thread()
        if not isinstance(provider, dul.DULServiceProvider) or seconds != getattr(
            provider, "_run_loop_delay", None
        ):
            time.sleep(seconds)
            return
        try:
            _wait_for_traffic(provider, seconds)
        except (AttributeError, OSError, ValueError):  # closed socket, changed internals
            time.sleep(seconds)


def _wait_for_traffic(provider: dul.DULServiceProvider, seconds: float) -> None:
    """Until the peer sends a byte or the user queues a primitive, at most ``seconds``."""
    wakeup: _Wakeup | None = getattr(_dul_thread, "wakeup", None)
    if wakeup is None:
        wakeup = _dul_thread.wakeup = _Wakeup(provider)
    if provider.to_provider_queue.queue:
        return
    raw = provider.socket.socket if provider.socket is not None else None
    if raw is None:
        time.sleep(seconds)
        return
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return  # decrypted bytes already buffered: select would not see them
    ready, _, _ = select.select([raw, wakeup.reader], [], [], seconds)
    if wakeup.reader in ready:
        wakeup.drain()


def install_responsive_dul() -> None:
    """Make DUL reactors wake on socket data or an outgoing primitive (idempotent)."""
    with _install_lock:
        if not isinstance(getattr(dul, "time", None), _DulClock):
            setattr(dul, "time", _DulClock())  # noqa: B010 - not an export


class CheapCopyContexts(list[PresentationContext]):
    """The server's supported contexts, deep-copied per association without ``copy.deepcopy``
    walking every UID object."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        try:
            return [_copy_context(context) for context in self]
        except AttributeError:  # pynetdicom changed PresentationContext: be correct, not fast
            return [copy.deepcopy(context, memo) for context in self]


def _copy_context(context: PresentationContext) -> PresentationContext:
    fresh = PresentationContext.__new__(PresentationContext)
    fresh.__dict__.update(context.__dict__)
    fresh._transfer_syntax = list(context._transfer_syntax)
    return fresh


def _recv_whole(self: transport.AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` from the socket (fewer if the peer closes),
    read into one buffer (fix 4 of the module docstring)."""
    sock = cast(socket.socket, self.socket)
    buffer = bytearray(nr_bytes)
    read = 0
    with memoryview(buffer) as view:
        while read < nr_bytes:
            count = sock.recv_into(view[read:], nr_bytes - read)
            if not count:  # the connection was closed: what came before it
                break
            read += count
    if read < nr_bytes:
        del buffer[read:]
    return buffer


def install_bulk_recv() -> None:
    """Make every association read a PDU into one buffer (idempotent)."""
    with _install_lock:
        if getattr(transport.AssociationSocket, "recv", None) is not _recv_whole:
            transport.AssociationSocket.recv = _recv_whole  # type: ignore[method-assign]


class _InlineStoreQueue(queue.Queue[Any]):
    """An acceptor association's DIMSE message queue whose ``put`` — called by the DUL thread
    with each complete message — serves a C-STORE request there and then (fix 5)."""

    assoc: association.Association
    #: Held while the reactor thread serves a request, and while a C-STORE is served inline.
    serving: threading.Lock

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not self._serve_inline(item):
            super().put(item, block, timeout)

    def _serve_inline(self, item: Any) -> bool:
        try:
            context_id, request = item
        except (TypeError, ValueError):
            return False
        if not isinstance(request, C_STORE) or not request.is_valid_request:
            return False
        assoc = self.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None or assoc._sent_release or not assoc.is_established:
            return False  # the reactor refuses it the standard way (abort, warning)
        sop_class = cast(UID, request.AffectedSOPClassUID)
        extended = assoc.acceptor.accepted_common_extended.get(sop_class)
        service = uid_to_service_class(extended[0] if extended else sop_class)
        if not issubclass(service, StorageServiceClass):
            return False
        if self.queue or not self.serving.acquire(blocking=False):
            return False  # keep the order: another request is queued or being served
        try:
            assoc.dimse.cancel_req = {}
            service(assoc).SCP(request, context)
        except Exception:  # as _serve_request: log, abort — from a thread of its own, since
            # Association.abort() waits for this DUL thread to end
            logger.exception("C-STORE service failed; aborting the association")
            threading.Thread(target=assoc.abort, name="abort", daemon=True).start()
        finally:
            self.serving.release()
        return True


def serve_stores_inline(assoc: association.Association) -> None:
    """Make ``assoc``'s DUL thread serve C-STORE requests itself (fix 5). Call before the
    association starts (``EVT_CONN_OPEN``); a no-op for requestors or changed internals."""
    dimse = getattr(assoc, "dimse", None)
    messages = getattr(dimse, "msg_queue", None)
    serve = getattr(assoc, "_serve_request", None)
    if not assoc.is_acceptor or type(messages) is not queue.Queue or serve is None:
        return
    if not hasattr(assoc, "_accepted_cx") or not hasattr(assoc, "_sent_release"):
        return
    serving = threading.Lock()

    def serve_request(*args: Any, **kwargs: Any) -> None:  # the reactor's, under the lock
        with serving:
            serve(*args, **kwargs)

    assoc._serve_request = serve_request  # type: ignore[method-assign]
    messages.__class__ = _InlineStoreQueue
    inline = cast(_InlineStoreQueue, messages)
    inline.assoc = assoc
    inline.serving = serving


class _NotifyingUserQueue(queue.Queue[Any]):
    """A DUL's ``to_user_queue`` (A-RELEASE, A-ABORT, A-P-ABORT for the reactor) that wakes
    the acceptor reactor's wait on its DIMSE message queue after every put (fix 6)."""

    messages: queue.Queue[Any]

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self.messages.not_empty:
            self.messages.not_empty.notify_all()


def wake_reactor_on_acse(assoc: association.Association) -> None:
    """Make ``assoc``'s ACSE primitives wake its reactor (fix 6). Call before the association
    starts (``EVT_CONN_OPEN``); a no-op for requestors or changed internals."""
    user = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    messages = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if not assoc.is_acceptor or type(user) is not queue.Queue:
        return
    if not isinstance(messages, queue.Queue):
        return
    user.__class__ = _NotifyingUserQueue
    cast(_NotifyingUserQueue, user).messages = messages
