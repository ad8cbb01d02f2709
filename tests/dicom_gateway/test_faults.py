"""Faults at the county gateway, with real processes, sockets and disks.

The promise under test (:mod:`telerad.dicom_gateway.outbox`): an instance acknowledged to a
modality (C-STORE status 0x0000) reaches the centre, exactly once and unchanged, whatever
happens to the gateway process, the WAN or the spool disk; what the gateway cannot keep it
refuses whole, with a status, and leaves nothing behind.

- SIGKILL of ``telerad gateway`` while it receives, and while it forwards (20 rounds each);
- the centre unreachable: connections reset, then packets dropped (:class:`TcpProxy`);
- the spool disk below its watermark, and really full (a 2 MiB tmpfs);
- truncated and malformed C-STORE data sets, and PDUs cut off mid-way.

The SIGKILL tests print their figures (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from telerad.demo import write_ct_study
from telerad.dicom_gateway import Gateway
from telerad.dicom_gateway.scp import FastAssociationServer
from telerad.settings import GatewaySettings
from telerad.storage import IngestSource, Site
from tests.conftest import catalog_url
from tests.dicom_gateway.conftest import (
    Centre,
    free_port,
    gateway_settings,
    live_centre,
    running_gateway,
    wait_for,
)
from tests.dicom_gateway.processes import (
    SUCCESS,
    GatewayProcess,
    centre_complete,
    centre_view,
    dataset_sha256,
    outbox_rows,
    outbox_studies,
    sop_instance_uid,
    spool_files,
    start_storescu,
    store_statuses,
    storescu,
    wait_for_responses,
)
from tests.tcpproxy import TcpProxy

ROUNDS = 20
SLICES = 300
#: Instances of a study still to send when a kill during ingest is aimed (see the test).
KILL_MARGIN = 20
#: Extra rounds allowed for kills that land after the send ended (the test process stalled
#: for longer than KILL_MARGIN instances take): such a round tests nothing and is done again.
SPARE_ROUNDS = 5
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Study:
    """A synthetic CT study on disk, with what the centre must end up holding for it."""

    uid: str
    files: list[Path]
    uids: dict[Path, str]  # file → SOP Instance UID
    datasets: dict[str, str]  # SOP Instance UID → SHA-256 of its data set


def ct_study(directory: Path, seed: int, slices: int = SLICES) -> Study:
    """A CT of ``slices`` 128² slices (the 512² size is for the benchmarks); UIDs from ``seed``."""
    files = write_ct_study(directory / f"ct-{seed}", slices=slices, rows=128, columns=128,
                           seed=seed)  # fmt: skip
    uids = {path: sop_instance_uid(path) for path in files}
    datasets = {uids[path]: dataset_sha256(path.read_bytes()) for path in files}
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return Study(study_uid, files, uids, datasets)


@dataclass
class Audit:
    """Lost and duplicated instances, counted over the gateway's outbox and the centre."""

    lost: list[str]
    duplicates: int
    changed: list[str]
    not_confirmed: int
    stray_spool_files: int

    def summary(self) -> str:
        return (
            f"lost={len(self.lost)} duplicates={self.duplicates} changed={len(self.changed)} "
            f"unconfirmed={self.not_confirmed} stray_spool_files={self.stray_spool_files}"
        )


