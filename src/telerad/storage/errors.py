"""Exceptions raised by :mod:`telerad.storage`.

The tree::

    StorageError
    ├── ObjectNotFound          the key does not exist in the object store
    ├── StorageUnavailable      the back end cannot be reached or refused the request
    ├── IntegrityError          stored bytes do not match their SHA-256
    ├── InvalidKey              a key or UID failed validation (never reaches a back end)
    ├── InvalidManifest         a study manifest is malformed (UID, hash, size)
    ├── NotFound                no such study/series/instance, or another site's (same to callers)
    │   ├── StudyNotFound       no such study, or it belongs to another site
    │   └── FrameNotFound       the instance has no such frame
    └── IngestError             an instance cannot be stored
        ├── InvalidInstance     not parseable Part-10, missing/invalid required attributes
        ├── InstanceConflict    same SOP Instance UID, different content (kept as rejected copy)
        └── StudyMismatch       the instance does not belong to the study the request named

Vendor errors (minio, OS, SQLAlchemy) are translated at the boundary of this package; the
adapters (gateway, API) map these classes to DIMSE statuses and HTTP statuses.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by :mod:`telerad.storage`."""


class ObjectNotFound(StorageError):
    """The object key does not exist."""


class StorageUnavailable(StorageError):
    """The back end cannot be reached, or refused the request."""


class IntegrityError(StorageError):
    """Bytes read or written do not match the expected SHA-256."""


class InvalidKey(StorageError):
    """An object key or a UID used to derive one is not valid."""


class InvalidManifest(StorageError):
    """A study manifest lists a bad UID or hash, no instance at all, or too many."""


class NotFound(StorageError):
    """The resource is unknown, or belongs to a site other than the caller's."""


class StudyNotFound(NotFound):
    """The study is unknown, or belongs to a site other than the caller's."""


class FrameNotFound(NotFound):
    """The frame number is outside the instance's frames, or its frames cannot be located."""


class IngestError(StorageError):
    """An instance cannot be ingested; ``reason`` is a short machine-readable cause."""

    reason = "processing-failure"

    def __init__(self, message: str, *, sop_class_uid: str = "", sop_instance_uid: str = ""):
        super().__init__(message)
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


class InvalidInstance(IngestError):
    """The bytes are not a storable DICOM Part-10 instance (PS3.10 §7)."""

    reason = "invalid-instance"


class InstanceConflict(IngestError):
    """A different instance with the same SOP Instance UID is already stored."""

    reason = "conflict"


class StudyMismatch(IngestError):
    """The instance's Study Instance UID differs from the one the request targeted."""

    reason = "study-mismatch"
