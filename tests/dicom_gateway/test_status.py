"""The gateway's status endpoint and page."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from telerad.dicom_gateway import Outbox, create_status_app
from tests.dicom_gateway.test_outbox import _item


def test_status_json_page_and_retry(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.record(_item("1"))
    outbox.record(_item("2"))
    batch = outbox.claim_batch(10_000)
    outbox.confirm([(batch[0].id, 100)])
    outbox.fail([(batch[1].id, "centre refused <0xa900>", True, 50)], max_attempts=5, backoff=1)
    client = TestClient(create_status_app(outbox, {"ae_title": "GW<1>", "centre": "x"}))
    data = client.get("/status").json()
    assert data["instances"] == {"pending": 0, "sending": 0, "confirmed": 1, "dead": 1}
    study = data["studies"][0]
    assert (study["received"], study["confirmed"], study["dead"]) == (2, 1, 1)
    assert study["bytes_sent"] == 150 and study["complete"] is False
    assert "0xa900" in study["last_error"]
    page = client.get("/").text
    assert "GW&lt;1&gt;" in page and "&lt;0xa900&gt;" in page and "<0xa900>" not in page
    assert client.post("/studies/1.2.3/retry").json() == {"requeued": 1}
    assert client.get("/status").json()["instances"]["pending"] == 1
    outbox.close()