def audit(centre: Centre, gateway_dir: Path, studies: list[Study], acked: set[str]) -> Audit:
    """Compare the centre and the outbox with the studies sent and the instances acknowledged.

    ``lost``: acknowledged, yet not at the centre. ``duplicates``: outbox rows beyond one per
    SOP Instance UID, centre rows beyond one per UID, copies the centre refused as conflicts,
    and objects no centre row refers to. ``changed``: at the centre with another data set than
    the modality's file, or with bytes whose hash is not the one catalogued and forwarded.
    """
    view = centre_view(centre.services)
    rows = outbox_rows(gateway_dir)
    outbox_hash = {row["sop_instance_uid"]: row["sha256"] for row in rows}
    per_uid = Counter(row["sop_instance_uid"] for row in rows)
    duplicates = (
        sum(n - 1 for n in per_uid.values())
        + sum(n - 1 for n in view.rows_per_uid.values())
        + view.rejected
        + view.unreferenced_objects
    )
    changed = []
    for study in studies:
        for uid, expected in study.datasets.items():
            if uid not in view.instances:
                continue
            _, sha256, key = view.instances[uid]
            data = centre.services.objects.get(key)
            stored_hash = hashlib.sha256(data).hexdigest()
            if (dataset_sha256(data), stored_hash, outbox_hash.get(uid)) != (
                expected, sha256, sha256
            ):  # fmt: skip
                changed.append(uid)
    referenced = {row["path"] for row in rows}
    return Audit(
        lost=sorted(uid for uid in acked if uid not in view.instances),
        duplicates=duplicates,
        changed=changed,
        not_confirmed=sum(row["state"] != "confirmed" for row in rows),
        stray_spool_files=len(spool_files(gateway_dir) - referenced),
    )


def wait_until_complete(
    centre: Centre, gateway_dir: Path, studies: list[Study], timeout: float
) -> None:
    """Every study complete at the centre (its manifest fulfilled) and in the outbox."""

    def done() -> bool:
        states = outbox_studies(gateway_dir)
        return all(
            states.get(s.uid) == "complete"
            and centre_complete(centre.services, s.uid, len(s.files))
            for s in studies
        )

    wait_for(done, timeout=timeout, interval=0.5)


def proxy_url(proxy: TcpProxy) -> str:
    return "http://{}:{}".format(*proxy.address)


