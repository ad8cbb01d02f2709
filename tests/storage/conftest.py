"""Fixtures for the storage tests: a moto S3 endpoint and one store per back end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from telerad.storage.objectstore import (
    FilesystemObjectStore,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)
from tests.s3server import ACCESS_KEY, SECRET_KEY, run_moto_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of a moto S3 server shared by the session (tests use unique buckets)."""
    with run_moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def fs_store(tmp_path: Path) -> Iterator[FilesystemObjectStore]:
    store = FilesystemObjectStore(tmp_path / "objects")
    yield store
    store.close()


@pytest.fixture
def s3_store(s3_endpoint: str) -> Iterator[S3ObjectStore]:
    store = S3ObjectStore(s3_endpoint, ACCESS_KEY, SECRET_KEY, bucket=unique_bucket())
    yield store
    store.close()


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh, empty store of each back end, built through the registry."""
    if request.param == "filesystem":
        options: dict[str, object] = {"root": tmp_path / "objects"}
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        options = {
            "endpoint": endpoint,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "bucket": unique_bucket(),
        }
    store = open_object_store(request.param, **options)
    yield store
    store.close()


def unique_bucket() -> str:
    return f"telerad-test-{uuid.uuid4().hex[:16]}"
