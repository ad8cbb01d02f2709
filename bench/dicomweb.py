"""DICOMweb and C-FIND benchmark: telerad against Orthanc + its DICOMweb plugin, same run.

Usage::

    python bench/dicomweb.py [--slices 200] [--repeat 40] [--clients 8] [--per-client 100]
                             [--profile [METRIC]] [--orthanc-option KEY=JSON] [--json]
                             [--workers N] [--only KEY,…]

Both servers run at once on free localhost ports with fresh temporary data directories:
``telerad serve`` (the centre's API and site ``local``'s gateway, whose SCP answers C-FIND) and
Orthanc (system package, ``/usr/sbin/Orthanc``) with the DICOMweb plugin. Both check credentials
on every HTTP request: telerad a bearer JWT (admin), Orthanc HTTP basic authentication. The same
synthetic CT series (``--slices`` x 512x512, `telerad.demo.ct_study_bytes`) goes into both: into
telerad as a scanner sends it (dcmtk storescu to the gateway, which forwards it to the centre;
the bench waits until the centre has every instance and the gateway's outbox is quiet), into
Orthanc with STOW-RS. Loading is not timed.

Processes: Orthanc is one C++ process whose thread pool uses every core; telerad runs
``--workers`` HTTP worker processes (``http.workers``, default one per core; one Python process
is one GIL). The output names both.

Then one client (httpx, HTTP/1.1 keep-alive, gzip accepted) measures, on each server in turn,
metric by metric (so a change in the machine's load hits both alike):

=====================  ==================================================================
rendered JPEG          ``…/instances/{i}/rendered``, ``Accept: image/jpeg``, one request per
                       instance in slice order (a reader scrolling), each image once
rendered PNG           the same with ``Accept: image/png``
8-client throughput    ``--clients`` threads, each its own connection and its own window
                       (``window=C,400,linear``, C differing per client), each scrolling
                       ``--per-client`` slices from its own starting slice: requests/s
QIDO instances         ``/studies/{s}/series/{se}/instances`` (every instance), ``--repeat``
series metadata        ``/studies/{s}/series/{se}/metadata``, ``--repeat``
frame                  ``…/instances/{i}/frames/1``, ``Accept: multipart/related;
                       type="application/octet-stream"; transfer-syntax=*``, each instance
C-FIND study           ``bench/cfind.py``'s client: pynetdicom, one association, Study
                       Root, STUDY level, UID matched, nine return keys, ``--repeat``
=====================  ==================================================================

Before each metric both servers get the same warm-up (the first ``WARMUP`` requests of that
kind, on slices the measurement does not use for per-instance metrics). No measured rendering is
a repeat of an earlier request, so a cache of rendered images only helps where the request
pattern lets it (prefetching the next slices while a reader scrolls). Every response is checked
(status, media type, instance count, frame size); a kind that telerad does not serve is
reported as such rather than aborting the run.

The client sends ``Accept-Encoding: gzip, deflate`` as browsers do. Orthanc's default
(``HttpCompressionEnabled: true``) then gzips every answer, pixel frames included, which costs it
tens of milliseconds per frame; telerad compresses JSON only. ``--orthanc-option
HttpCompressionEnabled=false`` shows Orthanc without that cost. Orthanc's DICOMweb plugin 1.7
(Debian 12) insists on the three-part ``window=center,width,function``, hence ``linear``.

``--profile [METRIC]`` then profiles telerad on METRIC (qido, metadata, frame, jpeg, png), by
default on the call furthest from its target (or the slowest when every target is met): an
in-process copy of the API over the same data directory, every thread profiled, the same
requests again; telerad's functions by cumulative time and all by own time are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cfind
import httpx
import pydicom
import requests
from _common import (
    NODELAY_ENV,
    BenchError,
    OutboxReader,
    base_env,
    centre_study_instances,
    load_average,
    split,
    start_storescu,
    telerad_serve,
    wait_for,
    wait_storescu,
)
from dicomweb_metrics import (
    CFIND_RETRIES,
    METRICS,
    Measured,
    Metric,
    Server,
    cfind_study,
    check_server,
    http_latencies,
    throughput,
)
from ingest_stow import (
    free_port,
    multipart_body,
    orthanc_binary,
    parse_option,
    running,
    wait_until_up,
)

from telerad.demo import write_ct_study

ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PATIENT_ID = "BENCH0001"
STOW_BATCH = 20


@dataclass
class Loaded:
    """The series both servers hold."""

    study: str
    series: str
    instances: list[str]
    files: list[Path] = field(repr=False)


# --- servers --------------------------------------------------------------------------------


@contextlib.contextmanager
def telerad_server(work: Path, loaded: Loaded, workers: int) -> Iterator[tuple[Server, Path]]:
    """``telerad serve`` (``workers`` HTTP processes) with the series sent to its gateway by
    storescu; the server and its data directory."""
    env = {
        "TELERAD_HTTP__WORKERS": str(workers),
        "TELERAD_GATEWAY__STABLE_SECONDS": "2",
        "TELERAD_AUTH__TOKEN_MINUTES": "600",
        **NODELAY_ENV,
    }
    with telerad_serve(work, gateway=True, env=env) as centre:
        with requests.Session() as session:
            headers = centre.admin_headers(session)
            groups = split(loaded.files, 2)
            wait_storescu(start_storescu(centre.dicom_port, groups, called="TELERAD", work=work))
            wait_for(
                lambda: centre_study_instances(session, centre.base, headers, loaded.study)
                == len(loaded.files),
                600, "telerad: the centre holds every instance",
            )  # fmt: skip
        outbox = OutboxReader(centre.gateway_outbox)
        wait_for(lambda: outbox.confirmed() == len(loaded.files), 600, "gateway outbox quiet")
        outbox.close()
        server = Server(
            name="telerad",
            root=f"{centre.base}/dicomweb",
            headers=headers,
            dicom_port=centre.dicom_port,
            called_ae="TELERAD",
        )
        yield server, centre.data_dir


def orthanc_config(work: Path, http_port: int, dicom_port: int, password: str) -> dict[str, Any]:
    """Orthanc's defaults but for ports, storage, HTTP basic authentication (as telerad checks a
    token on every request), Nagle off, our SCU's AE title allowed to query, the plugin."""
    return {
        "Name": "telerad-bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomModalities": {"bench": ["CT1", "127.0.0.1", free_port()]},
        "TcpNoDelay": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"bench": password},
        "Plugins": [ORTHANC_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


@contextlib.contextmanager
def orthanc_server(
    work: Path, instances: Sequence[bytes], overrides: dict[str, Any]
) -> Iterator[Server]:
    """Orthanc with the DICOMweb plugin (``overrides`` on top of our configuration), the series
    stored with STOW-RS."""
    if not Path(ORTHANC_PLUGIN).is_file():
        raise BenchError(f"{ORTHANC_PLUGIN} missing (apt-get install orthanc-dicomweb)")
    http_port, dicom_port, password = free_port(), free_port(), secrets.token_urlsafe(12)
    config = work / "orthanc.json"
    settings = {**orthanc_config(work, http_port, dicom_port, password), **overrides}
    config.write_text(json.dumps(settings))
    base = f"http://127.0.0.1:{http_port}"
    log = work / "orthanc.log"
    with running([orthanc_binary(), str(config)], log, base_env(**NODELAY_ENV)) as proc:
        with requests.Session() as session:
            session.auth = ("bench", password)
            wait_until_up(session, f"{base}/system", proc, log)
            for start in range(0, len(instances), STOW_BATCH):
                body, content_type = multipart_body(instances[start : start + STOW_BATCH])
                response = session.post(
                    f"{base}/dicom-web/studies", data=body, timeout=300,
                    headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                )  # fmt: skip
                if response.status_code != 200:
                    raise BenchError(f"Orthanc STOW-RS: HTTP {response.status_code}")
        token = httpx.BasicAuth("bench", password)._auth_header
        yield Server(
            name="Orthanc",
            root=f"{base}/dicom-web",
            headers={"Authorization": token},
            dicom_port=dicom_port,
            called_ae="ORTHANC",
        )


# --- the run ---------------------------------------------------------------------------------


def load_series(work: Path, slices: int) -> tuple[Loaded, list[bytes]]:
    """Write the series as files (for storescu) and keep its bytes (for STOW-RS)."""
    files = write_ct_study(work / "ct", slices=slices, seed=1, patient_id=PATIENT_ID)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    loaded = Loaded(
        study=str(datasets[0].StudyInstanceUID),
        series=str(datasets[0].SeriesInstanceUID),
        instances=[str(ds.SOPInstanceUID) for ds in datasets],
        files=files,
    )
    return loaded, [p.read_bytes() for p in files]


NOT_RUN = "not run (--only)"


def measure_all(
    servers: Sequence[Server], loaded: Loaded, args: argparse.Namespace
) -> dict[str, dict[str, Measured]]:
    """Every metric on every server, metric by metric."""
    results: dict[str, dict[str, Measured]] = {m.key: {} for m in METRICS}
    for metric in METRICS:
        if args.only and metric.key not in args.only:
            for server in servers:
                results[metric.key][server.name] = Measured(values=[], error=NOT_RUN)
            continue
        for server in servers:
            print(f"  {metric.title}: {server.name} …", file=sys.stderr, flush=True)
            results[metric.key][server.name] = run_metric(metric, server, loaded, args)
    return results


def run_metric(
    metric: Metric, server: Server, loaded: Loaded, args: argparse.Namespace
) -> Measured:
    """One metric on one server; an error response is recorded, not raised."""
    try:
        if metric.kind == "cfind":
            return cfind_study(server, loaded.study, args.repeat)
        if metric.kind == "throughput":
            return throughput(server, loaded.study, loaded.series, loaded.instances,
                              clients=args.clients, per_client=args.per_client)  # fmt: skip
        return http_latencies(metric, server, loaded.study, loaded.series, loaded.instances,
                              repeat=args.repeat)  # fmt: skip
    except BenchError as exc:
        return Measured(values=[], error=str(exc))


def report(results: dict[str, dict[str, Measured]], names: Sequence[str]) -> str:
    """The table: each metric's figure per server, telerad/Orthanc, the target, met or not."""
    telerad, orthanc = names
    skipped = {m.key for m in METRICS if results[m.key][telerad].error == NOT_RUN}
    head = f"{'metric':<22} | {telerad:>10} | {orthanc:>10} | {'ratio':>6} | {'target':>8} | met"
    lines = [head, "-" * len(head)]
    for metric in METRICS:
        ours, theirs = results[metric.key][telerad], results[metric.key][orthanc]
        ratio = metric.ratio(ours, theirs)
        shown = f"{ratio:.2f}" if ratio is not None else "n/a"
        met = "-" if ratio is None else ("yes" if metric.met(ratio) else "NO")
        lines.append(
            f"{metric.title:<22} | {metric.show(ours):>10} | {metric.show(theirs):>10} | "
            f"{shown:>6} | {metric.target_text:>8} | {met}"
        )
    cpu = [(name, results["throughput"][name].client_cpu) for name in names]
    if all(value is not None for _, value in cpu):
        shown = ", ".join(f"{1000 * (value or 0):.2f} ms against {name}" for name, value in cpu)
        lines += ["", f"CPU of this (client) process per request in the 8-client run: {shown}"]
    if misses := ", ".join(f"{ae} {n}" for ae, n in cfind.MISSES.items()):
        lines += ["", f"C-FIND queries that found no match (counted in the figures): {misses}"]
    for name, problem in CFIND_RETRIES:
        lines += [f"C-FIND run on {name} broke off and was run again: {problem}"]
    errors = [
        f"  {metric.title} on {name}: {results[metric.key][name].error}"
        for metric in METRICS
        for name in names
        if results[metric.key][name].error and metric.key not in skipped
    ]
    if errors:
        lines += ["", "not measured:", *errors]
    return "\n".join(lines)


def as_json(results: dict[str, dict[str, Measured]], args: argparse.Namespace) -> str:
    """The figures as JSON (seconds, or requests/s for the throughput)."""
    out = {
        metric.key: {
            name: {"value": m.figure(metric), "samples": len(m.values), "error": m.error}
            for name, m in results[metric.key].items()
        }
        for metric in METRICS
    }
    return json.dumps({"slices": args.slices, "results": out}, indent=2)


def worst_metric(results: dict[str, dict[str, Measured]]) -> Metric | None:
    """The HTTP metric furthest from its target (or the slowest when all are met)."""
    candidates = []
    for metric in METRICS:
        if metric.kind not in ("http",):
            continue
        ours, theirs = results[metric.key]["telerad"], results[metric.key]["Orthanc"]
        ratio = metric.ratio(ours, theirs)
        if ratio is None:
            continue
        miss = ratio / metric.target if metric.lower_is_better else metric.target / ratio
        candidates.append((miss > 1.0, miss if miss > 1.0 else ours.p50, metric))
    return max(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="instances (512x512 CT)")
    parser.add_argument("--repeat", type=int, default=40, help="QIDO/metadata/C-FIND samples")
    parser.add_argument("--clients", type=int, default=8, help="concurrent rendering clients")
    parser.add_argument("--per-client", type=int, default=100, help="requests per client")
    parser.add_argument(
        "--profile", nargs="?", const="worst", default=None, metavar="METRIC",
        choices=["worst", *(m.key for m in METRICS if m.kind == "http")],
        help="profile telerad on METRIC (default: the one furthest from its target)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="telerad's HTTP worker processes (http.workers; default: one per core, as Orthanc"
        " is one process with a thread pool on every core)",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=lambda text: set(text.split(",")), default=set(), metavar="KEY,…",
        help=f"measure only these metrics ({', '.join(m.key for m in METRICS)})",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--orthanc-option", action="append", default=[], metavar="KEY=JSON",
        help="override an Orthanc setting, e.g. HttpCompressionEnabled=false (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.orthanc_option = dict(parse_option(parser, o) for o in args.orthanc_option)
    if unknown := args.only - {m.key for m in METRICS}:
        parser.error(f"--only: no metric {', '.join(sorted(unknown))}")
    if args.slices < 20 or min(args.repeat, args.clients, args.per_client) < 1:
        parser.error("--slices must be at least 20; --repeat/--clients/--per-client positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        work = Path(tmp)
        (work / "telerad").mkdir()
        (work / "orthanc").mkdir()
        try:
            loaded, instances = load_series(work, args.slices)
            print("loading both servers …", file=sys.stderr, flush=True)
            with (
                telerad_server(work / "telerad", loaded, args.workers) as (ours, data_dir),
                orthanc_server(work / "orthanc", instances, args.orthanc_option) as theirs,
            ):
                for server in (ours, theirs):
                    check_server(server, loaded.study, loaded.series, len(loaded.instances))
                results = measure_all([ours, theirs], loaded, args)
                profile_text = ""
                if args.profile:
                    profile_text = run_profile(results, ours, data_dir, loaded, args)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(as_json(results, args))
        return 0
    options = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.orthanc_option.items())
    print(
        f"DICOMweb and C-FIND: {args.slices} CT instances 512x512, one client (httpx);"
        f" load average before {load}, after {load_average()}"
        f"{'; Orthanc with ' + options if options else ''}"
    )
    print(
        f"processes: telerad serve {args.workers} HTTP worker process(es) (+ the supervisor and"
        f" the gateway's, which answers C-FIND); Orthanc one multi-threaded process;"
        f" {os.cpu_count()} cores\n"
    )
    print(report(results, ["telerad", "Orthanc"]))
    if profile_text:
        print(f"\n{profile_text}")
    return 0


def run_profile(
    results: dict[str, dict[str, Measured]],
    server: Server,
    data_dir: Path,
    loaded: Loaded,
    args: argparse.Namespace,
) -> str:
    """Profile telerad on the worst metric (see :func:`worst_metric`)."""
    from dicomweb_profile import profile_metric

    chosen = [m for m in METRICS if m.key == args.profile]
    metric = chosen[0] if chosen else worst_metric(results)
    if metric is None:
        return "profile: no HTTP metric was measured on both servers"
    return profile_metric(metric, server, data_dir, loaded.study, loaded.series,
                          loaded.instances, repeat=args.repeat)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
