"""``dicomweb.py --profile``: telerad's API in this process, every thread under cProfile.

The API answers on uvicorn's event-loop thread and runs blocking work in anyio's worker
threads; ``python -m cProfile`` would see only the main thread. So, as ``_common`` does for the
gateway, every thread started while profiling gets its own profiler and the statistics are
merged. The in-process API opens the same data directory as the ``telerad serve`` being
measured (SQLite in WAL mode and the filesystem store allow a second reader), with the same
token key, and starts with empty caches, so rendered images are rendered again.
"""

from __future__ import annotations

import cProfile
import pstats
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import uvicorn
from dicomweb_metrics import Metric, Server, metric_urls, timed_get
from ingest_stow import BenchError

from telerad.settings import Settings
from telerad.viewer_api import create_app


@contextmanager
def every_thread_profiled() -> Iterator[list[cProfile.Profile]]:
    """Profile each thread started inside the block; their profiles. A profile is listed when
    its thread starts: anyio's worker threads, where the API's blocking work runs, outlive the
    block (idle in their pool), so their statistics are read while they wait."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()
        try:
            bootstrap(self)
        finally:
            profile.disable()

    threading.Thread._bootstrap_inner = profiled  # type: ignore[attr-defined]
    try:
        yield profiles
    finally:
        threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]


@contextmanager
def api_in_thread(data_dir: Path) -> Iterator[str]:
    """telerad's API over ``data_dir``, served by uvicorn in a thread; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(Settings(data_dir=data_dir))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not server.started:
            raise BenchError("the in-process API did not start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def profile_metric(
    metric: Metric,
    server: Server,
    data_dir: Path,
    study: str,
    series: str,
    instances: Sequence[str],
    *,
    repeat: int,
) -> str:
    """Run ``metric``'s measured requests against an in-process, profiled API; the top
    functions by cumulative and by own time, and where the full profile was saved."""
    with every_thread_profiled() as profiles, api_in_thread(data_dir) as base:
        local = replace(server, root=f"{base}/dicomweb")
        _, urls = metric_urls(metric, local, study, series, instances, repeat)
        started = time.perf_counter()
        with httpx.Client(headers=server.headers, timeout=120) as client:
            for url in urls:
                timed_get(client, url, metric.accept, metric.check, len(instances))
        elapsed = time.perf_counter() - started
    out = Path(tempfile.gettempdir()) / f"telerad-dicomweb-{metric.key}.prof"
    for profile in profiles:
        profile.create_stats()
    used = [p for p in profiles if p.stats]  # type: ignore[attr-defined]
    stats = pstats.Stats(*used)  # type: ignore[arg-type]
    stats.dump_stats(out)
    head = (
        f"profile of telerad, {metric.title}: {len(urls)} requests in {elapsed:.2f} s"
        f" ({elapsed / len(urls) * 1000:.1f} ms each, profiler overhead included);"
        f" full profile: {out} (python -m pstats {out})"
    )
    return f"{head}\n\n{_top(stats)}"


#: Built-ins where threads wait (locks, queues, the event loop's poll): not work.
IDLE = ("acquire", "poll", "select", "sleep", "wait", "get' of '_queue")


@dataclass(frozen=True)
class Row:
    """One profiled function."""

    path: str  # its file, in full
    label: str  # file name:line(function)
    calls: int
    own: float  # seconds in the function itself
    cumulative: float  # seconds including what it called


def _rows(stats: pstats.Stats) -> list[Row]:
    table = stats.stats  # type: ignore[attr-defined]
    return [
        Row(path, f"{Path(path).name}:{line}({name})" if line else name, calls, own, cumulative)
        for (path, line, name), (_, calls, own, cumulative, _) in table.items()
    ]


def _table(title: str, rows: Sequence[Row]) -> str:
    lines = [title, f"{'calls':>8} {'own s':>8} {'cum s':>8}  function"]
    lines += [f"{r.calls:>8} {r.own:>8.3f} {r.cumulative:>8.3f}  {r.label}" for r in rows]
    return "\n".join(lines)


def _top(stats: pstats.Stats) -> str:
    """telerad's own functions by cumulative time, then every function by own time with the
    threads' waiting left out."""
    rows = _rows(stats)
    ours = sorted((r for r in rows if "/telerad/" in r.path), key=lambda r: -r.cumulative)
    busy = sorted((r for r in rows if not any(w in r.label for w in IDLE)), key=lambda r: -r.own)
    return "\n\n".join(
        [
            _table("telerad's functions by cumulative time:", ours[:30]),
            _table("all functions by own time (waiting left out):", busy[:25]),
        ]
    )
