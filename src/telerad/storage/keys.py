"""Validated UIDs and the object keys derived from them.

Object keys never contain raw UIDs or anything from a request path: each UID is validated
(PS3.5 §9.1) and hashed, so a hostile value cannot traverse directories, collide with another
key or leak identifiers into bucket listings.
"""

from __future__ import annotations

import hashlib
import re

from telerad.storage.errors import InvalidKey

#: PS3.5 §9.1: digits and dots, at most 64 characters. Leading zeros inside a component are
#: a violation that real modalities commit; we accept them (tolerant on what we receive).
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
_KEY_SEGMENT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}(\.[a-z0-9]{1,8})?")
UID_MAX_LENGTH = 64


def is_valid_uid(value: str) -> bool:
    """True if ``value`` is a syntactically valid DICOM UID (PS3.5 §9.1)."""
    return 0 < len(value) <= UID_MAX_LENGTH and _UID_RE.fullmatch(value) is not None


def validate_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidKey`."""
    if not isinstance(value, str) or not is_valid_uid(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidKey(f"invalid {what}: {shown!r}")
    return value


def uid_hash(uid: str) -> str:
    """Stable 32-hex-digit digest of a validated UID."""
    return hashlib.sha256(validate_uid(uid).encode("ascii")).hexdigest()[:32]


def study_prefix(study_uid: str) -> str:
    """Key prefix under which every object of one study lives."""
    digest = uid_hash(study_uid)
    return f"studies/{digest[:2]}/{digest}/"


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str, sha256: str) -> str:
    """Object key of a stored Part-10 instance.

    The content hash is part of the key, so two different objects claiming one SOP Instance
    UID can never overwrite each other, even when two ingests race.
    """
    _check_sha256(sha256)
    series = uid_hash(series_uid)
    return f"{study_prefix(study_uid)}{series}/{uid_hash(sop_instance_uid)}-{sha256[:16]}.dcm"


def rejected_key(sop_instance_uid: str, sha256: str) -> str:
    """Object key of a conflicting copy kept for review (never served as the instance)."""
    _check_sha256(sha256)
    return f"rejected/{uid_hash(sop_instance_uid)}/{sha256}.dcm"


def _check_sha256(sha256: str) -> None:
    if re.fullmatch(r"[0-9a-f]{64}", sha256) is None:
        raise InvalidKey("sha256 must be 64 lowercase hex digits")


def check_key(key: str) -> str:
    """Validate an object key: lowercase ``[a-z0-9_-]`` segments (one optional extension)
    separated by ``/``; nothing that could climb out of a directory or a bucket prefix.

    Back ends call this before touching a path or a bucket so that only keys built by this
    module can reach them.
    """
    parts = key.split("/")
    if not key or len(key) > 512 or not all(_KEY_SEGMENT_RE.fullmatch(p) for p in parts):
        raise InvalidKey(f"invalid object key: {key[:80]!r}")
    return key