# -- 1. SIGKILL while receiving --------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_ingest_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Each round: storescu sends a new 300-slice CT, the gateway is SIGKILLed at a random
    moment of the send (after a random number of responses, plus a random fraction of the time
    one instance takes) and restarted, and the modality sends again what it was not told is
    stored (every fourth round the whole study, as some modalities do). The gateway runs as
    installed, with its default extra SCP process, which must die with it. At the end every
    instance acknowledged before a kill is at the centre once, unchanged, and every study is
    complete. A kill that lands after the send has ended (the test process stalled) does not
    count: that round is done again with another study, at most SPARE_ROUNDS times."""
    rng = random.Random(20241124)
    acked_before_kill: set[str] = set()
    cut_short = resent_files = missed = 0
    per_round: list[int] = []
    started = time.monotonic()
    with (
        ThreadPoolExecutor(1) as writer,  # writes the next studies while the first rounds run
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path) as centre,
        GatewayProcess(tmp_path / "gw", centre.url, centre.site_token, free_port()) as gateway,
    ):
        pending = [writer.submit(ct_study, tmp_path, seed) for seed in range(ROUNDS + 1)]
        warm_up = pending[0].result()  # study 0 times an uninterrupted send
        gateway.start()
        t0 = time.monotonic()
        sent = storescu(gateway.dicom_port, warm_up.files)
        send_seconds = time.monotonic() - t0
        assert sent.acknowledged == set(warm_up.files), sent.log[-3000:]
        number = 0
        while cut_short < ROUNDS and missed <= SPARE_ROUNDS:
            number += 1
            study = pending[number].result()
            log_path = tmp_path / f"storescu-{number}.log"
            with log_path.open("wb") as log:
                sender = start_storescu(gateway.dicom_port, study.files, log)
                # Kill after a random number of responses, but never so late that the send
                # could finish first (the log is followed by polling, and a fast send answers
                # several instances between two polls): KILL_MARGIN instances stay unsent.
                wait_for_responses(log_path, rng.randrange(len(study.files) - KILL_MARGIN), sender)
                time.sleep(rng.uniform(0.0, 2 * send_seconds / len(study.files)))
                gateway.kill()
                sender.wait(timeout=60)
            assert not gateway.listening(), "a process of the killed gateway still listens"
            statuses = store_statuses(log_path.read_text(errors="replace"))
            acked = {p for p, status in statuses.items() if status == SUCCESS}
            acked_before_kill |= {study.uids[p] for p in acked}
            per_round.append(len(acked))
            if len(acked) < len(study.files):
                cut_short += 1
            else:  # the kill came too late: this round tested nothing, do another one
                missed += 1
                if missed <= SPARE_ROUNDS:
                    pending.append(writer.submit(ct_study, tmp_path, len(pending)))
            gateway.start()
            again = study.files if number % 4 == 0 else [p for p in study.files if p not in acked]
            resent = storescu(gateway.dicom_port, again)
            assert resent.acknowledged == set(again), resent.log[-3000:]
            resent_files += len(again)
        rounds_done = time.monotonic()
        studies = [future.result() for future in pending]
        wait_until_complete(centre, gateway.gateway_dir, studies, timeout=180)
        result = audit(centre, gateway.gateway_dir, studies, acked_before_kill)
        gateway.stop()
    print(
        f"\nSIGKILL during ingest: rounds={number} kills={number} "
        f"sends cut short by the kill={cut_short} (kills after the send ended: {missed}) "
        f"acknowledged before kill={len(acked_before_kill)} (per round {per_round}) "
        f"re-sent={resent_files} instances={sum(len(s.files) for s in studies)} "
        f"{result.summary()} send time={send_seconds:.2f}s "
        f"rounds={rounds_done - started:.0f}s total={time.monotonic() - started:.0f}s"
    )
    assert cut_short == ROUNDS, f"only {cut_short} kills landed while storescu was sending"
    assert result.lost == []
    assert result.duplicates == 0
    assert result.changed == []
    assert result.not_confirmed == 0
    assert result.stray_spool_files == 0


# -- 2. SIGKILL while forwarding -------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_forwarding_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Two 300-slice CTs are received whole, then forwarded over a 10 Mbit/s link in small
    batches; the gateway is SIGKILLed at a random moment of each life, 20 times, with STOW-RS
    requests in flight. Rows left ``sending`` and instances the centre stored but the gateway
    never heard back about are sent again; nothing may be lost or stored twice."""
    rng = random.Random(4242)
    studies = [ct_study(tmp_path, seed) for seed in (101, 102)]
    files = [path for study in studies for path in study.files]
    in_flight = in_doubt = kills_mid_request = 0
    started = time.monotonic()
    with (
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path) as centre,
        TcpProxy("127.0.0.1", centre.port, bandwidth_bps=10e6, latency_s=0.01, seed=7) as proxy,
        GatewayProcess(
            tmp_path / "gw", proxy_url(proxy), centre.site_token, free_port(),
            settings={"TELERAD_GATEWAY__BATCH_BYTES": str(256 * 1024)},
        ) as gateway,
    ):  # fmt: skip
        gateway.start()
        received = storescu(gateway.dicom_port, files)
        assert received.acknowledged == set(files), received.log[-3000:]
        ingested = time.monotonic()
        for number in range(ROUNDS):
            if number:
                gateway.start()
            time.sleep(rng.uniform(0.1, 1.0))
            gateway.kill()
            assert not gateway.listening(), "a process of the killed gateway still listens"
            rows = outbox_rows(gateway.gateway_dir)
            at_centre = set(centre_view(centre.services).instances)
            sending = sum(row["state"] == "sending" for row in rows)
            in_flight += sending
            kills_mid_request += sending > 0
            in_doubt += sum(
                row["state"] != "confirmed" and row["sop_instance_uid"] in at_centre for row in rows
            )
        confirmed_after_kills = sum(
            r["state"] == "confirmed" for r in outbox_rows(gateway.gateway_dir)
        )
        rounds_done = time.monotonic()
        gateway.start()
        wait_until_complete(centre, gateway.gateway_dir, studies, timeout=180)
        acked = {study.uids[path] for study in studies for path in study.files}
        result = audit(centre, gateway.gateway_dir, studies, acked)
        gateway.stop()
    print(
        f"\nSIGKILL during forwarding: rounds={ROUNDS} kills={ROUNDS} "
        f"kills with STOW requests in flight={kills_mid_request} rows in flight={in_flight} "
        f"stored at the centre but unconfirmed at the kill={in_doubt} "
        f"confirmed when the kills ended={confirmed_after_kills}/{len(files)} "
        f"acknowledged={len(acked)} {result.summary()} "
        f"wan bytes up={proxy.bytes_up} ingest={ingested - started:.0f}s "
        f"rounds={rounds_done - ingested:.0f}s total={time.monotonic() - started:.0f}s"
    )
    assert kills_mid_request >= ROUNDS // 2, "most kills should land mid-request"
    assert result.lost == []
    assert result.duplicates == 0
    assert result.changed == []
    assert result.not_confirmed == 0
    assert result.stray_spool_files == 0


