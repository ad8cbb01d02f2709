"""Several SCP processes on one port: four parallel associations, every instance kept once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from telerad.demo import write_ct_study
from telerad.dicom_gateway.workers import SiteFile
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


def test_a_worker_judges_each_association_by_the_current_site_file(tmp_path: Path) -> None:
    """The main gateway writes ``site.json`` when it learns the site's modalities (at start,
    the centre may not answer yet). A worker re-reads it as each association is judged, not
    only every two seconds, so a modality just learnt of is not refused by one worker."""
    path = tmp_path / "site.json"
    site = SiteFile(path, gateway_settings(tmp_path / "gw"))
    assert site.policy.as_required_list() == [""]  # no file yet: nobody

    path.write_text(json.dumps({"modalities": [{"ae_title": "CT9"}], "accept_any_ae": False}))
    assert site.policy.as_required_list() == ["CT9"]

    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    path.write_text(json.dumps({"modalities": [], "accept_any_ae": True}))  # development mode
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 2_000_000_000))
    assert site.policy.as_required_list() == []  # any calling AE
