"""Draining the outbox to the centre, and telling the centre when a study is whole.

:class:`Forwarder` runs ``parallel`` sender threads. Each leases a batch (one study, at most
``batch_bytes``, STAT/urgent studies first), prepares the wire form of each instance once
(:mod:`telerad.dicom_gateway.wire`, recorded in the outbox so a re-send after a restart sends the
very same bytes), and POSTs it with STOW-RS. The Referenced SOP Sequence confirms; the Failed SOP
Sequence and transport errors count an attempt with exponential backoff and full jitter
(``base · 2^attempts``, capped); refusals that cannot change (0xA900, 0xC000, 0x0111) and the
last allowed attempt dead-letter the instance.

While modalities are sending, routine forwarding yields to them: no batch is claimed until no
instance has arrived for ``yield_seconds`` (0.3 s), for at most ``yield_max_seconds`` (5 s)
after the oldest waiting instance arrived. Receiving, checking and fsyncing an instance is
what the modality waits for; a STOW-RS request to a centre on the same machine (``telerad
serve``) costs that centre several ms of CPU per instance, and with both on two cores the
modality's send took twice as long (``bench/ingest_dimse.py``: 110 against 222 instances/s
on one association). Over a WAN the wait is short beside the transfer: the time from the last
C-STORE to the study being complete at the centre went from 0.374 to 0.395 of the raw bytes'
time at link speed (``bench/wan.py``). Studies sent with HIGH priority (urgent, STAT) never
wait.

:class:`Completeness` posts a study's manifest once it has been quiet for ``stable_seconds``
and every instance is confirmed (or dead); instances the centre reports missing or different
are queued again, and the next manifest follows when they are confirmed.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence

from telerad.dicom_gateway.centre import TRANSIENT_REASONS, CentreClient
from telerad.dicom_gateway.errors import CentreError, CentreUnavailable
from telerad.dicom_gateway.outbox import ROUTINE, Outbox, OutboxItem
from telerad.dicom_gateway.spool import WIRE_SUFFIX, Spool
from telerad.dicom_gateway.wire import transcode_lossless
from telerad.settings import GatewaySettings

logger = logging.getLogger(__name__)
OUTAGE_PROBE_SECONDS = 10.0


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempts)] but at least
    ``base / 2``, so a failing centre is never hammered."""
    ceiling = min(cap, base * (2 ** min(attempts, 30)))
    return max(base / 2, rng.uniform(0, ceiling))


class Forwarder:
    """Sender threads draining the outbox with STOW-RS."""

    def __init__(
        self,
        outbox: Outbox,
        spool: Spool,
        client: CentreClient,
        settings: GatewaySettings,
        *,
        wire: str,
    ) -> None:
        self.outbox = outbox
        self.spool = spool
        self.client = client
        self.settings = settings
        self.wire = wire
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rng = random.Random()

    def start(self) -> None:
        """Start the sender threads."""
        for index in range(self.settings.parallel):
            thread = threading.Thread(target=self._run, name=f"forward-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop after the requests in flight (their rows stay leased until the lease ends)."""
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.request_timeout + 5)

    def yield_seconds(self, now: float | None = None) -> float:
        """How long forwarding should still wait for the modalities sending now (0: go)."""
        quiet, longest = self.settings.yield_seconds, self.settings.yield_max_seconds
        if quiet <= 0 or longest <= 0:
            return 0.0
        receiving = self.outbox.receiving()
        if receiving is None:
            return 0.0
        last_arrival, oldest_waiting, priority = receiving
        if priority > ROUTINE:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, min(last_arrival + quiet, oldest_waiting + longest) - now)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if (pause := self.yield_seconds()) > 0:
                    self._stop.wait(min(pause, 0.25))
                    continue
                batch = self.outbox.claim_batch(self.settings.batch_bytes)
            except Exception:
                logger.exception("cannot read the outbox")
                self._stop.wait(1.0)
                continue
            if not batch:
                self._idle()
                continue
            try:
                self.send(batch)
            except Exception:  # the spool or outbox failed under us: give the rows back
                logger.exception("forwarding a batch failed")
                self.outbox.release([item.id for item in batch])
                self._stop.wait(1.0)

    def _idle(self) -> None:
        due = self.outbox.next_wakeup()
        self.wake.wait(0.25 if due is None else min(max(due, 0.05), 0.25))
        self.wake.clear()

    def send(self, batch: Sequence[OutboxItem]) -> None:
        """Send one batch and record the outcome of every instance in it."""
        forms = [self._wire_form(item) for item in batch]
        parts = [data for data, _ in forms]
        gzip = self.wire == "gzip" or (
            self.wire == "lossless" and not all(transcoded for _, transcoded in forms)
        )
        try:
            outcome = self.client.store_instances(batch[0].study_uid, parts, gzip=gzip)
        except CentreUnavailable as exc:  # an outage: retried for as long as it lasts
            self._fail_all(batch, str(exc), counted=False)
            return
        except CentreError as exc:  # refused (token, request): counts toward dead-letter
            self._fail_all(batch, str(exc), counted=True)
            return
        share = outcome.wire_bytes // max(1, len(batch))
        confirmed = [(i.id, share) for i in batch if i.sop_instance_uid in outcome.stored]
        failures = [
            self._failure(item, outcome.failed.get(item.sop_instance_uid), outcome.warning, share)
            for item in batch
            if item.sop_instance_uid not in outcome.stored
        ]
        if confirmed:
            self.outbox.confirm(confirmed)
        if failures:
            self.outbox.fail(
                failures, max_attempts=self.settings.max_attempts, backoff=self._backoff(batch),
                counted=_counts(outcome.failed.values()),
            )  # fmt: skip
        logger.info(
            "forwarded %d of %d instances of a study (%d bytes on the wire)",
            len(confirmed), len(batch), outcome.wire_bytes,
        )  # fmt: skip

    def _wire_form(self, item: OutboxItem) -> tuple[bytes, bool]:
        """The bytes to send, and whether they are a transcoding: the recorded wire form, or
        prepared now and recorded before the first send."""
        if item.wire_sha256 is not None:
            return self.spool.read(item.wire_path or item.path), item.wire_path is not None
        data = self.spool.read(item.path)
        encoded = transcode_lossless(data, item.transfer_syntax_uid) if (
            self.wire == "lossless"
        ) else None  # fmt: skip
        if encoded is None:
            self.outbox.set_wire(item.id, None, item.sha256, item.size)
            return data, False
        wire_path = self.spool.write(encoded, suffix=WIRE_SUFFIX)
        self.outbox.set_wire(item.id, wire_path, hashlib.sha256(encoded).hexdigest(), len(encoded))
        return encoded, True

    def _failure(
        self, item: OutboxItem, reason: int | None, warning: str, sent: int
    ) -> tuple[int, str, bool, int]:
        if reason is None:
            return item.id, "the centre did not acknowledge the instance", False, sent
        permanent = reason not in TRANSIENT_REASONS
        detail = f"centre refused with {reason:#06x}" + (f": {warning[:200]}" if warning else "")
        return item.id, detail, permanent, sent

    def _fail_all(self, batch: Sequence[OutboxItem], error: str, *, counted: bool) -> None:
        logger.warning("forwarding %d instances failed: %s", len(batch), error)
        self.outbox.fail(
            [(item.id, error, False, 0) for item in batch],
            max_attempts=self.settings.max_attempts,
            # an unreachable centre is probed at least every OUTAGE_PROBE_SECONDS, so that
            # forwarding resumes soon after the link returns, however long it was down
            backoff=self._backoff(batch) if counted else min(
                self._backoff(batch), OUTAGE_PROBE_SECONDS
            ),
            counted=counted,
        )  # fmt: skip

    def _backoff(self, batch: Sequence[OutboxItem]) -> float:
        attempts = max(item.attempts for item in batch)
        return backoff_delay(
            attempts, self.settings.backoff_seconds, self.settings.backoff_max_seconds, self._rng
        )


