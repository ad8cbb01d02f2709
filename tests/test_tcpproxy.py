"""The WAN-simulating TCP proxy, over real sockets on 127.0.0.1.

Targets are real servers in threads: an echo server, a sink that answers with the byte count it
received, a source that sends as many bytes as asked, and an HTTP/1.1 keep-alive server. The
shaping tests measure wall-clock time, with tolerances wide enough for a loaded machine.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import http.client
import http.server
import os
import random
import socket
import socketserver
import statistics
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.tcpproxy import CHUNK_SIZE, LinkShaper, TcpProxy

pytestmark = pytest.mark.timeout(20)

TEN_MBIT = 10e6
SOCKET_TIMEOUT_S = 10.0
COUNT = struct.Struct("!Q")


# -- target servers ---------------------------------------------------------------------------


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True  # server_close() still joins them (block_on_close)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _SinkHandler(socketserver.BaseRequestHandler):
    """Read to end of stream, then answer with the number of bytes read."""

    def handle(self) -> None:
        received = 0
        with contextlib.suppress(ConnectionError):
            while data := self.request.recv(65536):
                received += len(data)
            self.request.sendall(COUNT.pack(received))


class _SourceHandler(socketserver.BaseRequestHandler):
    """Read a byte count, send that many bytes, close."""

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):
            (size,) = COUNT.unpack(_recv_exactly(self.request, COUNT.size))
            self.request.sendall(bytes(size))


class _BytesHandler(http.server.BaseHTTPRequestHandler):
    """``GET /bytes/N`` answers N reproducible bytes, keeping the connection alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = _pattern(int(self.path.rsplit("/", 1)[-1]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


class _HttpServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a proxy reset mid-request is expected in these tests


@contextlib.contextmanager
def serving(server: socketserver.TCPServer) -> Iterator[tuple[str, int]]:
    """Run ``server`` in a thread; yield its address; shut it down and join every thread."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    with serving(_Server(("127.0.0.1", 0), _EchoHandler)) as address:
        yield address


@pytest.fixture
def sink() -> Iterator[tuple[str, int]]:
    with serving(_Server(("127.0.0.1", 0), _SinkHandler)) as address:
        yield address


@pytest.fixture
def source() -> Iterator[tuple[str, int]]:
    with serving(_Server(("127.0.0.1", 0), _SourceHandler)) as address:
        yield address


@pytest.fixture
def http_target() -> Iterator[tuple[str, int]]:
    with serving(_HttpServer(("127.0.0.1", 0), _BytesHandler)) as address:
        yield address


# -- client helpers ---------------------------------------------------------------------------


def _pattern(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        data = sock.recv(size - len(chunks))
        if not data:
            raise ConnectionError(f"end of stream after {len(chunks)} of {size} bytes")
        chunks += data
    return bytes(chunks)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while data := sock.recv(65536):
        chunks += data
    return bytes(chunks)


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=SOCKET_TIMEOUT_S)


def echo_through(proxy: TcpProxy, payload: bytes) -> bytes:
    """Send ``payload`` and half-close while reading the echo to end of stream."""
    with connect(proxy) as sock, ThreadPoolExecutor(1) as pool:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sending = pool.submit(send)
        echoed = _recv_all(sock)
        sending.result()
    return echoed


def ping(sock: socket.socket, message: bytes = b"ping") -> bytes:
    sock.sendall(message)
    return _recv_exactly(sock, len(message))


def timed_upload(proxy: TcpProxy, size: int) -> float:
    """Seconds to send ``size`` bytes to the sink and receive its count back."""
    with connect(proxy) as sock:
        started = time.perf_counter()
        sock.sendall(bytes(size))
        sock.shutdown(socket.SHUT_WR)
        (received,) = COUNT.unpack(_recv_exactly(sock, COUNT.size))
        elapsed = time.perf_counter() - started
    assert received == size
    return elapsed


def timed_download(proxy: TcpProxy, size: int) -> float:
    """Seconds from asking the source for ``size`` bytes to the end of its stream."""
    with connect(proxy) as sock:
        started = time.perf_counter()
        sock.sendall(COUNT.pack(size))
        received = len(_recv_all(sock))
        elapsed = time.perf_counter() - started
    assert received == size
    return elapsed


# -- the link model, as plain values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("bandwidth_bps", "stall_probability", "chunks", "departures"),
    [
        # 8000 bit/s = 1000 B/s; a full bucket (one CHUNK_SIZE) sends the first chunk at once.
        (8000, 0.0, [(CHUNK_SIZE, 0.0)], [0.0]),
        (8000, 0.0, [(CHUNK_SIZE, 0.0), (1000, 0.0), (500, 0.0)], [0.0, 1.0, 1.5]),
        (8000, 0.0, [(CHUNK_SIZE, 0.0), (1000, 0.5)], [0.0, 1.0]),
        # Idle long enough to refill the bucket: no queueing.
        (8000, 0.0, [(CHUNK_SIZE, 0.0), (1000, 100.0)], [0.0, 100.0]),
        (None, 0.0, [(10**9, 2.0), (10**9, 2.0)], [2.0, 2.0]),
        # A stall of exactly 0.5 s before every chunk; end of stream (0 bytes) never stalls.
        (8000, 1.0, [(1000, 0.0), (1000, 0.0), (0, 0.0)], [1.5, 3.0, 3.0]),
        (None, 1.0, [(1000, 0.0), (1000, 0.2)], [0.5, 1.0]),
    ],
)
def test_link_shaper_departures(
    bandwidth_bps: float | None,
    stall_probability: float,
    chunks: list[tuple[int, float]],
    departures: list[float],
) -> None:
    shaper = LinkShaper(
        bandwidth_bps, stall_probability=stall_probability, stall_seconds=(0.5, 0.5)
    )
    assert [shaper.departure(size, now) for size, now in chunks] == pytest.approx(departures)


def test_link_shaper_stalls_repeat_with_a_seed() -> None:
    def run(seed: int) -> list[float]:
        shaper = LinkShaper(None, stall_probability=0.5, rng=random.Random(seed))
        return [shaper.departure(1000, 0.0) for _ in range(50)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_link_shaper_reset_forgets_the_backlog() -> None:
    shaper = LinkShaper(8000)
    shaper.departure(CHUNK_SIZE + 5000, 0.0)
    shaper.reset()
    assert shaper.departure(1000, 0.0) == 0.0


# -- forwarding -------------------------------------------------------------------------------


def test_bytes_pass_unchanged_both_ways(echo: tuple[str, int]) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with TcpProxy(*echo) as proxy:
        echoed = echo_through(proxy, payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def test_counters_match_payload_sizes(echo: tuple[str, int]) -> None:
    sizes = [300_000, 1, 70_001]
    with TcpProxy(*echo) as proxy:
        for size in sizes:
            assert len(echo_through(proxy, os.urandom(size))) == size
        assert (proxy.bytes_up, proxy.bytes_down) == (sum(sizes), sum(sizes))
        assert proxy.connections == len(sizes)


def test_parallel_http_keep_alive_connections(http_target: tuple[str, int]) -> None:
    workers, requests_each = 4, 5

    def fetch_several(worker: int) -> int:
        host, port = proxy.address
        connection = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_S)
        try:
            for request in range(requests_each):
                size = 100_000 + 1000 * worker + request
                connection.request("GET", f"/bytes/{size}")
                response = connection.getresponse()
                assert response.status == 200
                assert response.read() == _pattern(size)
        finally:
            connection.close()
        return requests_each

    with TcpProxy(*http_target, latency_s=0.01) as proxy, ThreadPoolExecutor(workers) as pool:
        completed = sum(pool.map(fetch_several, range(workers)))
    assert completed == workers * requests_each
    assert proxy.connections == workers  # one kept-alive connection per worker


# -- shaping ----------------------------------------------------------------------------------

SHAPED_BYTES = 2_500_000


@pytest.mark.parametrize(("direction", "latency_s"), [("up", 0.0), ("up", 0.05), ("down", 0.05)])
def test_throughput_matches_bandwidth(
    direction: str, latency_s: float, sink: tuple[str, int], source: tuple[str, int]
) -> None:
    target = sink if direction == "up" else source
    transfer = timed_upload if direction == "up" else timed_download
    with TcpProxy(*target, bandwidth_bps=TEN_MBIT, latency_s=latency_s) as proxy:
        elapsed = transfer(proxy, SHAPED_BYTES)
    # Latency is paid once per trip (request and answer), not once per chunk.
    expected = SHAPED_BYTES * 8 / TEN_MBIT + 2 * latency_s
    assert elapsed == pytest.approx(expected, rel=0.15)


def test_round_trip_is_twice_the_latency(echo: tuple[str, int]) -> None:
    latency_s = 0.1
    with TcpProxy(*echo, latency_s=latency_s) as proxy, connect(proxy) as sock:
        round_trips = []
        for _ in range(3):
            started = time.perf_counter()
            assert ping(sock) == b"ping"
            round_trips.append(time.perf_counter() - started)
    assert min(round_trips) >= 2 * latency_s
    assert statistics.median(round_trips) < 2 * latency_s + 0.04


def test_stalls_slow_the_link(echo: tuple[str, int]) -> None:
    payload = os.urandom(256 * 1024)  # at least 16 chunks, each one stalling the way up

    def elapsed(stall_probability: float) -> float:
        with TcpProxy(
            *echo, stall_probability=stall_probability, stall_seconds=(0.02, 0.03), seed=1
        ) as proxy:
            started = time.perf_counter()
            assert echo_through(proxy, payload) == payload
            return time.perf_counter() - started

    assert elapsed(1.0) >= elapsed(0.0) + len(payload) // CHUNK_SIZE * 0.02


# -- cutting the link -------------------------------------------------------------------------


def test_cut_reset_fails_live_and_new_connections_until_restored(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy:
        with connect(proxy) as live:
            assert ping(live) == b"ping"
            proxy.cut("reset")
            assert proxy.is_cut
            with pytest.raises(ConnectionResetError):
                live.recv(1)
        with pytest.raises(ConnectionResetError), connect(proxy) as refused:  # reset may come first
            refused.recv(1)
        proxy.restore()
        assert not proxy.is_cut
        with connect(proxy) as fresh:
            assert ping(fresh) == b"ping"
        assert proxy.connections == 3


def test_blackhole_holds_traffic_then_restore_resets(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy, connect(proxy) as live:
        assert ping(live) == b"ping"
        delivered = (proxy.bytes_up, proxy.bytes_down)
        proxy.cut("blackhole")
        assert proxy.is_cut
        with connect(proxy) as held:  # accepted, never forwarded
            for sock in (live, held):
                sock.sendall(b"into the void")
                sock.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    sock.recv(1)
            assert (proxy.bytes_up, proxy.bytes_down) == delivered
            proxy.restore()
            for sock in (live, held):
                sock.settimeout(SOCKET_TIMEOUT_S)
                with pytest.raises(ConnectionResetError):
                    sock.recv(1)
        with connect(proxy) as fresh:
            assert ping(fresh) == b"ping"


def test_restore_when_not_cut_keeps_connections(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy, connect(proxy) as live:
        proxy.restore()
        assert ping(live) == b"ping"


def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]  # bound, not listening: connections are refused
        # under load the reset can arrive before connect() returns: either way it is a reset
        with (
            TcpProxy("127.0.0.1", closed_port) as proxy,
            pytest.raises(ConnectionResetError),
            connect(proxy) as sock,
        ):
            sock.recv(1)


# -- lifecycle and arguments ------------------------------------------------------------------


def test_stop_resets_connections_and_leaves_nothing_behind(echo: tuple[str, int]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        proxy = TcpProxy(*echo).start()
        with connect(proxy) as live:
            assert ping(live) == b"ping"
            proxy.stop()
            proxy.stop()  # idempotent
            with pytest.raises(ConnectionResetError):
                live.recv(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=SOCKET_TIMEOUT_S).close()
        del proxy
        gc.collect()
    assert [t.name for t in threading.enumerate() if t.name.startswith("tcpproxy")] == []
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize(
    "arguments",
    [
        {"bandwidth_bps": 0},
        {"latency_s": -0.1},
        {"stall_probability": 1.5},
        {"stall_seconds": (0.3, 0.1)},
    ],
)
def test_invalid_arguments_are_rejected(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TcpProxy("127.0.0.1", 9, **arguments)


def test_link_control_needs_a_running_proxy_and_a_known_mode(echo: tuple[str, int]) -> None:
    proxy = TcpProxy(*echo)
    with pytest.raises(RuntimeError):
        proxy.cut()
    with proxy, pytest.raises(ValueError):
        proxy.cut("unplug")  # type: ignore[arg-type]
