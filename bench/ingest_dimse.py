"""DIMSE ingest benchmark: dcmtk storescu into telerad's gateway and into Orthanc, same run.

Usage::

    python3 bench/ingest_dimse.py [--slices 200] [--repeat N] [--targets telerad,orthanc]
                                  [--profile [--profile-out PREFIX]]

A synthetic CT series (512 x 512, `telerad.demo.write_ct_study`) is written once as Part-10
files. dcmtk's storescu (by absolute path, ``TCP_NODELAY=1``, calling AE ``CT1``, max send PDU
131072) stores them (a) over one association and (b) split over four storescu processes, 50
files each, at once. Each measurement gets a fresh server on free localhost ports with its own
temporary data directory:

* telerad: ``telerad serve`` (centre plus the gateway of site ``local``, which accepts any
  calling AE title in development mode; one SCP process per core on the DICOM port; forwarding
  over loopback with ``wire: auto`` = none); ready once every SCP process listens and
  ``echoscu -aet CT1`` succeeds several times in a row.
* Orthanc (system package, ``/usr/sbin/Orthanc``): defaults but for ports, directories,
  ``DicomAlwaysAllowStore``, ``DicomCheckCalledAet: false``, ``TcpNoDelay`` (its HTTP server;
  its DICOM side is dcmtk, started with ``TCP_NODELAY=1`` too) and ``MaximumPduLength: 131072``
  (its default 16 KiB would cut every PDU to an eighth).

The ingest figure is the wall time from starting storescu to the last storescu exiting, i.e.
the last C-STORE response: telerad answers only after the instance is fsynced in its spool and
committed in its outbox; Orthanc after writing it to its storage area and index. Separately,
and not part of the ingest figure, telerad's time until the centre has acknowledged every
instance (the gateway outbox's ``confirmed`` state, then checked with the centre's QIDO-RS).

``--profile`` adds a run of the gateway alone (``telerad gateway`` against a
``telerad serve --no-gateway`` centre) with a cProfile in every thread, one association, and
prints the top 25 functions of the SCP threads by cumulative and by total (own) time.
MB are 10**6 bytes of Part-10 files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from _common import (
    INGEST_GROUPS,
    MAX_SEND_PDU,
    BenchError,
    OutboxReader,
    centre_study_instances,
    dcmtk,
    gateway_processes,
    load_average,
    orthanc_dimse,
    profile_launcher,
    site_token,
    split,
    start_storescu,
    study_uid_of,
    telerad_gateway,
    telerad_serve,
    top_functions,
    wait_for,
    wait_storescu,
)

from telerad.demo import write_ct_study

CONFIRM_TIMEOUT_S = 300.0
#: One SCP process, so that every association is in the profiled one.
PROFILE_ENV = {"TELERAD_DICOM__WORKERS": "1"}
MODES = (1, 4)


@dataclass(frozen=True)
class Run:
    """One storescu run into one fresh server."""

    target: str
    associations: int
    seconds: float
    instances: int
    payload_bytes: int
    confirmed_s: float | None = None  # telerad: first C-STORE → all confirmed at the centre
    confirmed_after_s: float | None = None  # telerad: last C-STORE response → all confirmed

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / 1e6 / self.seconds


# --- one measurement per server ---------------------------------------------------------------


def measure_telerad(files: Sequence[Path], associations: int, study_uid: str) -> Run:
    """Store ``files`` into a fresh ``telerad serve``; time ingest and confirmation."""
    with tempfile.TemporaryDirectory(prefix="bench-dimse-telerad-") as tmp:
        work = Path(tmp)
        with telerad_serve(work, gateway=True) as centre:
            outbox = OutboxReader(centre.gateway_outbox)
            run = start_storescu(
                centre.dicom_port, split(files, associations), called="TELERAD", work=work
            )
            ended = wait_storescu(run)
            if (received := outbox.received()) != len(files):
                raise BenchError(f"telerad acknowledged {len(files)} but its outbox has {received}")
            wait_for(
                lambda: outbox.confirmed() >= len(files),
                CONFIRM_TIMEOUT_S,
                "all instances confirmed by the centre",
                interval=0.02,
            )
            confirmed = time.perf_counter()
            outbox.close()
            with requests.Session() as session:
                held = centre_study_instances(
                    session, centre.base, centre.admin_headers(session), study_uid
                )
            if held != len(files):
                raise BenchError(f"the centre holds {held} instances of {len(files)}")
    return Run(
        "telerad", associations, ended - run.started, len(files), payload(files),
        confirmed - run.started, confirmed - ended,
    )  # fmt: skip


def measure_orthanc(files: Sequence[Path], associations: int, study_uid: str) -> Run:
    """Store ``files`` into a fresh Orthanc; time ingest."""
    with tempfile.TemporaryDirectory(prefix="bench-dimse-orthanc-") as tmp:
        work = Path(tmp)
        with orthanc_dimse(work) as orthanc:
            run = start_storescu(
                orthanc.dicom_port, split(files, associations), called="ORTHANC", work=work
            )
            ended = wait_storescu(run)
            if (held := orthanc.count_instances()) != len(files):
                raise BenchError(f"Orthanc holds {held} instances of {len(files)}")
    return Run("Orthanc", associations, ended - run.started, len(files), payload(files))


def payload(files: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in files)


# --- profile ----------------------------------------------------------------------------------


def profile_gateway(files: Sequence[Path], keep: Path | None) -> str:
    """Ingest ``files`` over one association into a profiled gateway; the report's text."""
    with tempfile.TemporaryDirectory(prefix="bench-dimse-profile-") as tmp:
        work = Path(tmp)
        prefix = work / "gateway"
        with telerad_serve(work, gateway=False) as centre:
            token = site_token(centre.data_dir)
            with telerad_gateway(
                work,
                centre_url=centre.base,
                token=token,
                env=PROFILE_ENV,
                launcher=profile_launcher(prefix),
            ) as gateway:
                run = start_storescu(gateway.dicom_port, [files], called="TELERAD", work=work)
                seconds = wait_storescu(run) - run.started
                outbox = OutboxReader(gateway.outbox)
                wait_for(
                    lambda: outbox.confirmed() >= len(files), CONFIRM_TIMEOUT_S, "confirmation"
                )
                outbox.close()
            # leaving the block stops the gateway: the profiles are written at its exit
        text = profile_report(prefix, len(files), seconds)
        if keep is not None:
            for path in work.glob("gateway.*"):
                shutil.copy(path, f"{keep}{path.name.removeprefix('gateway')}")
        return text


