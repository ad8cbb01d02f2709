"""Storage Commitment Push Model (PS3.4 Annex J) with pynetdicom as the modality.

The gateway commits only instances the centre confirmed with the hash sent; a reference to an
instance never received fails with 0x0112. The reply comes on the open association, or on a
new association to the modality's configured address once the first has been released.
"""

from __future__ import annotations

import io
import queue
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from telerad.demo import ct_study_bytes
from tests.conftest import catalog_url
from tests.dicom_gateway.conftest import (
    free_port,
    gateway_settings,
    live_centre,
    running_gateway,
    wait_for,
)

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def _request(datasets: list[Dataset], extra_uid: str) -> Dataset:
    info = Dataset()
    info.TransactionUID = generate_uid()
    items = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    missing = Dataset()
    missing.ReferencedSOPClassUID = CTImageStorage
    missing.ReferencedSOPInstanceUID = extra_uid
    items.append(missing)
    info.ReferencedSOPSequence = DicomSequence(items)
    return info


def _check(report: Dataset, info: Dataset, datasets: list[Dataset], extra_uid: str) -> None:
    assert report.TransactionUID == info.TransactionUID
    committed = {item.ReferencedSOPInstanceUID for item in report.ReferencedSOPSequence}
    assert committed == {ds.SOPInstanceUID for ds in datasets}
    failed = {item.ReferencedSOPInstanceUID: item.FailureReason
              for item in report.FailedSOPSequence}  # fmt: skip
    assert failed == {extra_uid: 0x0112}


@pytest.mark.parametrize("same_association", [True, False], ids=["open", "new-association"])
def test_commitment_reports_only_what_the_centre_holds(
    same_association: bool, tmp_path: Path
) -> None:
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in ct_study_bytes(5, rows=64, columns=64)]
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    modality = AE(ae_title="CT1")
    modality.add_requested_context(CTImageStorage)
    modality.add_requested_context(StorageCommitmentPushModel)
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    modality_port = free_port()
    listener = modality.start_server(
        ("127.0.0.1", modality_port), block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )  # fmt: skip
    extra_uid = generate_uid()
    with (
        catalog_url("sqlite", tmp_path) as url,
        live_centre(url, tmp_path, modality_port=modality_port) as centre,
        running_gateway(gateway_settings(tmp_path / "gw"), centre.url, centre.site_token) as gw,
    ):
        association = modality.associate(
            "127.0.0.1", gw.dicom_port, ae_title="GATEWAY",
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        )  # fmt: skip
        assert association.is_established
        for ds in datasets:
            assert association.send_c_store(ds).Status == 0x0000
        info = _request(datasets, extra_uid)
        status, _ = association.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        if same_association:
            wait_for(lambda: not reports.empty(), timeout=30)
            association.release()
        else:
            association.release()
        event_type, report = reports.get(timeout=30)
        assert event_type == 2  # some failed (the instance never sent)
        _check(report, info, datasets, extra_uid)
        how = wait_for(lambda: gw.committer.sent)[0][2]
        assert how == ("same association" if same_association else "new association")
    listener.shutdown()


def test_commitment_request_without_references_is_refused(tmp_path: Path) -> None:
    with running_gateway(
        gateway_settings(tmp_path, modalities=[{"ae_title": "CT1"}]),
        f"http://127.0.0.1:{free_port()}", "trs_unused",
    ) as gw:  # fmt: skip
        modality = AE(ae_title="CT1")
        modality.add_requested_context(StorageCommitmentPushModel)
        association = modality.associate("127.0.0.1", gw.dicom_port, ae_title="GATEWAY")
        info = Dataset()
        info.TransactionUID = generate_uid()
        status, _ = association.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0115
        status, _ = association.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.3")
        assert status.Status == 0x0112
        association.release()
