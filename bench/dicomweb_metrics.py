"""The metrics of ``dicomweb.py``: what each request is, how it is checked, how it is timed."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from cfind import cfind_latencies
from ingest_stow import BenchError

#: Requests of each kind both servers get before the clock starts.
WARMUP = 10
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class Server:
    """A running server as the client sees it."""

    name: str
    root: str  # the DICOMweb service root
    headers: dict[str, str]  # its credentials
    dicom_port: int  # C-FIND SCP
    called_ae: str


@dataclass
class Measured:
    """Samples in seconds (one requests/s figure for the throughput), or why there are none."""

    values: list[float]
    error: str | None = None
    #: Throughput only: this (client) process's CPU seconds per request during the run.
    client_cpu: float | None = None

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    def figure(self, metric: Metric) -> float | None:
        if not self.values:
            return None
        return self.values[0] if metric.kind == "throughput" else self.p50


Check = Callable[[httpx.Response, int], str | None]
PathOf = Callable[[str, str, str], str]


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    title: str
    kind: str  # http, throughput, cfind
    target: float  # telerad/Orthanc ratio aimed at
    lower_is_better: bool = True
    path: PathOf | None = None  # (study, series, instance) -> path under the root
    accept: str = ""
    per_instance: bool = False  # one request per instance, else the same one repeated
    check: Check | None = None

    @property
    def target_text(self) -> str:
        return f"{'≤' if self.lower_is_better else '≥'} {self.target:g}x"

    def ratio(self, ours: Measured, theirs: Measured) -> float | None:
        a, b = ours.figure(self), theirs.figure(self)
        return None if a is None or b is None or b == 0 else a / b

    def met(self, ratio: float) -> bool:
        return ratio <= self.target if self.lower_is_better else ratio >= self.target

    def show(self, measured: Measured) -> str:
        value = measured.figure(self)
        if value is None:
            return "n/a"
        return f"{value:.1f}/s" if self.kind == "throughput" else f"{value * 1000:.1f} ms"


# --- checks ---------------------------------------------------------------------------------


def _media(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _image(kind: str, magic: bytes) -> Check:
    def check(response: httpx.Response, count: int) -> str | None:
        if _media(response) != kind or not response.content.startswith(magic):
            return f"not {kind}: {_media(response)!r}, {response.content[:8]!r}"
        return None

    return check


def _json_list(response: httpx.Response, count: int) -> str | None:
    body = response.json()
    if not isinstance(body, list) or len(body) != count:
        return f"expected {count} items, got {len(body) if isinstance(body, list) else body!r}"
    return None


def _frame(response: httpx.Response, count: int) -> str | None:
    if _media(response) != "multipart/related" or len(response.content) < 512 * 512 * 2:
        return f"not a 512x512 frame: {_media(response)!r}, {len(response.content)} bytes"
    return None


def _instance(suffix: str) -> PathOf:
    return lambda s, se, i: f"/studies/{s}/series/{se}/instances/{i}/{suffix}"


METRICS: tuple[Metric, ...] = (
    Metric(
        "qido",
        "QIDO instances",
        "http",
        0.3,
        path=lambda s, se, i: f"/studies/{s}/series/{se}/instances",
        accept=DICOM_JSON,
        check=_json_list,
    ),
    Metric(
        "metadata",
        "series metadata",
        "http",
        0.3,
        path=lambda s, se, i: f"/studies/{s}/series/{se}/metadata",
        accept=DICOM_JSON,
        check=_json_list,
    ),
    Metric(
        "frame",
        "frame (octet-stream)",
        "http",
        1.0,
        path=_instance("frames/1"),
        accept=FRAME_ACCEPT,
        per_instance=True,
        check=_frame,
    ),
    Metric("cfind", "C-FIND study", "cfind", 1.0),
    Metric(
        "jpeg",
        "rendered JPEG",
        "http",
        0.8,
        path=_instance("rendered"),
        accept="image/jpeg",
        per_instance=True,
        check=_image("image/jpeg", b"\xff\xd8"),
    ),
    Metric(
        "png",
        "rendered PNG",
        "http",
        0.5,
        path=_instance("rendered"),
        accept="image/png",
        per_instance=True,
        check=_image("image/png", b"\x89PNG"),
    ),
    Metric(
        "throughput",
        "rendered, 8 clients",
        "throughput",
        1.2,
        lower_is_better=False,
        check=_image("image/jpeg", b"\xff\xd8"),
    ),
)


# --- HTTP -----------------------------------------------------------------------------------


def _short(url: str) -> str:
    """``url``'s path with every UID shown as ``{uid}``."""
    return re.sub(r"\d+(\.\d+){3,}", "{uid}", url.split("/", 3)[-1])