def profile_report(prefix: Path, instances: int, seconds: float) -> str:
    import json

    summary = json.loads(Path(f"{prefix}.json").read_text())
    ingest = [Path(f"{prefix}.{g}.prof") for g in INGEST_GROUPS if g in summary]
    cpu = ", ".join(
        f"{group} {v['cpu_s']:.2f} s ({int(v['threads'])} threads)"
        for group, v in sorted(summary.items())
    )
    head = [
        f"profile: gateway alone (telerad gateway -> telerad serve --no-gateway, "
        f"TELERAD_DICOM__WORKERS=1: one SCP process), one association, {instances} instances "
        f"in {seconds:.2f} s under the profiler "
        f"({instances / seconds:.1f} inst/s; cProfile slows Python code several-fold)",
        f"gateway CPU per thread group (thread_time at thread exit): {cpu}",
        f"SCP threads ({', '.join(INGEST_GROUPS)}; the one readiness C-ECHO "
        "association included), wall-clock timer, waits count as time. cProfile in every thread "
        "(python -m cProfile would see only the idle main thread; py-spy is not used):",
    ]
    by_cumulative = top_functions(ingest, "cumulative")
    by_own = top_functions(ingest, "tottime")
    return "\n".join(
        [*head, "", "top 25 by cumulative time:", by_cumulative, "",
         "top 25 by total (own) time:", by_own]
    )  # fmt: skip


# --- report -----------------------------------------------------------------------------------


