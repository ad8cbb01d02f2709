"""STOW-RS ingest benchmark: telerad against Orthanc, same client, same data, same run.

Usage::

    python bench/ingest_stow.py [--slices 200] [--batch 10] [--json]
                                [--targets telerad,orthanc]
                                [--orthanc-option SyncStorageArea=false ...]

A synthetic CT series (512 x 512, `telerad.demo.ct_study_bytes`) is generated
once in memory. Each server is started in turn on free localhost ports with its
own temporary data directory, the series is posted with one `requests.Session`
as ``multipart/related; type="application/dicom"`` bodies of ``--batch``
instances each (PS3.18 10.5, Store Instances), and the server is then asked how
many instances it holds. Only the POSTs are timed; the bodies are built before
the clock starts and are the same bytes for both servers. MB are 10**6 bytes of
Part-10 payload (the DICOM files, not the multipart framing).

Orthanc runs with its defaults apart from ports, directories, access and the
DICOMweb plugin; note that its default ``SyncStorageArea: true`` fsyncs every
stored file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests

from telerad.demo import ct_study_bytes

STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 300.0
DICOM_JSON = "application/dicom+json"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"


class BenchError(RuntimeError):
    """A server failed to start, rejected an instance or lost one."""


@dataclass(frozen=True)
class Target:
    """A running server as the client sees it."""

    name: str
    stow_url: str
    headers: dict[str, str]
    count_instances: Callable[[requests.Session], int]


@dataclass(frozen=True, order=True)
class Result:
    seconds: float
    target: str
    instances: int
    payload_bytes: int

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / 1e6 / self.seconds


# --- processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own session, logging to ``log_path``; always stop it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and any workers it forked: its process group is its own session."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()


def signal_group(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def wait_until_up(
    session: requests.Session, url: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        # A loaded machine may answer slowly while starting: a timeout is not a failure.
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            if session.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{url} not up after {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- Orthanc ------------------------------------------------------------------


def orthanc_binary() -> str:
    for candidate in (shutil.which("Orthanc"), "/usr/sbin/Orthanc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError("Orthanc not found (apt-get install orthanc orthanc-dicomweb)")


def dicomweb_plugin() -> str:
    """The DICOMweb plugin's shared object, as installed by the orthanc-dicomweb package."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
        ).stdout.split()
        libraries = [p for p in listing if "/plugins/" in p and p.endswith(".so")]
        libraries += [p for p in listing if ".so" in p]
        for path in libraries:
            if Path(path).is_file():
                return path
    raise BenchError("Orthanc DICOMweb plugin not found (apt-get install orthanc-dicomweb)")


def orthanc_config(work: Path, http_port: int, dicom_port: int) -> dict[str, Any]:
    return {
        "Name": "telerad-bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def orthanc_count(base: str) -> Callable[[requests.Session], int]:
    def count(session: requests.Session) -> int:
        studies = get_json(session, f"{base}/studies", {})
        if len(studies) != 1:
            raise BenchError(f"Orthanc holds {len(studies)} studies, expected 1")
        return len(get_json(session, f"{base}/instances", {}))

    return count


@contextlib.contextmanager
def orthanc(session: requests.Session, overrides: dict[str, Any]) -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="bench-orthanc-") as tmp:
        work = Path(tmp)
        http_port = free_port()
        config = work / "orthanc.json"
        settings = {**orthanc_config(work, http_port, free_port()), **overrides}
        config.write_text(json.dumps(settings, indent=2))
        base = f"http://127.0.0.1:{http_port}"
        log = work / "orthanc.log"
        with running([orthanc_binary(), str(config)], log) as proc:
            wait_until_up(session, f"{base}/system", proc, log)
            yield Target("Orthanc", f"{base}/dicom-web/studies", {}, orthanc_count(base))


# --- telerad ------------------------------------------------------------------


