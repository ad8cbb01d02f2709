"""WAN benchmark: a CT study from a county gateway to the centre over a slow, lossy link.

Usage::

    python3 bench/wan.py [--slices 300] [--runs none,gzip,lossless,cut] [--sequential]
                         [--seed 1]

Per run, a fresh centre (``telerad serve --no-gateway``) and a fresh ``telerad gateway`` (site
``local``'s token from ``telerad site token local``) whose ``TELERAD_GATEWAY__CENTRE_URL`` is a
`tests.tcpproxy.TcpProxy` in front of the centre: 10 Mbit/s each way, 50 ms one-way latency,
and a stall of 50-300 ms with probability 0.002 per 16 KiB chunk. The proxy listens on
127.0.0.1, so ``wire: auto`` would mean "none" (loopback); ``TELERAD_GATEWAY__WIRE`` is set
explicitly: ``none`` (baseline), ``gzip``, ``lossless`` (JPEG-LS, gzip for the rest), and
``cut`` = ``lossless`` with the link cut (``proxy.cut()``: every connection reset, new ones
refused) for 20 s once half the instances are confirmed. dcmtk storescu (``TCP_NODELAY=1``)
sends the study into the gateway over one association while the gateway forwards.

The ``none`` baseline needs the whole raw transfer time (about 130 s) and almost no CPU, so it
runs in a background thread on its own link (its own proxy, centre and gateway) while the others
run one after another; they start once its storescu is done, so no two ingests overlap. That
keeps the bench near four minutes; ``--sequential`` runs it alone first (about six).

Reported per run: bytes on the wire (the proxy's ``bytes_up`` from the first C-STORE to the
end) over the raw bytes of the files, and the time from the last C-STORE response to the study
being complete at the centre over the raw bytes' transfer time at link speed
(``raw_bytes * 8 / 10e6``). "Complete" is the centre's ``GET /api/studies/{uid}/status``
``complete: true`` (admin token) when the centre has that route and the manifest route;
otherwise the gateway outbox's study state ``complete``; otherwise (no manifest route) every
instance ``confirmed`` in the outbox. The report says which.

Whether anything acknowledged was sent again after the cut, three ways: (1) acknowledgements
the gateway received (its "forwarded N of M" log lines) against distinct instances: an instance
acknowledged twice was sent again after its acknowledgement; (2) bytes the centre acknowledged
(the outbox's per-instance ``bytes_sent``, the acknowledged requests' bodies) against the
proxy's ``bytes_up``: what the cut run carried beyond the acknowledged bodies, less the same
figure of the uncut ``lossless`` run (HTTP headers, manifests), is what the cut cost; it must
not exceed the bodies of the requests in flight when the link went down; (3) STOW parts the
centre reports having stored (its audit: ``stored=N`` per STOW request) against distinct
instances: the excess are parts the centre stored twice because the answer to the first
copy was lost in the cut (a request cut mid-body leaves no audit row, so this undercounts).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from _common import (
    REPO_DIR,
    BenchError,
    Centre,
    OutboxReader,
    centre_routes,
    centre_study_instances,
    has_route,
    load_average,
    site_token,
    start_storescu,
    storescu_done,
    study_uid_of,
    tail,
    telerad_gateway,
    telerad_serve,
)

from telerad.demo import write_ct_study

sys.path.insert(0, str(REPO_DIR))
from tests.tcpproxy import TcpProxy  # the repository root, added above

RUN_TIMEOUT_S = 300.0
BYTES_TARGET = 0.45
TIME_TARGET = 0.60
CUT_MODE = "reset"
_FORWARDED = re.compile(r"forwarded (\d+) of (\d+) instances")
_STORED = re.compile(r"stored=(\d+)")


@dataclass(frozen=True)
class Link:
    """The shaped link's parameters."""

    bandwidth_bps: float
    latency_s: float
    stall_probability: float
    stall_seconds: tuple[float, float]
    seed: int

    def proxy(self, port: int) -> TcpProxy:
        return TcpProxy(
            "127.0.0.1", port, bandwidth_bps=self.bandwidth_bps, latency_s=self.latency_s,
            stall_probability=self.stall_probability, stall_seconds=self.stall_seconds,
            seed=self.seed,
        )  # fmt: skip


