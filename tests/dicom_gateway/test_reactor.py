"""The acceptor latency fixes: cheap context copies and prompt DIMSE message pickup."""

from __future__ import annotations

import contextlib
import copy
import io
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, association, evt, transport
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from telerad.demo import ct_study_bytes
from telerad.dicom_gateway import reactor, scp
from telerad.dicom_gateway.reactor import (
    CheapCopyContexts,
    install_bulk_recv,
    install_responsive_reactor,
)
from telerad.dicom_gateway.scp import (
    CallingAePolicy,
    FastAssociationServer,
    build_ae,
    handle_connection_open,
)
from telerad.settings import DicomSettings


def context_fields(contexts: list) -> list[tuple]:
    return [
        (c.context_id, c.abstract_syntax, list(c.transfer_syntax), c.scp_role, c.scu_role)
        for c in contexts
    ]


def test_cheap_copy_equals_deepcopy_and_is_independent() -> None:
    contexts = build_ae(DicomSettings(), CallingAePolicy(accept_any=True)).supported_contexts
    reference = copy.deepcopy(contexts)
    cheap = copy.deepcopy(CheapCopyContexts(contexts))
    assert len(contexts) > 170
    assert context_fields(cheap) == context_fields(reference)
    assert all(a is not b for a, b in zip(cheap, contexts, strict=True))
    cheap[0].transfer_syntax.clear()
    cheap[0].context_id = 7
    assert context_fields(contexts) == context_fields(reference)


def test_reactor_clock_is_installed_once_and_acceptor_wakes_on_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install_responsive_reactor()
    clock = association.time
    install_responsive_reactor()
    assert association.time is clock

    ae = build_ae(DicomSettings(), CallingAePolicy(accept_any=True))
    assoc = Association(ae, "acceptor")
    messages = assoc.dimse.msg_queue
    assert isinstance(messages, queue.Queue)
    # The reactor's 1 ms wait stretched to 60 s: only a wake-up by the message ends it early.
    monkeypatch.setattr(reactor, "REACTOR_SLEEP_SECONDS", 60.0)
    waited: list[float] = []

    def reactor_sleep() -> None:
        started = time.monotonic()
        association.time.sleep(60.0)
        waited.append(time.monotonic() - started)

    # Sleep as the association's own thread would (the clock looks at the current thread).
    sleeper = threading.Thread(target=reactor_sleep)
    monkeypatch.setattr(reactor.threading, "current_thread", lambda: assoc)
    sleeper.start()
    time.sleep(0.2)
    messages.put((1, object()))
    sleeper.join(30)
    assert waited and waited[0] < 30
    assert messages.qsize() == 1  # the clock only waits; the reactor takes the message


def test_server_contexts_are_wrapped() -> None:
    from telerad.dicom_gateway.scp import FastAssociationServer

    assert issubclass(FastAssociationServer, ThreadedAssociationServer)
    ae = build_ae(DicomSettings(), CallingAePolicy(accept_any=True))
    server = ae.make_server(("127.0.0.1", 0), server_class=FastAssociationServer)
    try:
        assert isinstance(server.contexts, CheapCopyContexts)
    finally:
        server.server_close()


def test_dul_clock_is_installed_once() -> None:
    from pynetdicom import dul

    reactor.install_responsive_dul()
    clock = dul.time
    reactor.install_responsive_dul()
    assert dul.time is clock
    assert isinstance(clock, reactor._DulClock)


@pytest.mark.parametrize("mode", ["acceptor", "requestor"])
@pytest.mark.parametrize("wake", ["peer sends a byte", "user queues a primitive"])
def test_dul_wakes_on_socket_data_or_an_outgoing_primitive(
    monkeypatch: pytest.MonkeyPatch, wake: str, mode: str
) -> None:
    """The DUL's idle sleep, stretched to 60 s, ends as soon as traffic comes either way; and
    the thread's wake-up sockets are closed when the thread ends."""
    import socket

    from pynetdicom.transport import AssociationSocket

    ae = build_ae(DicomSettings(), CallingAePolicy(accept_any=True))
    assoc = Association(ae, mode)
    provider = assoc.dul
    ours, peer = socket.socketpair()
    provider.socket = AssociationSocket(assoc, client_socket=ours)
    monkeypatch.setattr(provider, "_run_loop_delay", 60.0)
    waited: list[float] = []
    readers: list[socket.socket] = []

    def dul_sleep() -> None:
        started = time.monotonic()
        reactor._DulClock.sleep(60.0)
        waited.append(time.monotonic() - started)
        readers.append(reactor._dul_thread.wakeup.reader)

    # Sleep as the DUL's own thread would (the clock looks at the current thread).
    monkeypatch.setattr(reactor.threading, "current_thread", lambda: provider)
    sleeper = threading.Thread(target=dul_sleep)
    sleeper.start()
    time.sleep(0.3)
    assert not waited  # still asleep: no traffic yet
    if wake == "peer sends a byte":
        peer.sendall(b"\x07")
    else:
        provider.to_provider_queue.put(object())
    sleeper.join(30)
    assert waited and waited[0] < 30
    [reader] = readers
    assert reader.fileno() == -1  # closed with its thread's local storage
    ours.close()
    peer.close()