# -- 3. The centre unreachable ---------------------------------------------------------------


def test_centre_unreachable_then_back_everything_arrives(tmp_path: Path) -> None:
    """While a study is forwarded over a 16 Mbit/s link, the link is reset for 3 s, then
    black-holed for 4 s. The modality is not affected, everything arrives, the study is
    complete, and the default ``max_attempts`` dead-letters nothing."""
    study = ct_study(tmp_path, 300)
    defaults = GatewaySettings()
    with (
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path) as centre,
        TcpProxy("127.0.0.1", centre.port, bandwidth_bps=16e6, seed=3) as proxy,
    ):
        # the default retry budget and base delay; only the cap is lowered, so that the test
        # does not wait minutes for the last retry after the link is back
        settings = gateway_settings(
            tmp_path / "gw", backoff_seconds=defaults.backoff_seconds, backoff_max_seconds=2.0
        )
        assert settings.gateway.max_attempts == defaults.max_attempts
        with running_gateway(settings, proxy_url(proxy), centre.site_token) as gateway:
            log_path = tmp_path / "storescu.log"
            with log_path.open("wb") as log:
                sender = start_storescu(gateway.dicom_port, study.files, log)
                wait_for(lambda: proxy.bytes_up > 1_000_000, timeout=30, interval=0.02)
                proxy.cut("reset")
                time.sleep(3)
                proxy.restore()
                resumed_from = proxy.bytes_up
                wait_for(lambda: proxy.bytes_up > resumed_from + 1_000_000, timeout=30,
                         interval=0.02)  # fmt: skip
                proxy.cut("blackhole")
                time.sleep(4)
                proxy.restore()
                assert sender.wait(timeout=60) == 0
            statuses = store_statuses(log_path.read_text(errors="replace"))
            assert statuses == dict.fromkeys(study.files, SUCCESS)  # the WAN is not the modality's
            wait_until_complete(centre, settings.gateway_path, [study], timeout=60)
            rows = outbox_rows(settings.gateway_path)
            result = audit(centre, settings.gateway_path, [study], set(study.uids.values()))
    attempts = [row["attempts"] for row in rows]
    print(
        f"\ncentre unreachable: failed attempts total={sum(attempts)} max per instance="
        f"{max(attempts)} of max_attempts={defaults.max_attempts} {result.summary()}"
    )
    assert sum(attempts) > 0, "the outage was not felt: the test proves nothing"
    assert max(attempts) < defaults.max_attempts
    assert {row["state"] for row in rows} == {"confirmed"}
    assert (result.lost, result.duplicates, result.changed) == ([], 0, [])


def test_outage_longer_than_the_retry_budget_dead_letters_nothing(tmp_path: Path) -> None:
    """Connection failures say nothing about the instances: even with max_attempts=1, an
    outage only delays them; after it everything the modality was told is stored arrives."""
    study = ct_study(tmp_path, 310, slices=10)
    with (
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path) as centre,
        TcpProxy("127.0.0.1", centre.port) as proxy,
    ):
        settings = gateway_settings(tmp_path / "gw", max_attempts=1)
        with running_gateway(settings, proxy_url(proxy), centre.site_token) as gateway:
            proxy.cut("reset")
            sent = storescu(gateway.dicom_port, study.files)
            assert sent.acknowledged == set(study.files)
            wait_for(lambda: max(i.attempts for i in gateway.outbox.items(study.uid)) >= 2)
            assert gateway.outbox.counts()["dead"] == 0
            proxy.restore()
            progress = wait_for(lambda: (p := gateway.outbox.progress(study.uid)[0]).complete
                                and p, timeout=60)  # fmt: skip
            at_centre = centre_complete(centre.services, study.uid)
    assert (progress.confirmed, progress.dead) == (10, 0)
    assert at_centre


