"""Object storage, the catalog and the single ingest path.

Public API (other packages import only these names).
"""

from telerad.storage.audit import record_access
from telerad.storage.database import create_catalog_engine, migrate, session_factory
from telerad.storage.errors import (
    IngestError,
    InstanceConflict,
    IntegrityError,
    InvalidInstance,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
    StudyMismatch,
)
from telerad.storage.ingest import Archive, IngestResult, IngestSource, IngestStatus
from telerad.storage.keys import is_valid_uid, validate_uid
from telerad.storage.matching import Query, QueryError, parse_query
from telerad.storage.models import (
    AuditEvent,
    Base,
    Instance,
    Modality,
    Patient,
    ReaderSite,
    RejectedInstance,
    Series,
    Site,
    SiteToken,
    Study,
    User,
)
from telerad.storage.objectstore import ObjectInfo, ObjectStore, open_object_store
from telerad.storage.parsing import BASE_URI_MARKER
from telerad.storage.query import Level, Scope, SearchResult, search
from telerad.storage.query import element as dicom_json_element

__all__ = [
    "BASE_URI_MARKER",
    "Archive",
    "AuditEvent",
    "Base",
    "IngestError",
    "IngestResult",
    "IngestSource",
    "IngestStatus",
    "Instance",
    "InstanceConflict",
    "IntegrityError",
    "InvalidInstance",
    "InvalidKey",
    "Level",
    "Modality",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "Patient",
    "Query",
    "QueryError",
    "ReaderSite",
    "RejectedInstance",
    "Scope",
    "SearchResult",
    "Series",
    "Site",
    "SiteToken",
    "StorageError",
    "StorageUnavailable",
    "Study",
    "StudyMismatch",
    "User",
    "create_catalog_engine",
    "dicom_json_element",
    "is_valid_uid",
    "migrate",
    "open_object_store",
    "parse_query",
    "record_access",
    "search",
    "session_factory",
    "validate_uid",
]