def test_other_sleeps_in_a_dul_thread_are_plain_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    ae = build_ae(DicomSettings(), CallingAePolicy(accept_any=True))
    provider = Association(ae, "requestor").dul
    monkeypatch.setattr(reactor.threading, "current_thread", lambda: provider)
    slept: list[float] = []
    monkeypatch.setattr(reactor.time, "sleep", slept.append)
    reactor._DulClock.sleep(0.25)
    assert slept == [0.25]


def _pdu_reader(sock: socket.socket) -> transport.AssociationSocket:
    """pynetdicom's association socket over ``sock`` (what the DUL reads PDUs through)."""
    reader = transport.AssociationSocket.__new__(transport.AssociationSocket)
    reader.socket = sock
    return reader


def test_bulk_recv_reads_a_pdu_sent_in_pieces_whole_and_is_installed_once() -> None:
    install_bulk_recv()
    install_bulk_recv()
    assert transport.AssociationSocket.recv is reactor._recv_whole
    ours, peer = socket.socketpair()
    payload = bytes(range(256)) * 1024  # 256 KiB, more than a socket buffer takes at once
    sender = threading.Thread(
        target=lambda: [
            (peer.sendall(payload[i : i + 70_001]), time.sleep(0.002))
            for i in range(0, len(payload), 70_001)
        ]
    )
    try:
        ours.settimeout(10)
        sender.start()
        assert bytes(_pdu_reader(ours).recv(6)) == payload[:6]
        rest = _pdu_reader(ours).recv(len(payload) - 6)
        assert isinstance(rest, bytearray) and bytes(rest) == payload[6:]
    finally:
        sender.join()
        ours.close()
        peer.close()


def test_bulk_recv_returns_what_came_before_the_peer_closed_and_times_out_as_before() -> None:
    ours, peer = socket.socketpair()
    try:
        ours.settimeout(0.2)
        with pytest.raises(TimeoutError):  # nothing sent: socket.recv's own exception
            _pdu_reader(ours).recv(10)
        peer.sendall(b"abc")
        peer.close()
        assert _pdu_reader(ours).recv(10) == bytearray(b"abc")
        assert _pdu_reader(ours).recv(10) == bytearray()
    finally:
        ours.close()


# --- fix 5: C-STORE served by the DUL thread ---------------------------------------------------