@dataclass
class WanRun:
    """What one run measured."""

    name: str
    wire: str
    criterion: str
    raw_bytes: int
    wire_bytes: int
    ingest_s: float
    after_last_s: float
    connections: int
    cut_at_s: float | None = None
    restored_at_s: float | None = None
    restore_to_done_s: float | None = None
    restored_epoch: float | None = None  # time.time() of the restore, as the outbox records
    first_ack_after_restore_s: float | None = None
    acks: int = 0
    distinct_confirmed: int = 0
    retried_instances: int = 0
    retried_wire_bytes: int = 0
    acked_bytes: int = 0
    centre_parts: int | None = None
    in_flight_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_ratio(self) -> float:
        return self.wire_bytes / self.raw_bytes

    def time_ratio(self, link: Link) -> float:
        return self.after_last_s / (self.raw_bytes * 8 / link.bandwidth_bps)


# --- completion -------------------------------------------------------------------------------


class Completion:
    """Decides when the study is complete, by the best signal the centre offers."""

    def __init__(self, centre: Centre, outbox: OutboxReader, study_uid: str, total: int) -> None:
        routes = centre_routes(centre.base)
        status = has_route(routes, "GET", r"/api/studies/\{[^}]+\}/status")
        manifest = has_route(routes, "PUT", r"/api/studies/\{[^}]+\}/manifest")
        self.centre, self.outbox, self.study_uid, self.total = centre, outbox, study_uid, total
        self._session = requests.Session()
        self._headers: dict[str, str] = {}
        if status and manifest:
            self.criterion = "centre GET /api/studies/{uid}/status complete=true"
            self._headers = centre.admin_headers(self._session)
        elif manifest:
            self.criterion = "gateway outbox study state 'complete' (centre has no status route)"
        else:
            self.criterion = (
                "every instance 'confirmed' in the gateway outbox (the centre has no "
                "PUT /api/studies/{uid}/manifest, so no study can become complete)"
            )
        self._status, self._manifest = status, manifest

    def done(self) -> bool:
        if self._status and self._manifest:
            response = self._session.get(
                f"{self.centre.base}/api/studies/{self.study_uid}/status",
                headers=self._headers,
                timeout=30,
            )
            if response.status_code == 401:  # the admin token expired
                self._headers = self.centre.admin_headers(self._session)
                return False
            return response.status_code == 200 and bool(response.json().get("complete"))
        if self._manifest:
            return self.outbox.study_state(self.study_uid) == "complete"
        return self.outbox.confirmed() >= self.total

    def close(self) -> None:
        self._session.close()


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One run: its name, the gateway's wire form, how long the link is cut (if at all)."""

    name: str
    wire: str
    cut_s: float | None = None


@dataclass
class Signals:
    """Between a run in a background thread and the main thread."""

    sent: threading.Event = field(default_factory=threading.Event)  # its storescu is done
    stop: threading.Event = field(default_factory=threading.Event)  # give up now


def run_once(plan: Plan, files: Sequence[Path], args: Any, signals: Signals) -> WanRun:
    """A fresh centre, proxy and gateway; the study sent, forwarded and complete."""
    link: Link = args.link
    study_uid = study_uid_of(files[0])
    with tempfile.TemporaryDirectory(prefix=f"bench-wan-{plan.name}-") as tmp:
        work = Path(tmp)
        with telerad_serve(work, gateway=False) as centre, link.proxy(centre.http_port) as proxy:
            token = site_token(centre.data_dir)
            env = {
                "TELERAD_GATEWAY__WIRE": plan.wire,
                "TELERAD_GATEWAY__STABLE_SECONDS": str(args.stable_seconds),
            }
            url = f"http://127.0.0.1:{proxy.port}"
            with telerad_gateway(work, centre_url=url, token=token, env=env) as gateway:
                outbox = OutboxReader(gateway.outbox)
                completion = Completion(centre, outbox, study_uid, len(files))
                try:
                    run = drive(plan, files, proxy, gateway.dicom_port, outbox, completion,
                                work, signals)  # fmt: skip
                    run.criterion = completion.criterion
                    account(run, outbox, len(files))
                finally:
                    completion.close()
                    outbox.close()
            run.acks = count_acks(gateway.log)
            run.centre_parts = centre_stored_parts(centre.data_dir / "telerad.db")
            check_centre(centre, study_uid, len(files))
    return run


