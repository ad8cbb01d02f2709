"""Object storage, the catalog and the single ingest path.

Public API (other packages import only these names).
"""

from telerad.storage.audit import record_access, record_accesses
from telerad.storage.auditing import AuditWriter
from telerad.storage.completeness import (
    MAX_MANIFEST_ENTRIES,
    StudyCompleteness,
    study_completeness,
    submit_manifest,
)
from telerad.storage.database import (
    Reader,
    create_catalog_engine,
    migrate,
    session_factory,
    statement_reader,
)
from telerad.storage.delivery_models import (
    ConsultationMessage,
    Notification,
    ShareLink,
    SiteWebhook,
)
from telerad.storage.errors import (
    FrameNotFound,
    IngestError,
    InstanceConflict,
    IntegrityError,
    InvalidInstance,
    InvalidKey,
    InvalidManifest,
    NotFound,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
    StudyMismatch,
    StudyNotFound,
)
from telerad.storage.ingest import Archive, IngestResult, IngestSource, IngestStatus
from telerad.storage.keys import is_valid_uid, validate_uid
from telerad.storage.matching import Query, QueryError, parse_query
from telerad.storage.models import (
    AuditEvent,
    Base,
    Instance,
    ManifestEntry,
    Modality,
    Patient,
    ReaderSite,
    RejectedInstance,
    Series,
    Site,
    SiteToken,
    Study,
    StudyManifest,
    User,
)
from telerad.storage.objectstore import ObjectInfo, ObjectStore, open_object_store
from telerad.storage.parsing import BASE_URI_MARKER, InstanceHeader, check_instance
from telerad.storage.query import Level, Scope, SearchResult, search
from telerad.storage.query import element as dicom_json_element
from telerad.storage.report_models import Report, ReportDocument
from telerad.storage.retrieve import (
    StoredInstance,
    find_instance,
    find_instances,
    find_metadata,
    read_frame,
    read_frames,
)
from telerad.storage.worklist_models import (
    ReaderProfile,
    ReadingPool,
    ReadingPoolMember,
    ReadingRequest,
    ReadingTask,
    RoutingRule,
    TaskEvent,
)

__all__ = [
    "BASE_URI_MARKER",
    "MAX_MANIFEST_ENTRIES",
    "Archive",
    "AuditEvent",
    "AuditWriter",
    "Base",
    "ConsultationMessage",
    "FrameNotFound",
    "IngestError",
    "IngestResult",
    "IngestSource",
    "IngestStatus",
    "Instance",
    "InstanceConflict",
    "InstanceHeader",
    "IntegrityError",
    "InvalidInstance",
    "InvalidKey",
    "InvalidManifest",
    "Level",
    "ManifestEntry",
    "Modality",
    "NotFound",
    "Notification",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "Patient",
    "Query",
    "QueryError",
    "Reader",
    "ReaderProfile",
    "ReaderSite",
    "ReadingPool",
    "ReadingPoolMember",
    "ReadingRequest",
    "ReadingTask",
    "RejectedInstance",
    "Report",
    "ReportDocument",
    "RoutingRule",
    "Scope",
    "SearchResult",
    "Series",
    "ShareLink",
    "Site",
    "SiteToken",
    "SiteWebhook",
    "StorageError",
    "StorageUnavailable",
    "StoredInstance",
    "Study",
    "StudyCompleteness",
    "StudyManifest",
    "StudyMismatch",
    "StudyNotFound",
    "TaskEvent",
    "User",
    "check_instance",
    "create_catalog_engine",
    "dicom_json_element",
    "find_instance",
    "find_instances",
    "find_metadata",
    "is_valid_uid",
    "migrate",
    "open_object_store",
    "parse_query",
    "read_frame",
    "read_frames",
    "record_access",
    "record_accesses",
    "search",
    "session_factory",
    "statement_reader",
    "study_completeness",
    "submit_manifest",
    "validate_uid",
]
