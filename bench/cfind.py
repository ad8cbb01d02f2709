"""C-FIND latency benchmark: telerad's gateway against Orthanc, same client, same data, same run.

Usage::

    python3 bench/cfind.py [--slices 200] [--queries 200] [--findscu 20]
                           [--targets telerad,orthanc]

The synthetic CT series (512 x 512, ``telerad.demo.write_ct_study``) is written once as Part-10
files and stored with dcmtk storescu into each server, started in turn on free localhost ports:

* telerad: ``telerad serve`` (centre plus the gateway of site ``local``, development mode, one
  SCP process per core); the gateway answers C-FIND with a QIDO-RS search at the centre over
  loopback (keep-alive), so the figure includes that HTTP round trip and the centre's audit
  record of the search. Queried once every instance is confirmed by the centre.
* Orthanc (system package): ports, directories, ``DicomAlwaysAllowFind``, calling AE ``CT1``
  known, ``TCP_NODELAY=1``.

Two measurements per server, both Study Root, study level, the identifier a viewer's
"find this study" sends (Study Instance UID as matching key and nine return keys):

* ``pynetdicom``: one association, ``--queries`` C-FINDs one after the other; each latency is
  the C-FIND request to its final response (:func:`cfind_latencies`);
* ``findscu``: dcmtk findscu per query, association set-up and release included
  (:func:`findscu_latencies`);
* ``C-ECHO``: one pynetdicom association, ``--queries`` C-ECHOs (:func:`echo_latencies`): the
  DIMSE round trip with no work behind it, so the C-FIND figure minus this one is the query
  itself (for telerad: the QIDO-RS search at the centre and building the responses).

p50/p95 in ms and the telerad/Orthanc ratio of the p50s (target ≤ 1.0). Other benchmarks can
call :func:`cfind_latencies` and :func:`findscu_latencies` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from _common import (
    NODELAY_ENV,
    BenchError,
    OutboxReader,
    base_env,
    dcmtk,
    free_port,
    load_average,
    orthanc_dimse_config,
    start_storescu,
    study_uid_of,
    tail,
    telerad_serve,
    wait_for,
    wait_storescu,
)
from ingest_stow import orthanc_binary, running, wait_until_up
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from telerad.demo import write_ct_study
from telerad.dicom_gateway.qr import nodelay

FIND = StudyRootQueryRetrieveInformationModelFind
RETURN_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
)  # fmt: skip


def study_identifier(study_uid: str) -> Dataset:
    """A Study Root, study-level identifier: the UID to match and :data:`RETURN_KEYS`."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
    return ds


def cfind_latencies(
    host: str, port: int, called_ae: str, study_uid: str, queries: int, *, calling_ae: str = "CT1"
) -> list[float]:
    """Seconds per C-FIND, ``queries`` of them on one pynetdicom association, after one that
    warms caches and connections. Each must end with 0x0000; one that found no match is
    counted in :data:`MISSES` (Orthanc 1.10 now and then answers none for a study it holds).
    The client disables Nagle's algorithm (as the dcmtk tools do with ``TCP_NODELAY=1``):
    pynetdicom writes a request's command and identifier separately, and the second write
    would otherwise wait for a delayed ACK."""
    latencies = []
    with association(host, port, called_ae, calling_ae, FIND) as assoc:
        for _ in range(queries + 1):
            identifier = study_identifier(study_uid)
            started = time.perf_counter()
            responses = list(assoc.send_c_find(identifier, FIND))
            latencies.append(time.perf_counter() - started)
            if not _check(responses, study_uid, called_ae):
                MISSES[called_ae] = MISSES.get(called_ae, 0) + 1
    return latencies[1:]


#: Called AE title → C-FIND answers without the study (see :func:`cfind_latencies`).
MISSES: dict[str, int] = {}


def echo_latencies(
    host: str, port: int, called_ae: str, echoes: int, *, calling_ae: str = "CT1"
) -> list[float]:
    """Seconds per C-ECHO, ``echoes`` of them on one pynetdicom association (Nagle off), after
    one that warms up; each must answer 0x0000."""
    latencies = []
    with association(host, port, called_ae, calling_ae, Verification) as assoc:
        for _ in range(echoes + 1):
            started = time.perf_counter()
            status = assoc.send_c_echo()
            latencies.append(time.perf_counter() - started)
            if int(status.get("Status", -1)) != 0x0000:
                raise BenchError(f"{called_ae}: C-ECHO status {status}")
    return latencies[1:]


@contextlib.contextmanager
def association(
    host: str, port: int, called_ae: str, calling_ae: str, sop_class: str
) -> Iterator[Association]:
    """One pynetdicom association proposing ``sop_class``, Nagle off; released at the end."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(sop_class)
    assoc = ae.associate(
        host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
    )
    if not assoc.is_established:
        raise BenchError(f"{called_ae} at {host}:{port} refused the association")
    try:
        yield assoc
    finally:
        assoc.release()


def _check(responses: list[tuple[Dataset, Dataset | None]], study_uid: str, who: str) -> bool:
    """True if the C-FIND found exactly the study, False if it found nothing."""
    statuses = [int(status.get("Status", -1)) for status, _ in responses]
    matches = [ds for status, ds in responses if int(status.get("Status", -1)) in (0xFF00, 0xFF01)]
    if statuses[-1:] != [0x0000] or len(matches) > 1:
        raise BenchError(f"{who}: C-FIND statuses {statuses}")
    if matches and (matches[0] is None or matches[0].StudyInstanceUID != study_uid):
        raise BenchError(f"{who}: C-FIND answered another study")
    return bool(matches)


def findscu_latencies(
    host: str, port: int, called_ae: str, study_uid: str, queries: int, *, calling_ae: str = "CT1"
) -> list[float]:
    """Seconds per dcmtk findscu run (one association, one query, release)."""
    keys = [arg for k in ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}",
                          *RETURN_KEYS) for arg in ("-k", k)]  # fmt: skip
    argv = [
        dcmtk("findscu"),
        "-v",
        "-S",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        host,
        str(port),
        *keys,
    ]
    latencies = []
    for _ in range(queries):
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, timeout=60,
                                env=base_env(**NODELAY_ENV))  # fmt: skip
        latencies.append(time.perf_counter() - started)
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0 or study_uid not in output:
            raise BenchError(f"findscu to {called_ae}: {result.stderr.decode()[-1000:]}")
    return latencies


# --- servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A DICOM server holding the study: where to query it."""

    name: str
    port: int
    called_ae: str


