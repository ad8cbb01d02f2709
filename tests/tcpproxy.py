"""A shaping, cuttable TCP proxy for fault tests and WAN benchmarks.

The kernel here has no ``netem``, so the proxy stands in for the WAN between a county gateway and
the centre: it forwards every connection accepted on ``listen_host:port`` to the target, shaping
each direction like a slow, unreliable link, and it can cut and restore that link on demand::

    with TcpProxy("127.0.0.1", 8042, bandwidth_bps=10e6, latency_s=0.05) as proxy:
        url = "http://{}:{}".format(*proxy.address)
        ...
        proxy.cut("reset")
        ...
        proxy.restore()

Link model, per direction (upstream client to target, downstream target to client):

- **Bandwidth**: one token bucket per direction, shared by all connections (a WAN link is shared,
  so four parallel keep-alive connections share the 10 Mbit/s), with a burst of one read chunk.
- **Latency** is propagation, not a per-chunk round trip: a chunk read at ``t`` is delivered at
  ``max(departure + latency, previous delivery on this connection)``, where ``departure`` is when
  the token bucket has serialized it. At full rate that is ``previous delivery + size / rate``, so
  throughput does not depend on latency, and order is preserved.
- **Stalls**: each chunk read (at most :data:`CHUNK_SIZE` bytes) pauses the whole direction, with
  probability ``stall_probability``, for ``uniform(*stall_seconds)`` seconds. It stands in for a
  lost packet and the retransmission timeout that follows.
- **Window**: each connection holds at most about one bandwidth-delay product plus four chunks in
  flight; beyond that the proxy stops reading, so the sender blocks as it would on a real link.

Link control, see :meth:`TcpProxy.cut` and :meth:`TcpProxy.restore`:

- ``cut("reset")``: every connection is reset (RST, ``SO_LINGER`` 0) on both sides; new connections
  are accepted and reset at once, until :meth:`TcpProxy.restore`.
- ``cut("blackhole")``: packets vanish. Connections stay open but nothing is delivered and, once a
  connection's window is full, nothing more is read; new connections are accepted and held, never
  forwarded. :meth:`TcpProxy.restore` then resets every held connection: a real outage of tens of
  seconds ends in the application's timeout and a reconnect, so resuming stale connections as if
  nothing happened would let a test pass that the WAN would fail.

The proxy runs an asyncio loop in one background thread; :meth:`TcpProxy.stop` resets every
connection, closes every socket and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Literal, Self

logger = logging.getLogger(__name__)

#: Bytes read at a time: 13 ms of transmission at 10 Mbit/s, fine enough for accurate shaping.
CHUNK_SIZE = 16 * 1024
#: In-flight allowance per connection on top of the bandwidth-delay product.
_SPARE_CHUNKS = 4
#: In-flight cap per connection when there is latency but no bandwidth limit (a large TCP window).
_UNSHAPED_WINDOW = 4 * 1024 * 1024
#: How long start(), stop(), cut() and restore() wait for the proxy thread.
_CONTROL_TIMEOUT_S = 10.0

CutMode = Literal["reset", "blackhole"]


class LinkShaper:
    """One direction of the link: a token bucket with random stalls, shared by all connections.

    A pure clock: :meth:`departure` takes the time a chunk was read and returns the time its last
    byte has been sent, in the same time base; it never sleeps.

    Parameters
    ----------
    bandwidth_bps
        Throughput in bits per second, or ``None`` for no limit.
    stall_probability
        Probability that a chunk stalls the direction before it is sent.
    stall_seconds
        Range of a stall's duration, drawn uniformly.
    rng
        Source of the stall draws; seed it for a repeatable run.
    burst_bytes
        Bucket depth: bytes sent at once after the link has been idle.
    """

    def __init__(
        self,
        bandwidth_bps: float | None,
        *,
        stall_probability: float = 0.0,
        stall_seconds: tuple[float, float] = (0.05, 0.3),
        rng: random.Random | None = None,
        burst_bytes: int = CHUNK_SIZE,
    ) -> None:
        self._rate = None if bandwidth_bps is None else bandwidth_bps / 8
        self._stall_probability = stall_probability
        self._stall_seconds = stall_seconds
        self._rng = rng or random.Random()
        self._burst_s = 0.0 if self._rate is None else burst_bytes / self._rate
        self._free_at = -math.inf

    def departure(self, size: int, now: float) -> float:
        """Reserve the link for ``size`` bytes read at ``now``; return when they are sent.

        Parameters
        ----------
        size
            Bytes in the chunk; 0 (end of stream) takes its turn but neither time nor a stall.
        now
            When the chunk was read, in seconds on a monotonic clock.

        Returns
        -------
        float
            The departure time, never earlier than ``now``.
        """
        # GCRA form of the token bucket: _free_at is when the link has sent all it was given;
        # a full bucket lets the link start up to one burst "in the past".
        start = max(self._free_at, now - self._burst_s)
        if size and self._rng.random() < self._stall_probability:
            start = max(self._free_at, now) + self._rng.uniform(*self._stall_seconds)
        self._free_at = start + self._transmission_s(size)
        return max(now, self._free_at)

    def reset(self) -> None:
        """Forget the backlog: the link is idle, the bucket full."""
        self._free_at = -math.inf

    def window_bytes(self, latency_s: float) -> int:
        """Bytes one connection may have in flight: the bandwidth-delay product plus spare."""
        spare = _SPARE_CHUNKS * CHUNK_SIZE
        if self._rate is None:
            return _UNSHAPED_WINDOW if latency_s > 0 else spare
        return spare + math.ceil(self._rate * latency_s)

    def _transmission_s(self, size: int) -> float:
        return 0.0 if self._rate is None else size / self._rate


class _Pipe:
    """One direction of one connection: reads chunks, delivers each at its scheduled time."""

    def __init__(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        shaper: LinkShaper,
        latency_s: float,
        link_up: asyncio.Event,
        on_delivered: Callable[[int], None],
    ) -> None:
        self._source = source
        self._sink = sink
        self._shaper = shaper
        self._latency_s = latency_s
        self._link_up = link_up
        self._on_delivered = on_delivered
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._window = shaper.window_bytes(latency_s)
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._last_delivery = -math.inf

    async def run(self) -> None:
        """Forward until end of stream, which is passed on as a half-close."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive())
            group.create_task(self._deliver())

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            data = await self._source.read(CHUNK_SIZE)
            self._queue.put_nowait((self._delivery_time(len(data), loop.time()), data))
            if not data:
                return
            self._in_flight += len(data)
            if self._in_flight >= self._window:
                self._room.clear()

    def _delivery_time(self, size: int, now: float) -> float:
        departure = self._shaper.departure(size, now)
        self._last_delivery = max(departure + self._latency_s, self._last_delivery)
        return self._last_delivery

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deliver_at, data = await self._queue.get()
            delay = deliver_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._link_up.wait()
            if not data:
                self._sink.write_eof()
                return
            # Counted first, so a peer that has seen the bytes never sees a smaller counter.
            self._on_delivered(len(data))
            self._sink.write(data)
            await self._sink.drain()
            self._landed(len(data))

    def _landed(self, size: int) -> None:
        self._in_flight -= size
        if self._in_flight < self._window:
            self._room.set()