def _counts(reasons: Iterable[int]) -> bool:
    """A centre out of resources (0xA7xx) is an outage, not a fault of the instances."""
    listed = list(reasons)
    return not listed or any(reason & 0xFF00 != 0xA700 for reason in listed)


class Completeness:
    """The manifest loop: edge stability → manifest → complete, or re-send what is missing;
    and retention: spooled files of complete studies are removed after ``retention_hours``."""

    def __init__(
        self,
        outbox: Outbox,
        client: CentreClient,
        settings: GatewaySettings,
        spool: Spool | None = None,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.settings = settings
        self.spool = spool
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    def start(self) -> None:
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._run, name="manifests", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.settings.request_timeout + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("manifest loop failed")
            self._stop.wait(min(1.0, self.settings.stable_seconds / 4))

    def run_once(self, now: float | None = None) -> int:
        """Post the manifest of every study that is due; returns how many were posted.
        Then remove spooled files past retention."""
        now = time.time() if now is None else now
        self.purge(now)
        studies = self.outbox.studies_due_for_manifest(self.settings.stable_seconds, now)
        for study_uid in studies:
            self.post(study_uid, now)
        return len(studies)

    def purge(self, now: float) -> int:
        """Delete spool files of studies complete for longer than ``retention_hours``."""
        if self.spool is None:
            return 0
        rows = self.outbox.purgeable(now - self.settings.retention_hours * 3600)
        for _, path, wire_path in rows:
            self.spool.remove(path)
            if wire_path:
                self.spool.remove(wire_path)
        if rows:
            self.outbox.mark_purged([item_id for item_id, _, _ in rows], now)
            logger.info("removed %d spooled instances past retention", len(rows))
        return len(rows)

    def post(self, study_uid: str, now: float) -> None:
        """Post one manifest and record the answer."""
        entries = self.outbox.manifest(study_uid)
        attempts = self.outbox.manifest_attempts(study_uid)
        retry_at = now + backoff_delay(
            attempts, self.settings.backoff_seconds, self.settings.backoff_max_seconds, self._rng
        )
        try:
            answer = self.client.put_manifest(study_uid, entries)
        except CentreError as exc:
            logger.warning("manifest of a study failed: %s", exc)
            self.outbox.manifest_failed(study_uid, str(exc), retry_at)
            return
        resend = [*answer.missing, *answer.mismatched]
        self.outbox.manifest_result(
            study_uid, complete=answer.complete, resend=resend, received=answer.received,
            expected=answer.expected, posted_at=now,
            error=None if answer.complete else f"centre lacks {len(resend)} instances",
            retry_at=0.0 if resend else retry_at,
        )  # fmt: skip
        logger.info(
            "manifest of %s: %d instances, centre holds %d, %s", study_uid, len(entries),
            answer.received, "complete" if answer.complete else f"{len(resend)} to re-send",
        )  # fmt: skip
