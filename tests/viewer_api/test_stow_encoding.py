"""STOW-RS (PS3.18 §10.5) with compressed request bodies (RFC 9110 §8.4), SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import Any

import pytest
from sqlalchemy import select

from telerad.storage import AuditEvent, Instance
from tests.conftest import Api
from tests.factories import ct_instances, manifest_of, multipart_related

REFERENCED_SOP_SEQUENCE = "00081199"
ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "identity": lambda body: body,
}


def stow(api: Api, body: bytes, content_type: str, encoding: str | None) -> Any:
    headers = {"Content-Type": content_type, **api.headers("site")}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return api.client.post("/dicomweb/studies", content=body, headers=headers)


def stored(api: Api, sop_instance_uids: set[str]) -> dict[str, bytes]:
    """The stored bytes of each of these instances that the catalog holds."""
    with api.services.sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.object_key, Instance.sha256).where(
                Instance.sop_instance_uid.in_(sop_instance_uids)
            )
        ).all()
    found = {}
    for uid, key, sha256 in rows:
        data = api.services.objects.get(key)
        assert hashlib.sha256(data).hexdigest() == sha256
        found[uid] = data
    return found


def objects(api: Api) -> list[str]:
    return list(api.services.objects.list(""))


@pytest.mark.parametrize("encoding", ENCODERS)
def test_coded_body_stores_the_original_bytes(shared_api: Api, encoding: str) -> None:
    instances = ct_instances(3)
    _, entries = manifest_of(instances)
    body, content_type = multipart_related(instances)

    response = stow(shared_api, ENCODERS[encoding](body), content_type, encoding)

    assert response.status_code == 200, response.text
    assert len(response.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 3
    kept = stored(shared_api, set(entries))
    assert {uid: hashlib.sha256(data).hexdigest() for uid, data in kept.items()} == entries


def test_corrupt_gzip_is_a_bad_request_and_stores_nothing(shared_api: Api) -> None:
    instances = ct_instances(2)
    _, entries = manifest_of(instances)
    body, content_type = multipart_related(instances)
    coded = bytearray(gzip.compress(body))
    coded[len(coded) // 3] ^= 0xFF
    before = objects(shared_api)

    response = stow(shared_api, bytes(coded), content_type, "gzip")

    assert response.status_code == 400, response.text
    assert "gzip" in response.json()["detail"]
    assert objects(shared_api) == before
    assert stored(shared_api, set(entries)) == {}


def test_plain_body_declared_gzip_is_a_bad_request(shared_api: Api) -> None:
    body, content_type = multipart_related(ct_instances(1))

    response = stow(shared_api, body, content_type, "gzip")

    assert response.status_code == 400, response.text


def test_gzip_cut_after_a_complete_part_keeps_that_part(shared_api: Api) -> None:
    whole, cut = ct_instances(2)
    body, content_type = multipart_related([whole, cut])
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    # Everything sent so far decodes, but the gzip stream never ends (the link dropped).
    prefix = compressor.compress(body[: len(whole) + 300]) + compressor.flush(zlib.Z_SYNC_FLUSH)

    response = stow(shared_api, prefix, content_type, "gzip")

    assert response.status_code == 202, response.text
    assert set(stored(shared_api, set(manifest_of([whole, cut])[1]))) == set(
        manifest_of([whole])[1]
    )


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "gzip, br"])
def test_other_content_codings_are_unsupported(shared_api: Api, encoding: str) -> None:
    body, content_type = multipart_related(ct_instances(1))
    before = objects(shared_api)

    response = stow(shared_api, body, content_type, encoding)

    assert response.status_code == 415, response.text
    assert response.headers["Accept-Encoding"] == "gzip, deflate, identity"
    assert objects(shared_api) == before


def zeros_part_gzip(first: bytes, zeros: int) -> tuple[bytes, str]:
    """A gzip multipart body: one instance, then a part of ``zeros`` zero bytes (a bomb)."""
    boundary = "b0mb"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    coded = [compressor.compress(head + first + b"\r\n" + head)]
    block = bytes(1024 * 1024)
    coded += [compressor.compress(block) for _ in range(zeros // len(block))]
    coded.append(compressor.compress(f"\r\n--{boundary}--\r\n".encode()) + compressor.flush())
    return b"".join(coded), f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_zip_bomb_is_refused_once_the_decoded_size_passes_the_limit(
    shared_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_api.services.settings.http, "max_request_bytes", 8 * 1024 * 1024)
    [first] = ct_instances(1)
    body, content_type = zeros_part_gzip(first, 512 * 1024 * 1024)
    assert len(body) < 1024 * 1024
    before = objects(shared_api)

    response = stow(shared_api, body, content_type, "gzip")

    assert response.status_code == 413, response.text
    assert "1 instance(s) stored" in response.json()["detail"]
    study_uid, entries = manifest_of([first])
    assert set(stored(shared_api, set(entries))) == set(entries)  # the complete part stays
    assert len(objects(shared_api)) == len(before) + 1  # and nothing of the bomb
    with shared_api.services.sessions() as session:
        outcome = session.scalar(
            select(AuditEvent.outcome).where(AuditEvent.study_uid == study_uid)
        )
    assert outcome == "partial"


def test_plain_body_over_the_limit_is_too_large(
    shared_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = ct_instances(2)
    body, content_type = multipart_related([first, second])
    monkeypatch.setattr(shared_api.services.settings.http, "max_request_bytes", len(body) - 1)
    before = objects(shared_api)

    response = stow(shared_api, body, content_type, None)

    assert response.status_code == 413, response.text
    assert stored(shared_api, set(manifest_of([second])[1])) == {}
    # TestClient delivers the body in one chunk, already over the limit: nothing is parsed.
    assert objects(shared_api) == before
