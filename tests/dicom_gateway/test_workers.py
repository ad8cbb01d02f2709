"""Several SCP processes on one port: four parallel associations, every instance kept once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from telerad.demo import write_ct_study
from tests.dcmtk import dcmtk
from tests.dicom_gateway.conftest import free_port, gateway_settings, running_gateway


def test_two_scp_processes_share_the_port(tmp_path: Path) -> None:
    files = write_ct_study(tmp_path / "ct", slices=40, rows=64, columns=64)
    settings = gateway_settings(tmp_path / "gw", modalities=[{"ae_title": "CT1"}])
    settings = settings.model_copy(
        update={"dicom": settings.dicom.model_copy(update={"workers": 2})}
    )
    with running_gateway(settings, f"http://127.0.0.1:{free_port()}", "trs_unused") as gw:
        assert len(gw._workers) == 1 and gw._workers[0].is_alive()
        command = [dcmtk("storescu"), "-aet", "CT1", "-aec", "GATEWAY", "127.0.0.1"]
        senders = [
            subprocess.Popen(
                [*command, str(gw.dicom_port), *map(str, files[i::4])],
                env={"TCP_NODELAY": "1"},
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        for sender in senders:
            _, err = sender.communicate(timeout=120)
            assert sender.returncode == 0, err
        rejected = subprocess.run(
            [dcmtk("storescu"), "-aet", "INTRUDER", "-aec", "GATEWAY", "127.0.0.1",
             str(gw.dicom_port), str(files[0])],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert rejected.returncode != 0  # unknown calling AE: association rejected
        items = gw.outbox.items(gw.outbox.progress()[0].study_uid)
        workers = list(gw._workers)
    assert len(items) == 40
    assert len({i.sop_instance_uid for i in items}) == 40
    assert all(not w.is_alive() for w in workers)