def _set_nodelay(sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _arm_reset(sock: Any) -> None:
    """Make the next close of ``sock`` send RST instead of FIN."""
    with contextlib.suppress(OSError):  # already closed: nothing left to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One proxied connection: the client socket, its streams, the target's writer, its task."""

    def __init__(self, client_sock: socket.socket) -> None:
        self.client_sock = client_sock
        self.client_writer: asyncio.StreamWriter | None = None
        self.target_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        """Arm RST on both sides and cancel the forwarding; the task's cleanup closes."""
        self.arm_reset()
        if self.task is not None:
            self.task.cancel()

    def arm_reset(self) -> None:
        _arm_reset(self.client_sock)
        if self.target_writer is not None:
            _arm_reset(self.target_writer.get_extra_info("socket"))

    def close(self, graceful: bool) -> None:
        """Close both sides: FIN after pending data if ``graceful``, else at once."""
        if self.client_writer is None:
            self.client_sock.close()
        for writer in (self.client_writer, self.target_writer):
            if writer is None:
                continue
            if graceful:
                writer.close()
            else:
                writer.transport.abort()


class TcpProxy:
    """Forward TCP connections to a target through a shaped link that can be cut.

    Parameters
    ----------
    target_host, target_port
        Where every accepted connection is forwarded.
    listen_host, listen_port
        Where to listen; port 0 (the default) lets the kernel pick a free one, see :attr:`port`.
    bandwidth_bps
        Throughput limit per direction in bits per second, shared by all connections;
        ``None`` for no limit.
    latency_s
        One-way delay added to every chunk, in seconds.
    stall_probability
        Probability per chunk read (at most :data:`CHUNK_SIZE` bytes) that the direction pauses.
    stall_seconds
        Range of a pause's duration in seconds, drawn uniformly.
    seed
        Seed for the stall draws (each direction has its own generator); ``None`` for random.

    Notes
    -----
    Counters and :attr:`is_cut` may be read from any thread. :meth:`cut` and :meth:`restore`
    return once the change has taken effect (resets sent).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        bandwidth_bps: float | None = None,
        latency_s: float = 0.0,
        stall_probability: float = 0.0,
        stall_seconds: tuple[float, float] = (0.05, 0.3),
        seed: int | None = None,
    ) -> None:
        _validate(bandwidth_bps, latency_s, stall_probability, stall_seconds)
        self._target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._latency_s = latency_s
        self._up = LinkShaper(
            bandwidth_bps,
            stall_probability=stall_probability,
            stall_seconds=stall_seconds,
            rng=random.Random(None if seed is None else f"{seed}:up"),
        )
        self._down = LinkShaper(
            bandwidth_bps,
            stall_probability=stall_probability,
            stall_seconds=stall_seconds,
            rng=random.Random(None if seed is None else f"{seed}:down"),
        )
        self._counter_lock = threading.Lock()
        self._bytes_up = 0
        self._bytes_down = 0
        self._connections = 0
        self._mode: Literal["up", "reset", "blackhole"] = "up"
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: set[_Link] = set()
        self._link_up: asyncio.Event
        self._stop_requested: asyncio.Event

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the listening socket and start forwarding in a background thread.

        Returns
        -------
        TcpProxy
            This proxy, started.

        Raises
        ------
        OSError
            The listen address cannot be bound.
        RuntimeError
            The proxy was already started.
        """
        if self._thread is not None:
            raise RuntimeError("TcpProxy already started")
        listener = socket.create_server(self._listen)
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._main(listener, ready),),
            name=f"tcpproxy-{self._port}",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(_CONTROL_TIMEOUT_S):
            raise RuntimeError("TcpProxy thread did not start")
        return self

    def stop(self) -> None:
        """Reset every connection, close the listening socket and join the thread.

        Idempotent; a stopped proxy cannot be started again.
        """
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(self._stop_requested.set)
        thread.join(_CONTROL_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("TcpProxy thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses and counters --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound listening port (known once started)."""
        if self._port is None:
            raise RuntimeError("TcpProxy not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(listen_host, port)``, ready for :func:`socket.create_connection`."""
        return (self._listen[0], self.port)

    @property
    def bytes_up(self) -> int:
        """Bytes delivered (handed to the target's socket at their delivery time) so far."""
        with self._counter_lock:
            return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes delivered (handed to the clients' sockets at their delivery time) so far."""
        with self._counter_lock:
            return self._bytes_down

    @property
    def connections(self) -> int:
        """Connections accepted so far, including those reset or held during a cut."""
        with self._counter_lock:
            return self._connections

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut (either mode)."""
        return self._mode != "up"

    # -- link control ------------------------------------------------------------------------

    def cut(self, mode: CutMode = "reset") -> None:
        """Cut the link until :meth:`restore`.

        Parameters
        ----------
        mode
            ``"reset"``: reset (RST) every connection on both sides now, and reset each new one
            as soon as it is accepted. ``"blackhole"``: deliver nothing, in either direction, on
            open or new connections; they stay open and hang.

        Raises
        ------
        ValueError
            ``mode`` is neither of the above.
        """
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode must be 'reset' or 'blackhole', not {mode!r}")
        self._control(self._cut(mode))

    def restore(self) -> None:
        """Bring the link back; after a blackhole, reset every connection it held first.

        Connections held through a blackhole are reset rather than resumed: a real outage ends
        in the application's timeout and a reconnect. A no-op when the link is up.
        """
        self._control(self._restore())

    # -- inside the proxy thread -------------------------------------------------------------

    def _control(self, change: Coroutine[Any, Any, None]) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            change.close()
            raise RuntimeError("TcpProxy not running")
        asyncio.run_coroutine_threadsafe(change, self._loop).result(_CONTROL_TIMEOUT_S)

    async def _main(self, listener: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._stop_requested = asyncio.Event()
        accepting = asyncio.create_task(self._accept(listener))
        ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            accepting.cancel()
            await asyncio.gather(accepting, return_exceptions=True)
            listener.close()
            await self._reset_links()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError:
                logger.exception("tcpproxy: accept failed")
                await asyncio.sleep(0.1)
                continue
            self._count(connections=1)
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        if self._mode == "reset":
            _arm_reset(conn)
            conn.close()
            return
        _set_nodelay(conn)
        link = _Link(conn)
        self._links.add(link)
        link.task = asyncio.create_task(self._serve(link))

    async def _serve(self, link: _Link) -> None:
        graceful = False
        try:
            await self._forward(link)
            graceful = True
        except* OSError:
            link.arm_reset()  # a peer reset, or the target refused: pass a reset on
        except* Exception:
            logger.exception("tcpproxy: forwarding failed")
            link.arm_reset()
        finally:
            link.close(graceful)
            self._links.discard(link)

    async def _forward(self, link: _Link) -> None:
        client_reader, link.client_writer = await asyncio.open_connection(sock=link.client_sock)
        await self._link_up.wait()  # a blackhole holds new connections here
        target_reader, link.target_writer = await asyncio.open_connection(*self._target)
        _set_nodelay(link.target_writer.get_extra_info("socket"))
        upstream = self._pipe(client_reader, link.target_writer, self._up, self._delivered_up)
        downstream = self._pipe(target_reader, link.client_writer, self._down, self._delivered_down)
        async with asyncio.TaskGroup() as group:
            group.create_task(upstream.run())
            group.create_task(downstream.run())

    def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        shaper: LinkShaper,
        on_delivered: Callable[[int], None],
    ) -> _Pipe:
        return _Pipe(source, sink, shaper, self._latency_s, self._link_up, on_delivered)

    def _delivered_up(self, size: int) -> None:
        self._count(bytes_up=size)

    def _delivered_down(self, size: int) -> None:
        self._count(bytes_down=size)

    async def _cut(self, mode: CutMode) -> None:
        logger.info("tcpproxy %s: cut (%s)", self._port, mode)
        self._mode = mode
        self._link_up.clear()
        if mode == "reset":
            await self._reset_links()

    async def _restore(self) -> None:
        if self._mode == "up":
            return
        logger.info("tcpproxy %s: restore after %s", self._port, self._mode)
        await self._reset_links()
        self._mode = "up"
        self._link_up.set()

    async def _reset_links(self) -> None:
        links = list(self._links)
        for link in links:
            link.reset()
        await asyncio.gather(*(link.task for link in links if link.task), return_exceptions=True)
        for shaper in (self._up, self._down):
            shaper.reset()

    def _count(self, *, bytes_up: int = 0, bytes_down: int = 0, connections: int = 0) -> None:
        with self._counter_lock:
            self._bytes_up += bytes_up
            self._bytes_down += bytes_down
            self._connections += connections


def _validate(
    bandwidth_bps: float | None,
    latency_s: float,
    stall_probability: float,
    stall_seconds: tuple[float, float],
) -> None:
    if bandwidth_bps is not None and not bandwidth_bps > 0:
        raise ValueError(f"bandwidth_bps must be positive or None, not {bandwidth_bps!r}")
    if not latency_s >= 0:
        raise ValueError(f"latency_s must be >= 0, not {latency_s!r}")
    if not 0 <= stall_probability <= 1:
        raise ValueError(f"stall_probability must be in [0, 1], not {stall_probability!r}")
    low, high = stall_seconds
    if not 0 <= low <= high:
        raise ValueError(f"stall_seconds must satisfy 0 <= low <= high, not {stall_seconds!r}")