def drive(
    plan: Plan,
    files: Sequence[Path],
    proxy: TcpProxy,
    dicom_port: int,
    outbox: OutboxReader,
    completion: Completion,
    work: Path,
    signals: Signals,
) -> WanRun:
    """Send the study, cut and restore the link if asked, poll until complete."""
    up0 = proxy.bytes_up
    store = start_storescu(dicom_port, [files], called="TELERAD", work=work)
    last_response = cut_at = restored_at = restored_epoch = None
    in_flight = 0
    deadline = store.started + RUN_TIMEOUT_S
    while not signals.stop.is_set():
        now = time.perf_counter()
        if last_response is None and storescu_done(store):
            last_response = now
            signals.sent.set()
            if store.processes[0].returncode != 0:
                raise BenchError(f"storescu failed:\n{tail(store.logs[0])}")
        if plan.cut_s is not None and cut_at is None and outbox.confirmed() >= len(files) // 2:
            in_flight = in_flight_bytes(outbox)
            proxy.cut(CUT_MODE)
            cut_at = time.perf_counter()
        if cut_at is not None and restored_at is None and now - cut_at >= (plan.cut_s or 0):
            proxy.restore()
            restored_at, restored_epoch = time.perf_counter(), time.time()
        if last_response is not None and (cut_at is None or restored_at) and completion.done():
            break
        if now > deadline:
            raise BenchError(f"{plan.name}: not complete within {RUN_TIMEOUT_S:.0f} s: "
                             f"{outbox.states()}")  # fmt: skip
        time.sleep(0.05)
    else:
        raise BenchError(f"{plan.name}: stopped")
    done = time.perf_counter()
    raw = sum(p.stat().st_size for p in files)
    run = WanRun(
        plan.name, plan.wire, "", raw, proxy.bytes_up - up0, last_response - store.started,
        done - last_response, proxy.connections, in_flight_bytes=in_flight,
    )  # fmt: skip
    if cut_at is not None and restored_at is not None:
        run.cut_at_s, run.restored_at_s = cut_at - last_response, restored_at - last_response
        run.restore_to_done_s, run.restored_epoch = done - restored_at, restored_epoch
    return run


def in_flight_bytes(outbox: OutboxReader) -> int:
    """Wire bytes of the instances leased ('sending') with their wire form prepared: an upper
    bound of the request bodies on the way (a leased batch may not have started sending)."""
    return sum(row["wire_size"] or 0 for row in outbox.instances() if row["state"] == "sending")


def account(run: WanRun, outbox: OutboxReader, total: int) -> None:
    """Per-instance figures from the outbox."""
    rows = outbox.instances()
    run.distinct_confirmed = sum(1 for r in rows if r["state"] == "confirmed")
    retried = [r for r in rows if r["attempts"] > 0]
    run.retried_instances = len(retried)
    run.retried_wire_bytes = sum((r["wire_size"] or r["size"]) for r in retried)
    run.acked_bytes = sum(r["bytes_sent"] for r in rows)
    if run.restored_epoch is not None:
        after = [r["confirmed_at"] for r in rows if (r["confirmed_at"] or 0) > run.restored_epoch]
        if after:
            run.first_ack_after_restore_s = min(after) - run.restored_epoch
    if run.distinct_confirmed != total:
        run.notes.append(f"only {run.distinct_confirmed} of {total} confirmed in the outbox")


def count_acks(log: Path) -> int:
    """Instances acknowledged to the gateway, summed over its "forwarded N of M" log lines."""
    return sum(int(m.group(1)) for m in _FORWARDED.finditer(log.read_text(errors="replace")))


