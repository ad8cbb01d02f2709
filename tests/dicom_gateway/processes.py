"""Real processes and read-only views for the gateway's fault tests.

- :class:`GatewayProcess`: ``python -m telerad.cli gateway`` as a child that can be SIGKILLed and
  started again on the same data directory and DICOM port, configured only through ``TELERAD_…``
  environment variables, as an installation is.
- :func:`storescu` / :func:`start_storescu`: dcmtk's storescu at debug level, whose log gives the
  DIMSE status of every file sent (:func:`store_statuses`).
- :func:`outbox_rows`, :func:`spool_files`, :func:`centre_view`: what the gateway and the centre
  hold, read without going through the code under test's write paths.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
from sqlalchemy import func, select

import telerad
from telerad.storage import Instance, RejectedInstance, Series, Study, study_completeness
from telerad.viewer_api import Services
from tests.dcmtk import dcmtk

_READY = re.compile(r"telerad gateway \S+ on DICOM port (\d+)")
_SENDING = re.compile(r"^I: Sending file: (.+)$")
_STATUS = re.compile(r"^D: DIMSE Status\s*: 0x([0-9a-fA-F]{4})")
SUCCESS = 0x0000


# -- the gateway as a process ------------------------------------------------------------------


@dataclass
class GatewayProcess:
    """``telerad gateway`` in a child process, configured by environment variables only.

    Every start appends to ``log`` (stdout and stderr), so the history of all lives stays
    readable after a failure.
    """

    data_dir: Path
    centre_url: str
    site_token: str
    dicom_port: int
    settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        """The children's combined output."""
        return self.data_dir / "gateway-process.log"

    def environment(self) -> dict[str, str]:
        """The parent's environment without its ``TELERAD_…`` variables, plus the test's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELERAD_")}
        source = str(Path(telerad.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        env.update(
            {
                "TELERAD_DATA_DIR": str(self.data_dir),
                "TELERAD_GATEWAY__CENTRE_URL": self.centre_url,
                "TELERAD_GATEWAY__SITE_TOKEN": self.site_token,
                "TELERAD_DICOM__HOST": "127.0.0.1",
                "TELERAD_DICOM__PORT": str(self.dicom_port),
                "TELERAD_DICOM__AE_TITLE": "GATEWAY",
                "TELERAD_GATEWAY__STATUS_PORT": "0",
                "TELERAD_GATEWAY__MODALITIES": json.dumps([{"ae_title": "CT1"}]),
                "TELERAD_GATEWAY__WIRE": "none",
                "TELERAD_GATEWAY__STABLE_SECONDS": "1",
                "TELERAD_GATEWAY__BACKOFF_SECONDS": "0.2",
                "TELERAD_GATEWAY__BACKOFF_MAX_SECONDS": "2",
                "TELERAD_GATEWAY__MIN_FREE_BYTES": "0",
                "TELERAD_GATEWAY__REQUEST_TIMEOUT": "20",
                **self.settings,
            }
        )
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Start a child and return once its SCP listens (it prints its DICOM port)."""
        assert self.process is None, "the previous child is still running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "telerad.cli", "gateway"],
                env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _READY.search(self.log.read_bytes()[offset:].decode(errors="replace")):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"the gateway did not start:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or released."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def listening(self, timeout: float = 5.0) -> bool:
        """Does anything still accept on the DICOM port ``timeout`` seconds on? After a kill
        nothing may: the SCP worker processes die with the gateway (``PR_SET_PDEATHSIG``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1).close()
            except OSError:
                return False
            if time.monotonic() > deadline:
                return True
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it; SIGKILL if it does not stop in time."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def tail(self, lines: int = 40) -> str:
        """The last lines of the children's output, for failure messages."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def gateway_dir(self) -> Path:
        """Spool and outbox directory (the default ``<data_dir>/gateway``)."""
        spool = self.settings.get("TELERAD_GATEWAY__SPOOL_PATH")
        return Path(spool) if spool else self.data_dir / "gateway"

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- dcmtk storescu ------------------------------------------------------------------------------


def _storescu_command(port: int, files: list[Path], halt: bool) -> list[str]:
    return [
        dcmtk("storescu"), "-d", *([] if halt else ["-nh"]), "-aet", "CT1", "-aec", "GATEWAY",
        "127.0.0.1", str(port), *map(str, files),
    ]  # fmt: skip


