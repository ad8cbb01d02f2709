"""End to end: dcmtk storescu → our SCP → spool/outbox → STOW-RS → the centre's archive."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from telerad.demo import write_ct_study
from telerad.storage import Instance
from tests.conftest import catalog_url
from tests.dcmtk import dcmtk
from tests.dicom_gateway.conftest import (
    dataset_bytes,
    gateway_settings,
    live_centre,
    running_gateway,
    wait_for,
)


def storescu(
    port: int, files: list[Path], calling: str = "CT1"
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu, one association, every file; dcmtk 3.6.7 has no ``+nodelay`` option and
    takes TCP_NODELAY from the environment instead."""
    return subprocess.run(
        [dcmtk("storescu"), "-aet", calling, "-aec", "GATEWAY", "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=120, env={"TCP_NODELAY": "1"},
    )  # fmt: skip


def centre_hashes(services, study_uid: str) -> dict[str, str]:
    from telerad.storage import Series, Study

    with services.sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.sha256)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_uid == study_uid)
        ).all()
    return dict(rows)


def centre_objects(services, hashes: dict[str, str]) -> list[bytes]:
    """The stored objects of these instances, read back from the centre's object store."""
    with services.sessions() as session:
        keys = session.scalars(
            select(Instance.object_key).where(Instance.sop_instance_uid.in_(list(hashes)))
        ).all()
    return [services.objects.get(key) for key in keys]


@pytest.mark.parametrize("kind", ["sqlite"])
def test_storescu_study_reaches_the_centre_unchanged(kind: str, tmp_path: Path) -> None:
    files = write_ct_study(tmp_path / "ct", slices=20)
    originals = sorted(dataset_bytes(p.read_bytes()) for p in files)
    with catalog_url(kind, tmp_path) as url, live_centre(url, tmp_path) as centre:
        settings = gateway_settings(tmp_path / "gw")
        with running_gateway(settings, centre.url, centre.site_token) as gateway:
            result = storescu(gateway.dicom_port, files)
            assert result.returncode == 0, result.stderr
            study_uid = gateway.outbox.progress()[0].study_uid
            hashes = wait_for(
                lambda: (h := centre_hashes(centre.services, study_uid)) and len(h) == 20 and h
            )
            progress = wait_for(lambda: (p := gateway.outbox.progress(study_uid)[0]).complete and p)
    assert progress.received == progress.confirmed == 20
    stored = sorted(
        dataset_bytes(gateway_bytes) for gateway_bytes in centre_objects(centre.services, hashes)
    )
    assert stored == originals  # every attribute and the pixel data, byte for byte