def median_run(runs: Sequence[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def table(results: dict[tuple[int, str], Run]) -> str:
    header = (
        f"{'mode':<15} | {'target':<8} | {'instances/s':>11} | {'MB/s':>6} | "
        f"{'wall s':>6} | {'ratio telerad/Orthanc':>21}"
    )
    lines = [header, "-" * len(header)]
    for associations in MODES:
        telerad, orthanc = (
            results.get((associations, "telerad")),
            results.get((associations, "Orthanc")),
        )
        ratio = telerad.instances_per_s / orthanc.instances_per_s if telerad and orthanc else None
        for run in (r for r in (telerad, orthanc) if r):
            shown = f"{ratio:.2f}" if ratio is not None and run is telerad else ""
            lines.append(
                f"{mode_name(associations):<15} | {run.target:<8} | {run.instances_per_s:>11.1f}"
                f" | {run.mb_per_s:>6.1f} | {run.seconds:>6.2f} | {shown:>21}"
            )
    return "\n".join(lines)


def mode_name(associations: int) -> str:
    return "1 association" if associations == 1 else f"{associations} associations"


def confirmation_lines(results: dict[tuple[int, str], Run]) -> list[str]:
    lines = [
        "telerad end to end (NOT the ingest figure): until the centre has acknowledged every",
        "instance (gateway outbox state 'confirmed'; centre QIDO count checked afterwards):",
    ]
    for associations in MODES:
        run = results.get((associations, "telerad"))
        if run and run.confirmed_s is not None and run.confirmed_after_s is not None:
            lines.append(
                f"  {mode_name(associations):<15} {run.confirmed_s:6.2f} s after the first "
                f"C-STORE ({run.confirmed_after_s:5.2f} s after the last response), "
                f"{run.instances / run.confirmed_s:.1f} inst/s end to end"
            )
    return lines


def report(
    results: dict[tuple[int, str], Run], files: Sequence[Path], repeat: int, load_before: str
) -> str:
    size = payload(files) / 1e6
    head = [
        f"DIMSE ingest: {len(files)} CT instances 512x512 (Explicit VR LE), {size:.1f} MB",
        f"client: dcmtk {dcmtk('storescu')} with TCP_NODELAY=1 in its environment (dcmtk 3.6.7 "
        f"has no +nodelay), calling AE CT1, --max-send-pdu {MAX_SEND_PDU}; 4 associations = "
        f"4 storescu processes of {len(files) // 4} files at once",
        f"telerad: telerad serve (centre + gateway subprocess with {gateway_processes({})} SCP "
        "processes on the port, the default one per core; SQLite, filesystem); "
        "Orthanc 1.10: /usr/sbin/Orthanc, SQLite index, SyncStorageArea default (true)",
        f"{os.cpu_count()} CPUs; load average before/after: {load_before} / {load_average()}",
    ]
    if repeat > 1:
        head.append(f"median of {repeat} runs, each with fresh servers")
    return "\n".join([*head, "", table(results), "", *confirmation_lines(results)])


# --- entry point ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="instances to store (512x512 CT)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh servers per run; median")
    parser.add_argument("--targets", default="telerad,orthanc", help="telerad, orthanc")
    parser.add_argument("--profile", action="store_true", help="also profile the gateway alone")
    parser.add_argument(
        "--profile-out", type=Path, help="keep the .prof files under this prefix (with --profile)"
    )
    args = parser.parse_args(argv)
    args.targets = [t.strip().lower() for t in args.targets.split(",") if t.strip()]
    if unknown := set(args.targets) - {"telerad", "orthanc"}:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.slices < 4 or args.repeat < 1:
        parser.error("--slices must be at least 4 and --repeat positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    measures: dict[str, Callable[[Sequence[Path], int, str], Run]] = {
        "telerad": measure_telerad,
        "orthanc": measure_orthanc,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dimse-ct-") as tmp:
            load_before = load_average()
            files = write_ct_study(Path(tmp) / "ct", slices=args.slices, seed=1)
            study_uid = study_uid_of(files[0])
            runs: dict[tuple[int, str], list[Run]] = {}
            for _ in range(args.repeat):
                for associations in MODES:
                    for name in args.targets:
                        run = measures[name](files, associations, study_uid)
                        runs.setdefault((associations, run.target), []).append(run)
            results = {key: median_run(value) for key, value in runs.items()}
            print(report(results, files, args.repeat, load_before), flush=True)
            if args.profile:
                print("\n" + profile_gateway(files, args.profile_out), flush=True)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