def test_refused_instance_keeps_its_study_incomplete(tmp_path: Path) -> None:
    """The centre refuses one instance for good (it holds other content under its UID): that
    instance is dead-lettered, and the study is called complete neither at the gateway nor at
    the centre, because the modality was told it is stored."""
    study = ct_study(tmp_path, 320, slices=6)
    with (
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path) as centre,
    ):
        other = pydicom.dcmread(study.files[0])
        other.SeriesDescription = "another content, same SOP Instance UID"
        buffer = io.BytesIO()
        other.save_as(buffer, enforce_file_format=True)
        with centre.services.sessions() as session:
            site = session.scalar(select(Site).where(Site.name == "county1"))
            source = IngestSource(site.id, site.issuer_of_patient_id, "test")
        centre.services.archive.ingest_instance(buffer.getvalue(), source)
        with running_gateway(
            gateway_settings(tmp_path / "gw"), centre.url, centre.site_token
        ) as gateway:
            assert storescu(gateway.dicom_port, study.files).acknowledged == set(study.files)
            wait_for(lambda: gateway.outbox.counts()["confirmed"] == 5)
            wait_for(lambda: gateway.outbox.counts()["dead"] == 1)
            time.sleep(gateway.settings.gateway.stable_seconds + 2)  # a manifest would be due
            progress = gateway.outbox.progress(study.uid)[0]
            at_centre = centre_complete(centre.services, study.uid)
    assert progress.dead == 1 and "0x0111" in (progress.last_error or "")
    assert progress.manifest_at is None and not progress.complete
    assert not at_centre


# -- 4. The spool disk full ------------------------------------------------------------------


