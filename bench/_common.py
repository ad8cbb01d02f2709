"""Shared pieces of the DIMSE and WAN benchmarks (``ingest_dimse.py``, ``wan.py``).

dcmtk's tools by absolute path (pynetdicom installs console scripts of the same names that
shadow them on PATH); ``telerad serve``, ``telerad gateway`` and Orthanc as subprocesses on free
localhost ports; the gateway's outbox as the bench reads it; and a per-thread profiler for the
gateway. The process helpers (free ports, process groups, start-up waits, the admin token) are
those of ``ingest_stow.py``.

dcmtk 3.6.7 has no ``+nodelay`` option: its network layer disables Nagle's algorithm when the
environment variable ``TCP_NODELAY`` is set, so every dcmtk process here (storescu, echoscu and
Orthanc, which is built on dcmtk) runs with ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests
from ingest_stow import (
    BenchError,
    free_port,
    orthanc_binary,
    running,
    tail,
    telerad_token,
    wait_until_up,
)

__all__ = [
    "BENCH_DIR",
    "MAX_SEND_PDU",
    "NODELAY_ENV",
    "REPO_DIR",
    "BenchError",
    "Centre",
    "GatewayProcess",
    "OutboxReader",
    "base_env",
    "centre_routes",
    "centre_study_instances",
    "dcmtk",
    "free_port",
    "gateway_processes",
    "load_average",
    "orthanc_dimse",
    "run_profiled_gateway",
    "site_token",
    "split",
    "start_storescu",
    "study_uid_of",
    "tail",
    "telerad_gateway",
    "telerad_serve",
    "wait_for",
    "wait_storescu",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DCMTK_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/dcmtk/bin")
#: dcmtk reads Nagle's switch from the environment (see the module docstring).
NODELAY_ENV = {"TCP_NODELAY": "1"}
#: The largest PDU dcmtk sends (and Orthanc accepts); telerad accepts up to 4 MiB.
MAX_SEND_PDU = 131072
STARTUP_TIMEOUT_S = 90.0
ECHOES_IN_A_ROW = 6
ECHO_SPACING_S = 0.5
TELERAD = [sys.executable, "-m", "telerad.cli"]


# --- environment and dcmtk ----------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``TELERAD_`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELERAD_")}
    env.update(extra)
    return env


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool, never pynetdicom's console script of the same name."""
    for directory in DCMTK_DIRS:
        candidate = Path(directory) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BenchError(f"dcmtk's {tool} not found in {', '.join(DCMTK_DIRS)} (apt-get install dcmtk)")


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``files`` in ``parts`` contiguous groups of (nearly) equal size."""
    size, extra = divmod(len(files), parts)
    groups, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        groups.append(list(files[start:end]))
        start = end
    return [g for g in groups if g]


@dataclass
class StoreScu:
    """storescu processes started together, and when they started."""

    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]
    started: float


def start_storescu(
    port: int, groups: Sequence[Sequence[Path]], *, called: str, work: Path, calling: str = "CT1"
) -> StoreScu:
    """One dcmtk storescu per group, all at once, each on its own association."""
    env = base_env(**NODELAY_ENV)
    processes, logs = [], []
    started = time.perf_counter()
    for index, group in enumerate(groups):
        log = work / f"storescu-{index}.log"
        argv = [
            dcmtk("storescu"), "--max-send-pdu", str(MAX_SEND_PDU), "-aet", calling,
            "-aec", called, "127.0.0.1", str(port), *map(str, group),
        ]  # fmt: skip
        with log.open("wb") as out:
            processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env))
        logs.append(log)
    return StoreScu(processes, logs, started)


def storescu_done(run: StoreScu) -> bool:
    """Whether every storescu of ``run`` has exited."""
    return all(p.poll() is not None for p in run.processes)


def wait_storescu(run: StoreScu, timeout: float = 600.0) -> float:
    """Wait for every storescu; the time (perf_counter) the last one exited.

    Raises
    ------
    BenchError
        A storescu failed (any C-STORE not successful makes dcmtk exit non-zero).
    """
    deadline = run.started + timeout
    while not storescu_done(run):
        if time.perf_counter() > deadline:
            for p in run.processes:
                p.kill()
            raise BenchError(f"storescu still running after {timeout:.0f} s")
        time.sleep(0.002)
    ended = time.perf_counter()
    check_storescu(run)
    return ended


def check_storescu(run: StoreScu) -> None:
    """Raise :class:`BenchError` with its output if a storescu exited non-zero."""
    for process, log in zip(run.processes, run.logs, strict=True):
        if process.returncode != 0:
            raise BenchError(f"storescu exited with {process.returncode}:\n{tail(log)}")


def echo_succeeds(port: int, called: str, calling: str = "CT1") -> bool:
    """A C-ECHO with dcmtk echoscu: the port accepts associations from ``calling``."""
    result = subprocess.run(
        [dcmtk("echoscu"), "-to", "5", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True, timeout=30, env=base_env(**NODELAY_ENV),
    )  # fmt: skip
    return result.returncode == 0


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (several processes share it with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def wait_for_echo(
    port: int,
    called: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    *,
    processes: int = 1,
    calling: str = "CT1",
) -> None:
    """Wait until ``processes`` sockets listen on ``port`` and C-ECHO from ``calling`` succeeds
    (with several processes :data:`ECHOES_IN_A_ROW` times in a row, :data:`ECHO_SPACING_S`
    apart: the gateway's extra SCP processes take its site's rules from a file they re-read
    every 2 s, and the kernel spreads associations over the listeners)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    in_a_row = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        if listeners(port) >= processes and echo_succeeds(port, called, calling):
            in_a_row += 1
            if in_a_row >= (ECHOES_IN_A_ROW if processes > 1 else 1):
                return
            time.sleep(ECHO_SPACING_S)
            continue
        in_a_row = 0
        time.sleep(0.2)
    raise BenchError(f"port {port} not ready after {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log)}")


