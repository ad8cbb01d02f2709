"""The long-lived objects the API uses, built once in the app's lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from telerad.settings import Settings
from telerad.storage import (
    Archive,
    AuditWriter,
    ObjectStore,
    create_catalog_engine,
    migrate,
    open_object_store,
    session_factory,
    statement_reader,
)
from telerad.viewer_api.rendering.pipeline import Renderer


@dataclass
class Services:
    """Settings, database engine, object store and the archive built on them.

    ``sessions`` read (SQLite: deferred snapshot); ``writer`` sessions write (SQLite: BEGIN
    IMMEDIATE, so concurrent writers queue on the busy timeout instead of failing with a
    lock-upgrade "database is locked").
    """

    settings: Settings
    engine: Engine
    objects: ObjectStore
    archive: Archive
    sessions: sessionmaker[Session]
    token_secret: str
    writer: sessionmaker[Session]
    renderer: Renderer = field(init=False)
    _statement_reader: Engine = field(init=False, repr=False)
    audit: AuditWriter = field(init=False)

    def __post_init__(self) -> None:
        self._statement_reader = statement_reader(self.engine)
        self.renderer = Renderer(self.objects, self.settings.rendering)
        self.audit = AuditWriter(self.writer, journal=self.settings.data_dir / "audit-journal")

    def reader(self) -> Connection:
        """A bare connection for lookups of plain columns, each statement on its own (``with
        services.reader() as connection``): the same statements as a session, without the
        ORM's execution layer or, on SQLite, a transaction (:data:`telerad.storage.Reader`,
        :func:`telerad.storage.statement_reader`)."""
        return self._statement_reader.connect()

    def close(self) -> None:
        """Release connections."""
        self.renderer.close()
        self.audit.close()
        self.objects.close()
        self.engine.dispose()


def open_object_store_for(settings: Settings) -> ObjectStore:
    """The object store named by the settings."""
    config = settings.objects
    if config.backend == "s3":
        return open_object_store(
            "s3",
            endpoint=config.s3_endpoint,
            access_key=config.s3_access_key.get_secret_value(),
            secret_key=config.s3_secret_key.get_secret_value(),
            bucket=config.s3_bucket,
            secure=config.s3_secure,
            region=config.s3_region,
        )
    return open_object_store("filesystem", root=settings.objects_path)


def quiet_patient_data_loggers() -> None:
    """pydicom logs invalid values verbatim, which can include patient names and IDs."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def build_services(settings: Settings) -> Services:
    """Connect to the catalog (migrating it to the current schema) and the object store."""
    quiet_patient_data_loggers()
    engine = create_catalog_engine(settings.database_url, pool_size=settings.database.pool_size)
    migrate(engine)
    objects = open_object_store_for(settings)
    return Services(
        settings=settings,
        engine=engine,
        objects=objects,
        archive=Archive(engine, objects),
        sessions=session_factory(engine),
        token_secret=settings.token_secret(),
        writer=session_factory(engine, writer=True),
    )