def timed_get(
    client: httpx.Client, url: str, accept: str, check: Check | None, count: int
) -> float:
    """Seconds from sending the request to the last byte of the body; checked."""
    start = time.perf_counter()
    response = client.get(url, headers={"Accept": accept})
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise BenchError(f"GET {_short(url)}: HTTP {response.status_code}"
                         f" {response.text[:200]!r}")  # fmt: skip
    problem = check(response, count) if check else None
    if problem:
        raise BenchError(f"GET {_short(url)}: {problem}")
    return elapsed


def metric_urls(
    metric: Metric, server: Server, study: str, series: str, instances: Sequence[str], repeat: int
) -> tuple[list[str], list[str]]:
    """(warm-up URLs, measured URLs): per-instance metrics warm up on the first slices and
    measure the others, in slice order; the others repeat one URL."""
    assert metric.path is not None
    if metric.per_instance:
        urls = [server.root + metric.path(study, series, i) for i in instances]
        return urls[:WARMUP], urls[WARMUP:]
    url = server.root + metric.path(study, series, "")
    return [url] * WARMUP, [url] * repeat


def http_latencies(
    metric: Metric,
    server: Server,
    study: str,
    series: str,
    instances: Sequence[str],
    *,
    repeat: int,
) -> Measured:
    """Latency of every measured request of ``metric``, one keep-alive connection."""
    warm, measured = metric_urls(metric, server, study, series, instances, repeat)
    with httpx.Client(headers=server.headers, timeout=120) as client:
        for url in warm:
            timed_get(client, url, metric.accept, metric.check, len(instances))
        return Measured(
            [
                timed_get(client, url, metric.accept, metric.check, len(instances))
                for url in measured
            ]
        )


def throughput(
    server: Server,
    study: str,
    series: str,
    instances: Sequence[str],
    *,
    clients: int,
    per_client: int,
) -> Measured:
    """Rendered JPEGs per second with ``clients`` readers scrolling at once, each with its own
    connection and window centre, from its own starting slice."""
    check = _image("image/jpeg", b"\xff\xd8")
    base = f"{server.root}/studies/{study}/series/{series}/instances"
    barrier = threading.Barrier(clients + 1)
    errors: list[str] = []

    def reader(index: int) -> None:
        start = index * len(instances) // clients
        urls = [
            f"{base}/{instances[(start + k) % len(instances)]}/rendered"
            f"?window={30 + 5 * index},400,linear"
            for k in range(per_client)
        ]
        with httpx.Client(headers=server.headers, timeout=120) as client:
            warm = f"{base}/{instances[start]}/rendered?window=-600,1500,linear"
            try:
                timed_get(client, warm, "image/jpeg", check, 0)
            except BenchError as exc:
                errors.append(str(exc))
            barrier.wait()
            try:
                for url in urls:
                    timed_get(client, url, "image/jpeg", check, 0)
            except BenchError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if errors:
        raise BenchError(errors[0])
    requests = clients * per_client
    return Measured([requests / elapsed], client_cpu=cpu / requests)


def check_server(server: Server, study: str, series: str, count: int) -> None:
    """The server lists the study with every instance (QIDO-RS)."""
    with httpx.Client(headers=server.headers, timeout=60) as client:
        response = client.get(
            f"{server.root}/studies",
            params={"StudyInstanceUID": study, "includefield": "00201208"},
            headers={"Accept": DICOM_JSON},
        )
    found: list[Any] = response.json() if response.status_code == 200 else []
    held = found[0].get("00201208", {}).get("Value", [0])[0] if found else 0
    if int(held) != count:
        raise BenchError(f"{server.name} lists {held} instances of the study, not {count}")


# --- C-FIND ---------------------------------------------------------------------------------


#: C-FIND runs that broke off (server, what happened), retried on a new association.
CFIND_RETRIES: list[tuple[str, str]] = []


def cfind_study(server: Server, study: str, repeat: int, attempts: int = 3) -> Measured:
    """C-FIND round trips on one association: ``bench/cfind.py``'s client (pynetdicom, Nagle
    off as dcmtk's tools have it, Study Root, study level, Study Instance UID matched, nine
    return keys, exactly one match checked); a first association warms both servers up. A run
    that breaks off (seen with Orthanc 1.10: the match, then no final response until the
    association times out) is noted in :data:`CFIND_RETRIES`, with how long it took, and run
    again on a new association, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            cfind_latencies("127.0.0.1", server.dicom_port, server.called_ae, study, WARMUP)
            return Measured(
                cfind_latencies("127.0.0.1", server.dicom_port, server.called_ae, study, repeat)
            )
        except (BenchError, ValueError, RuntimeError) as exc:
            if attempt == attempts:
                raise BenchError(f"{server.name}: C-FIND: {exc}") from exc
            CFIND_RETRIES.append((server.name, f"{exc} ({time.perf_counter() - started:.1f} s)"))
    raise AssertionError("unreachable")