def gateway_processes(env: dict[str, str]) -> int:
    """SCP processes a gateway runs: ``TELERAD_DICOM__WORKERS``, 0 (default) = one per core."""
    return int(env.get("TELERAD_DICOM__WORKERS", "0")) or os.cpu_count() or 1


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, for the report (other work skews timings)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll until ``predicate()`` is truthy and return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"{what}: not within {timeout:.0f} s")


def study_uid_of(path: Path) -> str:
    """The Study Instance UID of a Part-10 file."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


# --- telerad --------------------------------------------------------------------------------


@dataclass
class Centre:
    """A ``telerad serve`` process: its URL, data directory, admin password and DICOM port."""

    base: str
    http_port: int
    dicom_port: int
    data_dir: Path
    password: str
    proc: subprocess.Popen[bytes]
    log: Path

    def admin_headers(self, session: requests.Session) -> dict[str, str]:
        """A bearer header for ``admin`` (``POST /api/auth/token``)."""
        return {"Authorization": f"Bearer {telerad_token(session, self.base, self.password)}"}

    @property
    def gateway_outbox(self) -> Path:
        """The outbox of the gateway ``serve`` spawns (it shares the data directory)."""
        return self.data_dir / "gateway" / "outbox.db"


@contextlib.contextmanager
def telerad_serve(
    work: Path, *, gateway: bool, env: dict[str, str] | None = None
) -> Iterator[Centre]:
    """``telerad serve`` on free ports; with ``gateway``, ready once site ``local``'s gateway
    answers C-ECHO from AE ``CT1`` (development mode: any calling AE title)."""
    http_port, dicom_port, password = free_port(), free_port(), secrets.token_urlsafe(18)
    data_dir = work / "centre"
    argv = [
        *TELERAD, "serve", "--data-dir", str(data_dir), "--http-port", str(http_port),
        "--dicom-port", str(dicom_port), *([] if gateway else ["--no-gateway"]),
    ]  # fmt: skip
    full_env = base_env(
        TELERAD_ADMIN_PASSWORD=password,
        TELERAD_DICOM__HOST="127.0.0.1",
        TELERAD_GATEWAY__STATUS_PORT="0",
        **(env or {}),
    )
    base = f"http://127.0.0.1:{http_port}"
    log = work / "serve.log"
    with running(argv, log, full_env) as proc:
        with requests.Session() as session:
            wait_until_up(session, f"{base}/healthz", proc, log)
        if gateway:
            wait_for_echo(dicom_port, "TELERAD", proc, log, processes=gateway_processes(full_env))
        yield Centre(base, http_port, dicom_port, data_dir, password, proc, log)


def site_token(data_dir: Path, site: str = "local") -> str:
    """A new gateway token for ``site`` (``telerad site token``), printed once by the CLI."""
    result = subprocess.run(
        [*TELERAD, "--data-dir", str(data_dir), "site", "token", site, "--label", "bench"],
        capture_output=True, text=True, timeout=120, env=base_env(),
    )  # fmt: skip
    tokens = [line for line in result.stdout.split() if line.startswith("trs_")]
    if result.returncode != 0 or not tokens:
        raise BenchError(f"telerad site token {site}: {result.returncode} {result.stderr[-1000:]}")
    return tokens[-1]


@dataclass
class GatewayProcess:
    """A ``telerad gateway`` process."""

    dicom_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def outbox(self) -> Path:
        """Its outbox database."""
        return self.data_dir / "gateway" / "outbox.db"


@contextlib.contextmanager
def telerad_gateway(
    work: Path,
    *,
    centre_url: str,
    token: str,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = TELERAD,
) -> Iterator[GatewayProcess]:
    """``telerad gateway`` forwarding to ``centre_url``, ready once it answers C-ECHO from CT1.

    ``launcher`` replaces ``python -m telerad.cli`` (the profiler uses it). The token travels
    in the environment, as ``serve`` passes it to its own gateway.
    """
    dicom_port, data_dir = free_port(), work / "gateway-node"
    full_env = base_env(
        TELERAD_GATEWAY__CENTRE_URL=centre_url,
        TELERAD_GATEWAY__SITE_TOKEN=token,
        TELERAD_DICOM__HOST="127.0.0.1",
        TELERAD_GATEWAY__STATUS_PORT="0",
        **(env or {}),
    )
    argv = [*launcher, "gateway", "--data-dir", str(data_dir), "--dicom-port", str(dicom_port)]
    log = work / "gateway.log"
    with running(argv, log, full_env) as proc:
        wait_for_echo(dicom_port, "TELERAD", proc, log, processes=gateway_processes(full_env))
        yield GatewayProcess(dicom_port, data_dir, proc, log)


def centre_routes(base: str) -> set[tuple[str, str]]:
    """``(METHOD, path template)`` of every route the centre's OpenAPI document lists."""
    response = requests.get(f"{base}/openapi.json", timeout=30)
    response.raise_for_status()
    return {
        (method.upper(), path)
        for path, item in response.json().get("paths", {}).items()
        for method in item
    }