def telerad_token(session: requests.Session, base: str, password: str) -> str:
    response = session.post(
        f"{base}/api/auth/token", data={"username": "admin", "password": password}, timeout=30
    )
    if response.status_code != 200:
        raise BenchError(f"token request: HTTP {response.status_code} {response.text[:500]}")
    token: str = response.json()["access_token"]
    return token


def telerad_count(
    base: str, headers: dict[str, str], study: str, series: str
) -> Callable[[requests.Session], int]:
    url = f"{base}/dicomweb/studies/{study}/series/{series}/instances"

    def count(session: requests.Session) -> int:
        return len(get_json(session, url, headers, params={"limit": "1000"}))

    return count


@contextlib.contextmanager
def telerad(session: requests.Session, study: str, series: str) -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="bench-telerad-") as tmp:
        work = Path(tmp)
        http_port, password = free_port(), secrets.token_urlsafe(18)
        argv = [
            sys.executable, "-m", "telerad.cli", "serve", "--data-dir", str(work / "data"),
            "--http-port", str(http_port), "--dicom-port", str(free_port()),
        ]  # fmt: skip
        env = {**os.environ, "TELERAD_ADMIN_PASSWORD": password}
        base = f"http://127.0.0.1:{http_port}"
        log = work / "telerad.log"
        with running(argv, log, env) as proc:
            wait_until_up(session, f"{base}/healthz", proc, log)
            headers = {"Authorization": f"Bearer {telerad_token(session, base, password)}"}
            count = telerad_count(base, headers, study, series)
            yield Target("telerad", f"{base}/dicomweb/studies", headers, count)


# --- client -------------------------------------------------------------------


def multipart_body(instances: Sequence[bytes]) -> tuple[bytes, str]:
    """A PS3.18 8.6.1.2 multipart/related body of application/dicom parts."""
    boundary = secrets.token_hex(16)
    parts = []
    for data in instances:
        parts += [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data,
            b"\r\n",
        ]
    parts.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(parts), content_type


def batches(instances: Sequence[bytes], size: int) -> list[tuple[bytes, str, int]]:
    chunks = [instances[i : i + size] for i in range(0, len(instances), size)]
    return [(*multipart_body(chunk), len(chunk)) for chunk in chunks]


def get_json(
    session: requests.Session,
    url: str,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
) -> list[Any]:
    response = session.get(
        url, headers={"Accept": "application/json", **headers}, params=params, timeout=60
    )
    if response.status_code == 204:
        return []
    if response.status_code != 200:
        raise BenchError(f"GET {url}: HTTP {response.status_code} {response.text[:500]}")
    body: list[Any] = response.json()
    return body


def check_stow_response(target: Target, response: requests.Response, expected: int) -> None:
    """Status 200, no Failed SOP Sequence, and a Referenced SOP Sequence item per instance."""
    if response.status_code != 200:
        raise BenchError(f"{target.name}: HTTP {response.status_code} {response.text[:500]}")
    body = response.json()
    failed = body.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    stored = body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    if failed or len(stored) != expected:
        raise BenchError(f"{target.name}: {len(stored)} stored, {len(failed)} failed of {expected}")


def store_instances(
    session: requests.Session, target: Target, bodies: Sequence[tuple[bytes, str, int]]
) -> float:
    """POST every body to the target's STOW-RS endpoint; return the wall time in seconds."""
    start = time.perf_counter()
    for body, content_type, count in bodies:
        headers = {**target.headers, "Content-Type": content_type, "Accept": DICOM_JSON}
        response = session.post(
            target.stow_url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_S
        )
        check_stow_response(target, response, count)
    return time.perf_counter() - start


def run_target(
    session: requests.Session, target: Target, instances: Sequence[bytes], batch: int
) -> Result:
    bodies = batches(instances, batch)
    seconds = store_instances(session, target, bodies)
    held = target.count_instances(session)
    if held != len(instances):
        raise BenchError(f"{target.name} holds {held} instances after storing {len(instances)}")
    return Result(seconds, target.name, len(instances), sum(map(len, instances)))