class _Served:
    """What the SCP's handlers saw: per request, the kind of thread that served it."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, str]] = []
        self.echo_started = threading.Event()
        self.echo_may_answer = threading.Event()
        self.echo_may_answer.set()
        self.datasets: list[Dataset] = []
        self.providers: set[str] = set()

    def store(self, event: evt.Event) -> int:
        self.threads.append(("store", type(threading.current_thread()).__name__))
        self.datasets.append(event.dataset)
        self.providers.add(type(event.assoc.dimse).__name__)
        return 0x0000

    def echo(self, event: evt.Event) -> int:
        self.threads.append(("echo", type(threading.current_thread()).__name__))
        self.echo_started.set()
        assert self.echo_may_answer.wait(30)
        return 0x0000


@contextlib.contextmanager
def _scp(served: _Served) -> Iterator[int]:
    """The gateway's association server, its connection handler included, with recording
    handlers for C-STORE and C-ECHO; yields its port."""
    ae = build_ae(DicomSettings(), CallingAePolicy(accept_any=True))
    server = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[
            (evt.EVT_CONN_OPEN, handle_connection_open),
            (evt.EVT_C_STORE, served.store),
            (evt.EVT_C_ECHO, served.echo),
        ],
        server_class=FastAssociationServer,
    )
    ae._servers.append(server)  # as start_scp does: shutdown() removes it
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _ct_dataset() -> Dataset:
    ds = pydicom.dcmread(io.BytesIO(ct_study_bytes(1, rows=16, columns=16)[0]))
    return ds


def _requestor(port: int) -> Association:
    scu = AE(ae_title="CT1")
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title="TELERAD")
    assert assoc.is_established
    return assoc


def test_c_store_is_served_by_the_dul_thread_and_other_requests_by_the_reactor() -> None:
    served = _Served()
    with _scp(served) as port:
        assoc = _requestor(port)
        try:
            stored = assoc.send_c_store(_ct_dataset())
            echoed = assoc.send_c_echo()
        finally:
            assoc.release()
    assert stored.Status == 0x0000 and echoed.Status == 0x0000
    assert served.threads == [("store", "DULServiceProvider"), ("echo", "Association")]


def test_c_store_waits_its_turn_while_the_reactor_serves_another_request() -> None:
    """A C-STORE that arrives while the reactor thread still serves a request (a peer that does
    not wait for the response) goes the standard way, after it: answers keep their order."""
    served = _Served()
    served.echo_may_answer.clear()
    with _scp(served) as port:
        assoc = _requestor(port)
        # Hold the requestor's own reactor, as pynetdicom's send_*() do, so that the answers
        # stay in its queue for this test to read.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            echo_context = _context_id(assoc, Verification)
            store_context = _context_id(assoc, CTImageStorage)
            echo = C_ECHO()
            echo.MessageID = 1
            echo.AffectedSOPClassUID = Verification
            assoc.dimse.send_msg(echo, echo_context)
            assert served.echo_started.wait(30)
            dataset = _ct_dataset()
            store = C_STORE()
            store.MessageID = 2
            store.AffectedSOPClassUID = CTImageStorage
            store.AffectedSOPInstanceUID = dataset.SOPInstanceUID
            store.Priority = 0x0002
            store.DataSet = io.BytesIO(encode(dataset, False, True))
            assoc.dimse.send_msg(store, store_context)
            time.sleep(0.3)  # the C-STORE has arrived; the echo is still being served
            assert served.threads == [("echo", "Association")]
            served.echo_may_answer.set()
            answers = [assoc.dimse.get_msg(block=True) for _ in range(2)]
        finally:
            assoc._reactor_checkpoint.set()
            assoc.release()
    assert [type(message).__name__ for _, message in answers] == ["C_ECHO", "C_STORE"]
    assert [message.Status for _, message in answers] == [0x0000, 0x0000]
    assert served.threads == [("echo", "Association"), ("store", "Association")]


def _context_id(assoc: Association, sop_class: str) -> int:
    [context] = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
    return int(context.context_id)


# --- fix 6: idle associations wait for events --------------------------------------------------


def test_idle_association_polls_seldom(monkeypatch: pytest.MonkeyPatch) -> None:
    """An open association with nothing to do: its reactor and DUL thread each wake a few
    dozen times a second (IDLE_WAIT_SECONDS), not a thousand (pynetdicom's 1 ms poll)."""
    waits: list[float] = []
    real_sleep = reactor._ReactorClock.sleep
    real_wait = reactor._wait_for_traffic

    def counting_sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, Association) and thread.is_acceptor:
            waits.append(seconds)
        real_sleep(seconds)

    dul_waits: list[float] = []

    def counting_wait(provider: Any, seconds: float) -> None:
        if provider.assoc.is_acceptor:
            dul_waits.append(seconds)
        real_wait(provider, seconds)

    monkeypatch.setattr(reactor._ReactorClock, "sleep", staticmethod(counting_sleep))
    monkeypatch.setattr(reactor, "_wait_for_traffic", counting_wait)
    served = _Served()
    with _scp(served) as port:
        assoc = _requestor(port)
        try:
            time.sleep(0.2)
            waits.clear()
            dul_waits.clear()
            time.sleep(1.0)
            reactor_wakes, dul_wakes = len(waits), len(dul_waits)
        finally:
            assoc.release()
    # One second idle: 1000 passes each at a 1 ms poll, ~50 at 20 ms (the requestor's
    # threads, pynetdicom's own, are in this process too: only the acceptor's are counted).
    assert 0 < reactor_wakes < 150
    assert 0 < dul_wakes < 150


def test_peer_release_wakes_a_reactor_that_would_wait_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With both idle waits stretched to 60 s, A-RELEASE and C-ECHO are still answered at
    once: the reactor is woken by the DUL's ACSE queue, the DUL by its socket."""
    monkeypatch.setattr(reactor, "IDLE_WAIT_SECONDS", 60.0)
    monkeypatch.setattr(scp, "DUL_POLL_SECONDS", 60.0)
    served = _Served()
    with _scp(served) as port:
        assoc = _requestor(port)
        time.sleep(0.3)  # both threads are in their long waits
        started = time.monotonic()
        echoed = assoc.send_c_echo()
        assoc.release()
        took = time.monotonic() - started
    assert echoed.Status == 0x0000
    assert assoc.is_released
    assert took < 30