def has_route(routes: set[tuple[str, str]], method: str, pattern: str) -> bool:
    """Whether a route matches ``pattern`` (a regex over the path template)."""
    return any(m == method and re.fullmatch(pattern, p) for m, p in routes)


def centre_study_instances(
    session: requests.Session, base: str, headers: dict[str, str], study_uid: str
) -> int:
    """NumberOfStudyRelatedInstances of the study at the centre (QIDO-RS), 0 if not found."""
    response = session.get(
        f"{base}/dicomweb/studies",
        params={"StudyInstanceUID": study_uid, "includefield": "00201208"},
        headers={"Accept": "application/dicom+json", **headers},
        timeout=30,
    )
    if response.status_code == 204 or not response.content:
        return 0
    response.raise_for_status()
    studies = response.json()
    return int(studies[0]["00201208"]["Value"][0]) if studies else 0


class OutboxReader:
    """Read-only queries on a gateway's outbox: what ``telerad gateway status`` shows, without
    starting a process per poll (SQLite WAL: readers never block the gateway)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._db is None:
            if not self.path.exists():
                return []
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        return self._db.execute(sql, args).fetchall()

    def states(self) -> dict[str, int]:
        """Instances per state (pending, sending, confirmed, dead)."""
        return {str(s): int(n) for s, n in self._rows(
            "SELECT state, count(*) FROM instances GROUP BY state"
        )}  # fmt: skip

    def received(self) -> int:
        """Instance rows (each committed before its C-STORE response)."""
        return sum(self.states().values())

    def confirmed(self) -> int:
        """Instances the centre has acknowledged."""
        return self.states().get("confirmed", 0)

    def study_state(self, study_uid: str) -> str | None:
        """``receiving`` or ``complete`` (the centre accepted the manifest)."""
        rows = self._rows("SELECT state FROM studies WHERE study_uid = ?", (study_uid,))
        return str(rows[0][0]) if rows else None

    def instances(self) -> list[dict[str, Any]]:
        """Every instance row's forwarding figures."""
        columns = (
            "sop_instance_uid", "state", "attempts", "size", "wire_size", "bytes_sent",
            "confirmed_at",
        )  # fmt: skip
        rows = self._rows(f"SELECT {', '.join(columns)} FROM instances ORDER BY id")
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            self._db.close()
            self._db = None


# --- Orthanc --------------------------------------------------------------------------------