def centre_stored_parts(database: Path) -> int | None:
    """STOW parts the centre reported stored (audit ``stored=N``), ``None`` if unreadable."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT detail FROM audit_events WHERE action = 'stow'").fetchall()
    except sqlite3.Error:
        return None
    return sum(int(m.group(1)) for (detail,) in rows if (m := _STORED.search(detail or "")))


def check_centre(centre: Centre, study_uid: str, total: int) -> None:
    """The centre lists every instance of the study (QIDO-RS, directly, not through the link)."""
    with requests.Session() as session:
        held = centre_study_instances(session, centre.base, centre.admin_headers(session),
                                      study_uid)  # fmt: skip
    if held != total:
        raise BenchError(f"the centre holds {held} instances of {total}")


# --- report -----------------------------------------------------------------------------------


def mark(value: float, target: float) -> str:
    return "meets" if value <= target else "MISSES"


def table(runs: Sequence[WanRun], link: Link) -> str:
    header = (
        f"{'run':<13} | {'wire':<8} | {'wire MB':>7} | {'wire/raw':>8} | "
        f"{'target':>14} | {'last C-STORE->complete s':>24} | {'/raw link time':>14} | "
        f"{'target':>14} | {'C-STORE s':>9}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        ratio = run.time_ratio(link)
        bytes_target = f"<= {BYTES_TARGET:.2f} {mark(run.bytes_ratio, BYTES_TARGET)}"
        time_target = (
            f"<= {TIME_TARGET:.2f} {mark(ratio, TIME_TARGET)}"
            if run.cut_at_s is None
            else f"n/a (cut {run.restored_at_s - run.cut_at_s:.0f} s)"
        )
        lines.append(
            f"{run.name:<13} | {run.wire:<8} | {run.wire_bytes / 1e6:>7.1f} | "
            f"{run.bytes_ratio:>8.3f} | {bytes_target:>14} | {run.after_last_s:>24.1f} | "
            f"{ratio:>14.3f} | {time_target:>14} | {run.ingest_s:>9.1f}"
        )
    return "\n".join(lines)


def cut_lines(cut: WanRun, reference: WanRun | None) -> list[str]:
    lines = [
        f"cut run ({cut.wire}): link cut ({CUT_MODE}: connections reset, new ones refused) "
        f"{cut.cut_at_s:.1f} s after the last C-STORE response, when half the instances were "
        f"confirmed; restored {cut.restored_at_s:.1f} s after it; complete "
        f"{cut.restore_to_done_s:.1f} s after the restore "
        f"({cut.connections} TCP connections through the proxy)",
        f"  completed: yes, {cut.distinct_confirmed} instances confirmed, centre QIDO count "
        "checked; first acknowledgement after the restore: "
        + (
            f"{cut.first_ack_after_restore_s:.1f} s (the forwarders' backoff grew during the cut)"
            if cut.first_ack_after_restore_s is not None
            else "none (all acknowledged before it)"
        ),
        f"  (1) acknowledgements received by the gateway: {cut.acks} for "
        f"{cut.distinct_confirmed} distinct instances -> {cut.acks - cut.distinct_confirmed} "
        "acknowledged instance(s) sent again",
        f"  instances that needed another attempt (outbox attempts > 0): "
        f"{cut.retried_instances}, {cut.retried_wire_bytes / 1e6:.1f} MB of wire form; "
        f"leased with a wire form when the link went down (at most in flight): "
        f"{cut.in_flight_bytes / 1e6:.1f} MB",
    ]
    unacked = cut.wire_bytes - cut.acked_bytes
    if reference is not None:
        overhead = reference.wire_bytes - reference.acked_bytes
        extra = unacked - overhead
        verdict = (
            "within" if extra <= cut.in_flight_bytes + 64 * 1024 else "MORE than"
        )  # one chunk of slack per direction
        lines.append(
            f"  (2) bytes up beyond the acknowledged request bodies: {unacked / 1e6:.2f} MB "
            f"(uncut {reference.name} run: {overhead / 1e6:.2f} MB of headers and manifests)"
            f" -> the cut cost {extra / 1e6:.2f} MB, {verdict} the {cut.in_flight_bytes / 1e6:.1f}"
            f" MB in flight; vs the uncut run: {(cut.wire_bytes - reference.wire_bytes) / 1e6:+.2f}"
            " MB on the wire"
        )
    else:
        lines.append(f"  (2) bytes up beyond the acknowledged bodies: {unacked / 1e6:.2f} MB")
    if cut.centre_parts is not None:
        lines.append(
            f"  (3) STOW parts the centre reported stored (audit): {cut.centre_parts} for "
            f"{cut.distinct_confirmed} instances -> {cut.centre_parts - cut.distinct_confirmed} "
            "stored again because their answer was lost in the cut (not acknowledged before)"
        )
    return lines


def report(runs: Sequence[WanRun], files: Sequence[Path], args: Any) -> str:
    link: Link = args.link
    raw = runs[0].raw_bytes
    head = [
        f"WAN: {len(files)} CT instances 512x512, {raw / 1e6:.1f} MB raw; link "
        f"{link.bandwidth_bps / 1e6:g} Mbit/s each way, {link.latency_s * 1e3:g} ms one-way "
        f"latency, stalls p={link.stall_probability:g} per 16 KiB chunk of "
        f"{link.stall_seconds[0] * 1e3:g}-{link.stall_seconds[1] * 1e3:g} ms (seed {link.seed})",
        f"gateway: telerad gateway, stable_seconds={args.stable_seconds:g}, other settings "
        "default (parallel 3, batch 4 MiB, backoff 1 s doubling, cap 300 s); centre: telerad "
        "serve --no-gateway; client: dcmtk storescu (TCP_NODELAY=1), one association",
        f"raw transfer time at link speed: {raw * 8 / link.bandwidth_bps:.1f} s; "
        f"{os.cpu_count()} CPUs, load average before/after: {args.load_before} / {load_average()}",
        f"complete = {runs[0].criterion}",
        "runs one after another, fresh centre, proxy and gateway each"
        + (
            "; the 'none' baseline alongside them on its own link (see --sequential)"
            if not args.sequential and "none" in args.runs and len(args.runs) > 1
            else ""
        ),
        "",
        table(runs, link),
    ]
    cut = next((r for r in runs if r.cut_at_s is not None), None)
    if cut is not None:
        reference = next((r for r in runs if r.cut_at_s is None and r.wire == cut.wire), None)
        head += ["", *cut_lines(cut, reference)]
    notes = [f"note ({r.name}): {n}" for r in runs for n in r.notes]
    return "\n".join(head + (["", *notes] if notes else []))


# --- entry point ------------------------------------------------------------------------------

RUN_NAMES = ("none", "gzip", "lossless", "cut")


def plans(args: argparse.Namespace) -> list[Plan]:
    return [
        Plan(name, "lossless", args.cut_seconds) if name == "cut" else Plan(name, name)
        for name in args.runs
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="instances (512x512 CT)")
    parser.add_argument("--runs", default=",".join(RUN_NAMES), help="which runs, in order")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run the 'none' baseline on its own too (about 2 more minutes)",
    )
    parser.add_argument("--bandwidth-mbit", type=float, default=10.0)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="one way")
    parser.add_argument("--stall-probability", type=float, default=0.002, help="per 16 KiB chunk")
    parser.add_argument("--stall-ms", type=float, nargs=2, default=(50.0, 300.0))
    parser.add_argument("--stable-seconds", type=float, default=2.0)
    parser.add_argument("--cut-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1, help="the stalls' random seed")
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := set(args.runs) - set(RUN_NAMES):
        parser.error(f"unknown runs: {', '.join(sorted(unknown))}")
    args.link = Link(
        args.bandwidth_mbit * 1e6, args.latency_ms / 1e3, args.stall_probability,
        (args.stall_ms[0] / 1e3, args.stall_ms[1] / 1e3), args.seed,
    )  # fmt: skip
    return args


class Background:
    """One run in a thread (the link-bound 'none' baseline, next to the others)."""

    def __init__(self, plan: Plan, files: Sequence[Path], args: argparse.Namespace) -> None:
        self.signals = Signals()
        self.result: WanRun | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(plan, files, args), name=f"wan-{plan.name}", daemon=True
        )
        self._thread.start()

    def _run(self, plan: Plan, files: Sequence[Path], args: argparse.Namespace) -> None:
        try:
            self.result = run_once(plan, files, args, self.signals)
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            self.signals.sent.set()

    def wait_sent(self) -> None:
        """Until its storescu is done (so the next run's storescu does not compete)."""
        while not self.signals.sent.wait(0.2):
            pass

    def join(self, stop: bool = False) -> WanRun:
        if stop:
            self.signals.stop.set()
        while self._thread.is_alive():
            self._thread.join(0.2)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def run_all(files: Sequence[Path], args: argparse.Namespace) -> list[WanRun]:
    """Every planned run; the 'none' baseline in the background unless ``--sequential``."""
    todo = plans(args)
    background = None
    if not args.sequential and len(todo) > 1 and any(p.name == "none" for p in todo):
        background = Background(next(p for p in todo if p.name == "none"), files, args)
        todo = [p for p in todo if p.name != "none"]
        background.wait_sent()
    results: dict[str, WanRun] = {}
    try:
        for plan in todo:
            started = time.perf_counter()
            results[plan.name] = run_once(plan, files, args, Signals())
            print(f"[{plan.name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr)
        if background is not None:
            results["none"] = background.join()
            background = None
    finally:
        if background is not None:
            with contextlib.suppress(BaseException):
                background.join(stop=True)
    return [results[name] for name in args.runs]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-wan-ct-") as tmp:
            args.load_before = load_average()
            files = write_ct_study(Path(tmp) / "ct", slices=args.slices, seed=1)
            runs = run_all(files, args)
            print(report(runs, files, args), flush=True)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
