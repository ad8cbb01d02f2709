"""Sending instances to a DICOM SCP, as a modality does (``telerad demo --send``).

One association, the instances' own transfer syntaxes proposed (PS3.4 B.2 C-STORE), a progress
callback per instance. Files are sent as read: no decoding, no re-encoding.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom
from pynetdicom import AE

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendResult:
    """Per-status counts of a send."""

    sent: int
    statuses: dict[int, int]

    @property
    def ok(self) -> bool:
        """Every instance answered 0x0000."""
        return set(self.statuses) <= {0x0000}


def send_instances(
    instances: Sequence[bytes],
    host: str,
    port: int,
    *,
    called_ae: str = "TELERAD",
    calling_ae: str = "TELERAD-DEMO",
    progress: Callable[[int, int], None] | None = None,
) -> SendResult:
    """C-STORE every Part-10 instance over one association.

    Raises
    ------
    ConnectionError
        The association was rejected, aborted or never established.
    """
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in instances]
    ae = AE(ae_title=calling_ae)
    contexts = sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    association = ae.associate(host, port, ae_title=called_ae)
    if not association.is_established:
        raise ConnectionError(f"{called_ae} at {host}:{port} did not accept the association")
    statuses: dict[int, int] = {}
    try:
        for index, dataset in enumerate(datasets, start=1):
            status = association.send_c_store(dataset)
            code = int(status.Status) if status else -1
            statuses[code] = statuses.get(code, 0) + 1
            if progress:
                progress(index, len(datasets))
            if not association.is_established:
                raise ConnectionError("the association ended while sending")
    finally:
        if association.is_established:
            association.release()
    return SendResult(sent=len(datasets), statuses=statuses)