@dataclass
class OrthancProcess:
    """Orthanc with its DICOM port and REST base URL."""

    base: str
    dicom_port: int

    def count_instances(self) -> int:
        """Instances Orthanc holds (``GET /statistics``)."""
        response = requests.get(f"{self.base}/statistics", timeout=30)
        response.raise_for_status()
        return int(response.json()["CountInstances"])


def orthanc_dimse_config(work: Path, http_port: int, dicom_port: int) -> dict[str, Any]:
    """Orthanc's defaults but for ports, directories, access, any calling AE may store, Nagle
    off on HTTP (``TcpNoDelay``) and the largest PDU it allows (dcmtk's send limit)."""
    return {
        "Name": "telerad-bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "TcpNoDelay": True,
        "MaximumPduLength": MAX_SEND_PDU,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
    }


@contextlib.contextmanager
def orthanc_dimse(work: Path) -> Iterator[OrthancProcess]:
    """Orthanc (system package) on free ports, ready once it answers C-ECHO."""
    http_port, dicom_port = free_port(), free_port()
    config = work / "orthanc.json"
    config.write_text(json.dumps(orthanc_dimse_config(work, http_port, dicom_port), indent=2))
    base = f"http://127.0.0.1:{http_port}"
    log = work / "orthanc.log"
    with running([orthanc_binary(), str(config)], log, base_env(**NODELAY_ENV)) as proc:
        with requests.Session() as session:
            wait_until_up(session, f"{base}/system", proc, log)
        wait_for_echo(dicom_port, "ORTHANC", proc, log)
        yield OrthancProcess(base, dicom_port)


# --- profiling ------------------------------------------------------------------------------

#: Thread groups of the gateway process, by thread class or name.
INGEST_GROUPS = ("association", "dul", "scp-accept")


def thread_group(thread: threading.Thread) -> str:
    """The part of the gateway a thread belongs to (pynetdicom names its threads generically)."""
    kind = type(thread).__name__
    if kind == "Association":
        return "association"
    if kind == "DULServiceProvider":
        return "dul"
    name = thread.name
    if name == "dicom-scp":
        return "scp-listener"  # the accept loop: idle in poll() between associations
    if "process_request" in name:
        return "scp-accept"
    for prefix in ("forward", "manifests", "site-sync", "commit"):
        if name.startswith(prefix):
            return "forwarder" if prefix == "forward" else prefix
    return "other"


def run_profiled_gateway(out: str, argv: Sequence[str]) -> int:
    """Run ``telerad`` (``argv``, e.g. ``gateway …``) with a cProfile in every thread.

    ``python -m cProfile`` hooks only the main thread, which in ``telerad gateway`` just waits
    for a signal: the C-STORE handlers run on pynetdicom's association threads and forwarding on
    the sender threads. So each thread gets its own profiler (wall-clock timer), and at exit the
    statistics are merged per thread group into ``{out}.{group}.prof`` with the groups' thread
    counts and CPU seconds in ``{out}.json``.
    """
    import cProfile
    import pstats

    records: list[tuple[str, cProfile.Profile, float]] = []
    lock = threading.Lock()
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            bootstrap(self)
        finally:
            profile.disable()
            with lock:
                records.append((thread_group(self), profile, time.thread_time()))

    threading.Thread._bootstrap_inner = profiled  # type: ignore[attr-defined]
    from telerad.cli import main

    try:
        return main(list(argv))
    finally:
        with lock:
            done = list(records)
        summary: dict[str, dict[str, float]] = {}
        for group in sorted({g for g, _, _ in done}):
            profiles = [p for g, p, _ in done if g == group]
            pstats.Stats(*profiles).dump_stats(f"{out}.{group}.prof")  # type: ignore[arg-type]
            cpu = sum(c for g, _, c in done if g == group)
            summary[group] = {"threads": len(profiles), "cpu_s": cpu}
        Path(f"{out}.json").write_text(json.dumps(summary))


def profile_launcher(out: Path) -> list[str]:
    """A command that runs ``telerad …`` under :func:`run_profiled_gateway`."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import _common; "
        "sys.exit(_common.run_profiled_gateway(sys.argv[2], sys.argv[3:]))"
    )
    return [sys.executable, "-c", code, str(BENCH_DIR), str(out)]


def top_functions(paths: Sequence[Path], sort: str, limit: int = 25) -> str:
    """The ``limit`` top functions of merged pstats files, sorted by ``sort``."""
    import pstats

    stream = io.StringIO()
    stats = pstats.Stats(*map(str, paths), stream=stream)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    lines = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.rstrip() for line in lines[start:] if line.strip())
