"""Shared fixtures: a catalog database (SQLite, and PostgreSQL where
``TELERAD_TEST_POSTGRES_DSN`` is set), an archive, and the API with real users."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import config as pydicom_config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from telerad.settings import Settings
from telerad.storage import Archive, create_catalog_engine, migrate, open_object_store
from telerad.viewer_api import Services, create_app
from telerad.viewer_api.services import build_services
from telerad.worklist import create_site, create_site_token, create_user

POSTGRES_DSN = os.environ.get("TELERAD_TEST_POSTGRES_DSN")
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _pydicom_validation_restored() -> Iterator[None]:
    """pydicom's validation modes are process-wide, and a library may leave them changed
    (dicomweb-client's validation decorator sets RAISE and does not restore it when the
    wrapped call raises): every test starts from and leaves the defaults."""
    settings = pydicom_config.settings
    saved = (settings._reading_validation_mode, settings._writing_validation_mode)
    settings._reading_validation_mode, settings._writing_validation_mode = None, None
    yield
    settings._reading_validation_mode, settings._writing_validation_mode = saved


def _postgres_url(schema: str) -> str:
    url = make_url(POSTGRES_DSN or "").set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@contextmanager
def catalog_url(kind: str, directory: Path) -> Iterator[str]:
    """A fresh, empty catalog database: a SQLite file, or a new PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'catalog.db'}"
        return
    if not POSTGRES_DSN:
        pytest.skip("TELERAD_TEST_POSTGRES_DSN not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(POSTGRES_DSN).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _postgres_url(schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh catalog database for one test, on each database kind."""
    with catalog_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated catalog engine."""
    engine = create_catalog_engine(database_url, pool_size=5)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def archive(engine: Engine, tmp_path: Path) -> Archive:
    """An archive over the catalog and a filesystem object store."""
    return Archive(engine, open_object_store("filesystem", root=tmp_path / "objects"))


@dataclass
class Api:
    """A TestClient on ``create_app`` with users of every role and their tokens."""

    client: TestClient
    services: Services
    tokens: dict[str, str]
    site_token: str

    def headers(self, who: str) -> dict[str, str]:
        """Authorization header for user ``who`` (or ``site`` for the county1 gateway)."""
        token = self.site_token if who == "site" else self.tokens[who]
        return {"Authorization": f"Bearer {token}"}


USERS = {
    "admin": ("admin", None, ()),
    "rg1": ("radiographer", "county1", ()),
    "rg2": ("radiographer", "county2", ()),
    "rad1": ("radiologist", None, ("county1",)),
    "ref1": ("referrer", "county1", ()),
    "ref2": ("referrer", "county1", ()),
}


@contextmanager
def running_api(database_url: str, directory: Path, **overrides: Any) -> Iterator[Api]:
    """The central API on ``database_url``, with sites county1 and county2 and USERS;
    ``overrides``: further settings (e.g. ``delivery={"background": False}``)."""
    settings = Settings(data_dir=directory / "data", database={"url": database_url}, **overrides)
    services = build_services(settings)
    with services.writer.begin() as session:
        create_site(session, "county1", issuer="COUNTY1", ae_titles=("CT1",))
        create_site(session, "county2", issuer="COUNTY2", ae_titles=("CT2",))
        for name, (role, site, reads_for) in USERS.items():
            create_user(session, name, PASSWORD, role, site=site, reads_for=reads_for)
        site_token = create_site_token(session, "county1")
    try:
        with TestClient(create_app(settings, services)) as client:
            tokens = {}
            for name in USERS:
                form = {"username": name, "password": PASSWORD}
                response = client.post("/api/auth/token", data=form)
                assert response.status_code == 200, response.text
                tokens[name] = response.json()["access_token"]
            yield Api(client, services, tokens, site_token)
    finally:
        services.close()


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    """A fresh API for one test."""
    with running_api(database_url, tmp_path) as running:
        yield running


@pytest.fixture(scope="module", params=DATABASES)
def shared_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """One API per test module and database (Argon2 logins make a fresh one per test slow);
    tests that share it use fresh UIDs and compare before/after."""
    directory = tmp_path_factory.mktemp("api")
    with catalog_url(request.param, directory) as url, running_api(url, directory) as running:
        yield running