def test_spool_below_watermark_refuses_every_instance(tmp_path: Path) -> None:
    """TELERAD_GATEWAY__MIN_FREE_BYTES above the free space: 0xA700 for every instance, and
    nothing is written (no spool file, no outbox row)."""
    study = ct_study(tmp_path, 400, slices=10)
    watermark = shutil.disk_usage(tmp_path).free + 2**30
    with GatewayProcess(
        tmp_path / "gw", "http://127.0.0.1:9", "token", free_port(),
        settings={"TELERAD_GATEWAY__MIN_FREE_BYTES": str(watermark)},
    ) as gateway:  # fmt: skip
        gateway.start()
        every = storescu(gateway.dicom_port, study.files, halt=False)
        halted = storescu(gateway.dicom_port, study.files)
        gateway.stop()
    assert every.statuses == dict.fromkeys(study.files, 0xA700), every.log[-3000:]
    assert halted.returncode != 0  # storescu's default: stop at the first refusal, and fail
    assert halted.statuses == {study.files[0]: 0xA700}
    assert spool_files(gateway.gateway_dir) == set()
    assert outbox_rows(gateway.gateway_dir) == []
    assert outbox_studies(gateway.gateway_dir) == {}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root; skipped where mounting is not permitted)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_spool_disk_full_refuses_what_does_not_fit(tmp_path: Path, small_disk: Path) -> None:
    """A real ENOSPC: 100 instances of 34 KB into a 2 MiB spool with no watermark. What fits is
    acknowledged and intact; the rest is refused with 0xA700 and leaves no partial file."""
    study = ct_study(tmp_path, 500, slices=100)
    with GatewayProcess(
        tmp_path / "gw", "http://127.0.0.1:9", "token", free_port(),  # the WAN is down too
        settings={"TELERAD_GATEWAY__SPOOL_PATH": str(small_disk),
                  "TELERAD_GATEWAY__MIN_FREE_BYTES": "0"},
    ) as gateway:  # fmt: skip
        gateway.start()
        run = storescu(gateway.dicom_port, study.files, halt=False)
        gateway.kill()  # a crash on a full disk, too: nothing may depend on a clean stop
    stored = {study.uids[p] for p, s in run.statuses.items() if s == SUCCESS}
    refused = {p: s for p, s in run.statuses.items() if s != SUCCESS}
    rows = outbox_rows(small_disk)
    print(f"\ndisk full: stored={len(stored)} refused={Counter(map(hex, refused.values()))}")
    assert set(run.statuses) == set(study.files), run.log[-3000:]
    assert stored and refused, "the disk should fill part-way through the study"
    # Refused: Out of Resources (PS3.4 Table B.2-1): 0xA700 when the spool file does not fit,
    # 0xA701 when the file fitted but the outbox commit then found the disk full.
    assert 0xA700 in refused.values()
    assert all(0xA700 <= status <= 0xA7FF for status in refused.values())
    assert {row["sop_instance_uid"] for row in rows} == stored
    assert len(rows) == len(stored)
    assert spool_files(small_disk) == {row["path"] for row in rows}  # no partial file
    for row in rows:
        data = (small_disk / "spool" / row["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (row["size"], row["sha256"])
        assert dataset_sha256(data) == study.datasets[row["sop_instance_uid"]]


# -- 5. Truncated and malformed data streams -------------------------------------------------


@dataclass
class Target:
    """An in-process gateway for the stream tests, and the good instances it holds so far."""

    gateway: Gateway
    study: Study
    sent: set[str]
    unused: list[Path]

    def take(self, count: int) -> list[Path]:
        """Files of the study not sent yet."""
        taken, self.unused[:count] = self.unused[:count], []
        assert len(taken) == count, "the stream tests need a larger study"
        return taken

    def assert_serving_and_clean(self, batch: list[Path]) -> None:
        """A normal storescu send succeeds; the outbox holds exactly the good instances and the
        spool exactly their files."""
        run = storescu(self.gateway.dicom_port, batch)
        assert run.statuses == dict.fromkeys(batch, SUCCESS), run.log[-3000:]
        self.sent |= {self.study.uids[p] for p in batch}
        directory = self.gateway.directory
        rows = outbox_rows(directory)
        assert {row["sop_instance_uid"] for row in rows} == self.sent
        assert len(rows) == len(self.sent)
        assert spool_files(directory) == {row["path"] for row in rows}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One gateway for the stream tests (each checks it is still clean and serving)."""
    directory = tmp_path_factory.mktemp("streams")
    study = ct_study(directory, 600, slices=40)
    with (
        catalog_url("sqlite", directory) as url,
        live_centre(url, directory) as centre,
        running_gateway(gateway_settings(directory / "gw"), centre.url, centre.site_token) as gw,
    ):
        yield Target(gw, study, set(), list(study.files))


def _meta_and_dataset(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    _, offset = split_dataset(path)
    return data[:offset], data[offset:]


def _malformed(kind: str, one: Path, other: Path) -> bytes:
    meta, dataset = _meta_and_dataset(one)
    return {
        "pixel data cut short": meta + dataset[: len(dataset) * 6 // 10],
        "cut inside the header": meta + dataset[:200],
        "garbage after the File Meta": meta + random.Random(1).randbytes(5000),
        "zeros after the File Meta": meta + bytes(3000),
        "no data set": meta,
        "another instance's data set": meta + _meta_and_dataset(other)[1],
    }[kind]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("pixel data cut short", 0xC000),
        ("cut inside the header", 0xC000),
        ("garbage after the File Meta", 0xC000),
        ("zeros after the File Meta", 0xC000),
        ("no data set", 0xC000),
        ("another instance's data set", 0xA900),
    ],
)
def test_malformed_data_set_is_refused_and_leaves_nothing(
    target: Target, kind: str, status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom streams the file's bytes after its File Meta as they are (no re-encoding),
    so the SCP receives exactly the broken data set."""
    one, other = target.take(2)
    path = tmp_path / "broken.dcm"
    path.write_bytes(_malformed(kind, one, other))
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LITTLE_ENDIAN)
    assoc = ae.associate("127.0.0.1", target.gateway.dicom_port, ae_title="GATEWAY")
    assert assoc.is_established
    try:
        started = time.monotonic()
        answer = assoc.send_c_store(path)
        elapsed = time.monotonic() - started
    finally:
        assoc.release()
    assert answer.Status == status, getattr(answer, "ErrorComment", "")
    assert elapsed < 5
    target.assert_serving_and_clean([one, other])


def _p_data_tf(context_id: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV item of data set bytes, not the last fragment
    (PS3.8 §9.3.5 and Annex E.2: message control header 0x00)."""
    item = struct.pack(">LBB", len(fragment) + 2, context_id, 0x00) + fragment
    return struct.pack(">BBL", 0x04, 0x00, len(item)) + item


def _half_a_pdu(assoc: Association, dataset: bytes) -> bytes:
    """The first half of a P-DATA-TF carrying 20 000 data set bytes on the accepted context."""
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    pdu = _p_data_tf(context_id, dataset[:20000])
    return pdu[: len(pdu) // 2]


def _raw_socket(assoc: Association) -> socket.socket:
    """The association's TCP socket, to write what pynetdicom never would."""
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    return assoc.dul.socket.socket


def _associate(port: int) -> Association:
    """An association whose requestor never times out, so only the SCP can end it."""
    ae = AE(ae_title="CT1")
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = None
    ae.add_requested_context(CTImageStorage, EXPLICIT_VR_LITTLE_ENDIAN)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY")
    assert assoc.is_established
    return assoc


def test_half_a_pdu_then_close_ends_the_association_at_once(target: Target) -> None:
    """Associated, half a P-DATA-TF, then the connection closes: the SCP ends the association
    within seconds and keeps serving."""
    server = target.gateway.server
    assert server is not None
    before = set(server.active_associations)
    assoc = _associate(target.gateway.dicom_port)
    (ours,) = set(server.active_associations) - before
    _, dataset = _meta_and_dataset(target.study.files[-1])
    sock = _raw_socket(assoc)
    sock.sendall(_half_a_pdu(assoc, dataset))
    sock.shutdown(socket.SHUT_RDWR)
    ours.join(timeout=5)
    assert not ours.is_alive()
    target.assert_serving_and_clean(target.take(2))


@dataclass
class Peer:
    """A peer that stopped mid-PDU, and when the SCP's thread for it ended."""

    started: float
    acceptor: Association | None
    ended: float | None = None

    def watch(self) -> None:
        """Record when the acceptor thread ends (in a thread of its own)."""
        if self.acceptor is None:  # already gone before it could be seen
            self.ended = self.started
            return
        self.acceptor.join()
        self.ended = time.monotonic()

    def ended_within(self, seconds: float) -> bool:
        """Wait until ``started + seconds``; did the SCP's thread end by then?"""
        if self.acceptor is not None:
            self.acceptor.join(timeout=max(0.0, self.started + seconds - time.monotonic()))
        time.sleep(0.05)  # let watch() record the time
        return self.ended is not None and self.ended - self.started <= seconds


@dataclass
class SilentPeers:
    """A gateway, and two peers that went silent halfway through a P-DATA-TF PDU."""

    gateway: Gateway
    study: Study
    vanished: Peer  # before associating; then it closed the connection
    stalled: Peer  # associated; then nothing, the connection stays open
    acse_timeout: float
    network_timeout: float


def _new_acceptor(server: FastAssociationServer, before: set[Association]) -> Association | None:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if new := set(server.active_associations) - before:
            return new.pop()
        time.sleep(0.01)
    return None


@pytest.fixture(scope="module", autouse=True)
def silent_peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SilentPeers]:
    """Started first in this module, with short SCP timeouts (ACSE 5 s, network 10 s), so they
    run out while the other tests run; each peer's deadline is counted from the moment it went
    silent."""
    directory = tmp_path_factory.mktemp("silent")
    study = ct_study(directory, 900, slices=2)
    _, dataset = _meta_and_dataset(study.files[0])
    with (
        catalog_url("sqlite", directory) as url,
        live_centre(url, directory) as centre,
        running_gateway(
            gateway_settings(directory / "gw", dicom={"acse_timeout": 5, "network_timeout": 10}),
            centre.url, centre.site_token,
        ) as gw,
    ):  # fmt: skip
        server = gw.server
        assert server is not None
        before = set(server.active_associations)
        raw = socket.create_connection(("127.0.0.1", gw.dicom_port))
        raw.sendall(_p_data_tf(1, dataset[:20000])[:10010])  # no association: any context ID
        raw.close()
        vanished = Peer(time.monotonic(), _new_acceptor(server, before))
        before = set(server.active_associations)
        assoc = _associate(gw.dicom_port)
        sock = _raw_socket(assoc)
        sock.sendall(_half_a_pdu(assoc, dataset))
        stalled = Peer(time.monotonic(), _new_acceptor(server, before))
        assert stalled.acceptor is not None
        for peer in (vanished, stalled):
            threading.Thread(target=peer.watch, daemon=True).start()
        acse_timeout, network_timeout = server.ae.acse_timeout, server.ae.network_timeout
        assert acse_timeout is not None and network_timeout is not None
        try:
            yield SilentPeers(gw, study, vanished, stalled, acse_timeout, network_timeout)
        finally:
            sock.close()  # ends the stalled association whatever the SCP did


def test_half_a_pdu_then_close_before_associating_is_dropped_within_the_acse_timeout(
    silent_peers: SilentPeers,
) -> None:
    """Connected, half a P-DATA-TF instead of an A-ASSOCIATE-RQ, closed: the SCP's thread for
    it ends within the ACSE timeout (ARTIM, PS3.8 §9.1.5), and the SCP keeps serving."""
    peers = silent_peers
    assert peers.vanished.ended_within(peers.acse_timeout + 5)
    assert peers.vanished.ended is not None
    print(f"\nvanished peer dropped after {peers.vanished.ended - peers.vanished.started:.1f} s")
    run = storescu(peers.gateway.dicom_port, peers.study.files[:1])
    assert run.acknowledged == set(peers.study.files[:1])


def test_half_a_pdu_then_silence_is_aborted_within_the_network_timeout(
    silent_peers: SilentPeers,
) -> None:
    """Associated, half a P-DATA-TF, then nothing (a modality powered off mid-send, a cable
    pulled: no FIN, no RST). The SCP must give up within its network timeout (60 s) and keep
    serving; otherwise 64 such peers refuse every modality."""
    peers = silent_peers
    run = storescu(peers.gateway.dicom_port, peers.study.files[1:])
    assert run.acknowledged == set(peers.study.files[1:])
    assert peers.stalled.ended_within(peers.network_timeout + 10), (
        f"the SCP still holds the stalled association {peers.network_timeout + 10:.0f} s on"
    )


def test_dropped_connections_do_not_lock_modalities_out(tmp_path: Path) -> None:
    """A burst of connections that send half a PDU and close (a port scan, a health check, a
    modality crashing and retrying) must not refuse the next modality for long: it gets in
    within the ACSE timeout (pynetdicom holds a vanished peer's slot that long) plus 5 s."""
    study = ct_study(tmp_path, 950, slices=1)
    _, dataset = _meta_and_dataset(study.files[0])
    with (
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path) as centre,
        running_gateway(gateway_settings(tmp_path / "gw"), centre.url, centre.site_token) as gw,
    ):
        assert gw.server is not None
        for _ in range(gw.server.ae.maximum_associations + 6):
            with socket.create_connection(("127.0.0.1", gw.dicom_port)) as raw:
                raw.sendall(_p_data_tf(1, dataset[:2000])[:1000])
        deadline = time.monotonic() + gw.server.ae.acse_timeout + 5
        while True:
            run = storescu(gw.dicom_port, study.files)
            if run.acknowledged or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert run.acknowledged == set(study.files), run.log[-1500:]