@contextlib.contextmanager
def telerad(work: Path, files: Sequence[Path]) -> Iterator[Server]:
    """``telerad serve`` with its gateway, holding ``files`` confirmed by the centre."""
    with telerad_serve(work, gateway=True) as centre:
        store(centre.dicom_port, "TELERAD", files, work)
        outbox = OutboxReader(centre.gateway_outbox)
        try:
            wait_for(lambda: outbox.confirmed() >= len(files), 600, "centre confirmed the study")
        finally:
            outbox.close()
        yield Server("telerad", centre.dicom_port, "TELERAD")


@contextlib.contextmanager
def orthanc(work: Path, files: Sequence[Path]) -> Iterator[Server]:
    """Orthanc holding ``files``; C-FIND allowed from AE ``CT1``."""
    http_port, dicom_port = free_port(), free_port()
    config = orthanc_dimse_config(work, http_port, dicom_port)
    config["DicomAlwaysAllowFind"] = True
    config["DicomModalities"] = {"ct1": ["CT1", "127.0.0.1", free_port()]}
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    base = f"http://127.0.0.1:{http_port}"
    log = work / "orthanc.log"
    with running([orthanc_binary(), str(path)], log, base_env(**NODELAY_ENV)) as proc:
        with requests.Session() as session:
            wait_until_up(session, f"{base}/system", proc, log)
        try:
            store(dicom_port, "ORTHANC", files, work)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{tail(log)}") from exc
        with requests.Session() as session:
            wait_for(lambda: orthanc_instances(session, base) >= len(files), 120, "Orthanc index")
        yield Server("orthanc", dicom_port, "ORTHANC")


def orthanc_instances(session: requests.Session, base: str) -> int:
    """Instances in Orthanc's index (a first C-FIND right after storing once found none)."""
    response = session.get(f"{base}/statistics", timeout=30)
    response.raise_for_status()
    return int(response.json()["CountInstances"])


def store(port: int, called: str, files: Sequence[Path], work: Path) -> None:
    """storescu the files on one association (max send PDU :data:`MAX_SEND_PDU`)."""
    wait_storescu(start_storescu(port, [list(files)], called=called, work=work))


def answers(server: Server, study_uid: str) -> bool:
    """Whether a C-FIND for the study finds it (Orthanc right after storing may not yet)."""
    before = MISSES.pop(server.called_ae, 0)
    cfind_latencies("127.0.0.1", server.port, server.called_ae, study_uid, 0)
    found = MISSES.pop(server.called_ae, 0) == 0
    if before:
        MISSES[server.called_ae] = before
    return found


# --- report ---------------------------------------------------------------------------------


def ms(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [f"{'client':10} {'server':8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}"]
    for client in ("pynetdicom", "findscu", "C-ECHO"):
        for server, measured in results.items():
            values = measured.get(client)
            if values:
                mean = 1000 * statistics.mean(values)
                lines.append(f"{client:10} {server:8} {ms(values, 0.5):8.2f} "
                             f"{ms(values, 0.95):8.2f} {mean:8.2f}")  # fmt: skip
        if {"telerad", "orthanc"} <= results.keys() and results["orthanc"].get(client):
            ratio = ms(results["telerad"][client], 0.5) / ms(results["orthanc"][client], 0.5)
            lines.append(f"{client:10} ratio telerad/orthanc p50 = {ratio:.2f} (target <= 1.0)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--findscu", type=int, default=20)
    parser.add_argument("--targets", default="telerad,orthanc")
    args = parser.parse_args(argv)
    servers = {"telerad": telerad, "orthanc": orthanc}
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="telerad-cfind-") as tmp:
        root = Path(tmp)
        files = write_ct_study(root / "study", args.slices)
        study_uid = study_uid_of(files[0])
        print(f"{args.slices} x 512² CT; load {load_average()}", flush=True)
        for name in args.targets.split(","):
            work = root / name
            work.mkdir()
            with servers[name](work, files) as server:
                wait_for(lambda: answers(server, study_uid), 120, f"{name} finds the study")
                results[name] = {
                    "pynetdicom": cfind_latencies("127.0.0.1", server.port, server.called_ae,
                                                  study_uid, args.queries),
                    "findscu": findscu_latencies("127.0.0.1", server.port, server.called_ae,
                                                 study_uid, args.findscu),
                    "C-ECHO": echo_latencies("127.0.0.1", server.port, server.called_ae,
                                             args.queries),
                }  # fmt: skip
            print(f"{name} done; load {load_average()}", flush=True)
    print(summary(results))
    if MISSES:
        print(f"C-FIND answers without the study (counted in the latencies): {MISSES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