def start_storescu(port: int, files: list[Path], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """storescu in the background, its debug log into ``log`` (a file: never a full pipe).

    dcmtk 3.6.7 takes TCP_NODELAY from the environment; it has no ``+nodelay`` option.
    """
    return subprocess.Popen(
        _storescu_command(port, files, halt=True),
        stdout=log, stderr=subprocess.STDOUT, env={"TCP_NODELAY": "1"},
    )  # fmt: skip


@dataclass(frozen=True)
class StoreRun:
    """One storescu association: its exit code, and the status of every file it sent."""

    returncode: int
    statuses: dict[Path, int]
    log: str

    @property
    def acknowledged(self) -> set[Path]:
        """Files answered 0x0000 Success."""
        return {path for path, status in self.statuses.items() if status == SUCCESS}


def storescu(port: int, files: list[Path], *, halt: bool = True, timeout: float = 120) -> StoreRun:
    """Send ``files`` on one association; ``halt=False`` (``-nh``) goes on after a failure."""
    result = subprocess.run(
        _storescu_command(port, files, halt), capture_output=True, timeout=timeout,
        env={"TCP_NODELAY": "1"},
    )  # fmt: skip
    log = (result.stdout + result.stderr).decode(errors="replace")
    return StoreRun(result.returncode, store_statuses(log), log)


def wait_for_responses(
    log: Path, count: int, sender: subprocess.Popen[bytes], timeout: float = 60.0
) -> int:
    """Follow a running storescu's log until it holds ``count`` C-STORE responses, or storescu
    has ended; returns how many responses it holds. dcmtk logs to stderr, unbuffered, so the log
    file is current to the line."""
    marker = b"D: DIMSE Status"
    seen = 0
    tail = b""
    deadline = time.monotonic() + timeout
    with log.open("rb") as stream:
        while seen < count and time.monotonic() < deadline:
            chunk = stream.read()
            if not chunk:
                if sender.poll() is not None:
                    break
                time.sleep(0.002)
                continue
            text = tail + chunk
            seen += text.count(marker)
            tail = text[-(len(marker) - 1) :] if not text.endswith(marker) else b""
    return seen


def store_statuses(log: str) -> dict[Path, int]:
    """File → DIMSE status of its C-STORE response, from a ``storescu -d`` log; files without
    a response (the association ended first) are absent."""
    statuses: dict[Path, int] = {}
    current: Path | None = None
    for line in log.splitlines():
        if sending := _SENDING.match(line):
            current = Path(sending.group(1))
        elif (status := _STATUS.match(line)) and current is not None:
            statuses[current] = int(status.group(1), 16)
            current = None
    return statuses


# -- what the files, the gateway and the centre hold --------------------------------------------


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of the data set after the File Meta group (PS3.10 §7.1).

    Over DIMSE only the data set travels and the receiver writes its own File Meta, so this is
    what "the same instance, unchanged" means between a modality's file and the centre's copy.
    """
    stream = io.BytesIO(data)
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    return hashlib.sha256(data[stream.tell() :]).hexdigest()


def sop_instance_uid(path: Path) -> str:
    """The SOP Instance UID of a Part-10 file, from its header."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def outbox_rows(gateway_dir: Path) -> list[dict[str, Any]]:
    """Every instance row of the outbox, read-only (safe while a gateway writes)."""
    database = gateway_dir / "outbox.db"
    if not database.exists():
        return []
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, sop_instance_uid, study_uid, path, size, sha256, state, attempts"
            " FROM instances ORDER BY id"
        ).fetchall()
    return [dict(row) for row in rows]


def outbox_studies(gateway_dir: Path) -> dict[str, str]:
    """Study Instance UID → the outbox's state of that study."""
    database = gateway_dir / "outbox.db"
    if not database.exists():
        return {}
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
        return dict(db.execute("SELECT study_uid, state FROM studies").fetchall())


def spool_files(gateway_dir: Path) -> set[str]:
    """Spool files as ``<day>/<name>``, the form outbox rows refer to."""
    root = gateway_dir / "spool"
    return {f"{p.parent.name}/{p.name}" for p in root.glob("*/*")} if root.exists() else set()


@dataclass(frozen=True)
class CentreView:
    """The centre's catalogue and object store, for lost/duplicate accounting."""

    instances: dict[str, tuple[str, str, str]]  # SOP Instance UID → (study, sha256, key)
    rows_per_uid: Counter[str]
    rejected: int
    unreferenced_objects: int


def centre_view(services: Services) -> CentreView:
    """Read the centre's instance rows, rejected copies and stored objects."""
    with services.sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Study.study_uid, Instance.sha256, Instance.object_key)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
        ).all()
        rejected = session.scalar(select(func.count()).select_from(RejectedInstance)) or 0
    keys = {key for *_, key in rows}
    stored = set(services.objects.list("studies/"))
    return CentreView(
        instances={uid: (study, sha, key) for uid, study, sha, key in rows},
        rows_per_uid=Counter(uid for uid, *_ in rows),
        rejected=int(rejected),
        unreferenced_objects=len(stored - keys),
    )


def centre_complete(services: Services, study_uid: str, expected: int | None = None) -> bool:
    """The centre calls the study complete (its latest manifest, of ``expected`` instances
    when given, is fulfilled)."""
    with services.sessions() as session:
        state = study_completeness(session, study_uid)
    if state is None or not state.complete:
        return False
    return expected is None or state.expected == expected