# --- report -------------------------------------------------------------------


def ratios(results: Sequence[Result]) -> dict[str, float | None]:
    by_name = {r.target: r for r in results}
    reference = by_name.get("Orthanc")
    return {
        r.target: r.instances_per_s / reference.instances_per_s if reference else None
        for r in results
    }


def table(results: Sequence[Result]) -> str:
    ratio = ratios(results)
    lines = [f"{'target':<8} | {'instances/s':>11} | {'MB/s':>7} | {'ratio telerad/Orthanc':>21}"]
    lines.append("-" * len(lines[0]))
    for r in results:
        shown = f"{ratio[r.target]:.2f}" if ratio[r.target] is not None else "n/a"
        lines.append(
            f"{r.target:<8} | {r.instances_per_s:>11.1f} | {r.mb_per_s:>7.1f} | {shown:>21}"
        )
    return "\n".join(lines)


def as_json(results: Sequence[Result], args: argparse.Namespace) -> str:
    ratio = ratios(results)
    rows = [
        {
            **asdict(r),
            "instances_per_s": r.instances_per_s,
            "mb_per_s": r.mb_per_s,
            "ratio_to_orthanc": ratio[r.target],
        }
        for r in results
    ]
    summary = {"slices": args.slices, "batch": args.batch, "repeat": args.repeat, "results": rows}
    return json.dumps(summary, indent=2)


# --- entry point --------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="instances to store (512x512 CT)")
    parser.add_argument("--batch", type=int, default=10, help="instances per STOW-RS request")
    parser.add_argument("--repeat", type=int, default=1, help="fresh servers per target; median")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--targets", default="telerad,orthanc", help="comma-separated: telerad, orthanc"
    )
    parser.add_argument(
        "--orthanc-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override an Orthanc setting, e.g. SyncStorageArea=false (repeatable)",
    )
    args = parser.parse_args(argv)
    args.orthanc_option = dict(parse_option(parser, o) for o in args.orthanc_option)
    args.targets = [t.strip().lower() for t in args.targets.split(",") if t.strip()]
    if unknown := set(args.targets) - {"telerad", "orthanc"}:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if min(args.slices, args.batch, args.repeat) < 1:
        parser.error("--slices, --batch and --repeat must be positive")
    return args


def parse_option(parser: argparse.ArgumentParser, option: str) -> tuple[str, Any]:
    key, sep, value = option.partition("=")
    if not (key and sep):
        parser.error(f"expected KEY=JSON: {option}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the finally blocks stop the servers."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _terminate_on_sigterm()
    instances = ct_study_bytes(args.slices, seed=1)
    first = _first_dataset_uids(instances[0])
    starters = {
        "telerad": lambda s: telerad(s, *first),
        "orthanc": lambda s: orthanc(s, args.orthanc_option),
    }
    results = []
    try:
        for name in args.targets:
            runs = []
            for _ in range(args.repeat):
                with requests.Session() as session, starters[name](session) as target:
                    runs.append(run_target(session, target, instances, args.batch))
            results.append(statistics.median_low(runs))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    print(as_json(results, args) if args.json else report(results, instances, args))
    return 0


def _first_dataset_uids(instance: bytes) -> tuple[str, str]:
    ds = pydicom.dcmread(io.BytesIO(instance), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def report(results: Sequence[Result], instances: Sequence[bytes], args: argparse.Namespace) -> str:
    payload = sum(map(len, instances)) / 1e6
    head = (
        f"STOW-RS ingest: {len(instances)} CT instances 512x512, {payload:.1f} MB,"
        f" {args.batch} per request"
    )
    times = ", ".join(f"{r.target} {r.seconds:.2f} s" for r in results)
    if args.repeat > 1:
        times += f" (median of {args.repeat} runs)"
    return f"{head}\n\n{table(results)}\n\nwall time: {times}"


if __name__ == "__main__":
    sys.exit(main())
