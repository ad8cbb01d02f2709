"""Locate stored instances and read their frames: the core of WADO-RS, rendering and C-GET.

PS3.18 §10.4 retrieves resources by Study, Series and SOP Instance UID; a resource outside the
caller's scope is reported exactly like a missing one (:class:`~telerad.storage.errors.NotFound`),
so a caller cannot learn whether a study exists at another site.

Frames are read with byte-range requests from the stored Part-10 object, using the ranges located
at ingest (PS3.5 §8.1.1 native, §A.4 encapsulated): a frame of a 500-frame object costs one small
read, never the whole object.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from telerad.storage.database import DirectLookup, Reader
from telerad.storage.errors import FrameNotFound, NotFound
from telerad.storage.keys import is_valid_uid
from telerad.storage.models import Instance, Series, Study
from telerad.storage.objectstore import ObjectStore
from telerad.storage.query import Scope

_S = TypeVar("_S", bound=Select[*tuple[Any, ...]])


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """Where a stored instance's bytes are, and what the catalog knows about them."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    size: int
    sha256: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    #: One entry per frame, each a list of (offset, length) byte ranges; None if not locatable.
    frame_ranges: tuple[tuple[tuple[int, int], ...], ...] | None
    #: The instance's DICOM JSON with BulkDataURIs carrying ``BASE_URI_MARKER``.
    metadata_json: str
    site_id: int | None
    patient_pk: int

    @property
    def frame_count(self) -> int:
        """Number of frames the pixel data holds (0 when there is none)."""
        if self.frame_ranges is None:
            return 0
        return len(self.frame_ranges)


def find_instances(
    session: Reader,
    scope: Scope,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[StoredInstance]:
    """Every visible instance of a study, series or single instance, in reading order
    (series number, then instance number, then storage order).

    Raises :class:`~telerad.storage.errors.NotFound` when nothing matches: unknown UID,
    malformed UID, a series of another study, or a study outside ``scope``.
    """
    uids = [u for u in (study_uid, series_uid, sop_instance_uid) if u is not None]
    if not all(is_valid_uid(u) for u in uids):
        raise NotFound("no such resource")
    lookup = _instances_lookup(series_uid is not None, sop_instance_uid is not None)
    rows = lookup.all(session, _uid_parameters(study_uid, series_uid, sop_instance_uid))
    found = [_stored(row) for row in rows]
    if not found or not scope.allows(found[0].site_id, study_uid):
        raise NotFound("no such resource")
    return found


def find_metadata(
    session: Reader,
    scope: Scope,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[str]:
    """The stored DICOM JSON text (with ``BASE_URI_MARKER``) of every visible instance of a
    study, series or single instance, in :func:`find_instances` order.

    Reads only the metadata column: no frame table is parsed, so a 200-instance series costs
    one query and the concatenation of its texts (PS3.18 §10.4.1.1.2 Retrieve Metadata).
    Raises :class:`~telerad.storage.errors.NotFound` as :func:`find_instances` does.
    """
    uids = [u for u in (study_uid, series_uid, sop_instance_uid) if u is not None]
    if not all(is_valid_uid(u) for u in uids):
        raise NotFound("no such resource")
    statement = _metadata_statement(series_uid is not None, sop_instance_uid is not None)
    parameters = _uid_parameters(study_uid, series_uid, sop_instance_uid)
    rows = session.execute(statement, parameters).all()
    if not rows or not scope.allows(rows[0].site_id, study_uid):
        raise NotFound("no such resource")
    return [row.metadata_json for row in rows]


# The statements are built once per shape with bound parameters: building a SQLAlchemy
# statement and its cache key costs more than running the query (a frame or rendered request
# makes one of these).


@lru_cache(maxsize=4)
def _instances_lookup(by_series: bool, by_instance: bool) -> DirectLookup:
    """The instance lookup of every image request, on the DBAPI cursor (:class:`DirectLookup`)."""
    return DirectLookup(_instances_statement(by_series, by_instance))


@lru_cache(maxsize=4)
def _instances_statement(by_series: bool, by_instance: bool) -> Select[*tuple[Any, ...]]:
    # Plain columns, not ORM entities: no identity map or instance state per row.
    columns = (*_INSTANCE_COLUMNS, Series.series_uid, Study.study_uid, Study.site_id,
               Study.patient_pk)  # fmt: skip
    return _located(select(*columns), by_series, by_instance)


@lru_cache(maxsize=4)
def _metadata_statement(by_series: bool, by_instance: bool) -> Select[*tuple[Any, ...]]:
    return _located(select(Instance.metadata_json, Study.site_id), by_series, by_instance)


def _uid_parameters(
    study_uid: str, series_uid: str | None, sop_instance_uid: str | None
) -> dict[str, str]:
    parameters = {"study_uid": study_uid}
    if series_uid is not None:
        parameters["series_uid"] = series_uid
    if sop_instance_uid is not None:
        parameters["sop_instance_uid"] = sop_instance_uid
    return parameters


def _located(statement: _S, by_series: bool, by_instance: bool) -> _S:
    """``statement`` joined from Instance to Study, filtered by the bound UIDs
    (``study_uid``, and ``series_uid``/``sop_instance_uid`` if asked), in reading order."""
    statement = (
        statement.join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_uid == bindparam("study_uid"))
    )
    if by_series:
        statement = statement.where(Series.series_uid == bindparam("series_uid"))
    if by_instance:
        statement = statement.where(Instance.sop_instance_uid == bindparam("sop_instance_uid"))
    return statement.order_by(
        Series.series_number.is_(None),
        Series.series_number,
        Series.id,
        Instance.instance_number.is_(None),
        Instance.instance_number,
        Instance.id,
    )


def find_instance(
    session: Session, scope: Scope, study_uid: str, series_uid: str, sop_instance_uid: str
) -> StoredInstance:
    """One visible instance; :class:`NotFound` otherwise."""
    [instance] = find_instances(session, scope, study_uid, series_uid, sop_instance_uid)
    return instance


def read_frame(objects: ObjectStore, instance: StoredInstance, number: int) -> bytes:
    """The stored bytes of frame ``number`` (1-based, PS3.18 §10.4.1.1.5): native pixels as
    stored, or the concatenated fragments of an encapsulated frame (its compressed bitstream).

    Raises :class:`~telerad.storage.errors.FrameNotFound` for a frame number outside
    1..frame_count or an instance without locatable frames.
    """
    ranges = instance.frame_ranges
    if ranges is None or not 1 <= number <= len(ranges):
        raise FrameNotFound(f"frame {number} is not in this instance")
    frame = ranges[number - 1]
    if len(frame) == 1:
        offset, length = frame[0]
        return objects.get_range(instance.object_key, offset, length)
    start = frame[0][0]
    end = frame[-1][0] + frame[-1][1]
    span = objects.get_range(instance.object_key, start, end - start)
    return b"".join(span[offset - start : offset - start + length] for offset, length in frame)


def read_frames(
    objects: ObjectStore, instance: StoredInstance, numbers: Sequence[int]
) -> list[bytes]:
    """Frames ``numbers`` in the order asked; every number is checked before any read."""
    count = instance.frame_count
    for number in numbers:
        if not 1 <= number <= count:
            raise FrameNotFound(f"frame {number} is not in this instance")
    return [read_frame(objects, instance, number) for number in numbers]


#: The Instance columns a :class:`StoredInstance` is built from.
_INSTANCE_COLUMNS = (
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.object_key,
    Instance.size,
    Instance.sha256,
    Instance.number_of_frames,
    Instance.rows,
    Instance.columns,
    Instance.bits_allocated,
    Instance.frame_ranges,
    Instance.metadata_json,
)


def _stored(row: Any) -> StoredInstance:
    ranges = None
    if row.frame_ranges:
        ranges = tuple(
            tuple((int(offset), int(length)) for offset, length in frame)
            for frame in json.loads(row.frame_ranges)
        )
    return StoredInstance(
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        object_key=row.object_key,
        size=row.size,
        sha256=row.sha256,
        number_of_frames=row.number_of_frames,
        rows=row.rows,
        columns=row.columns,
        bits_allocated=row.bits_allocated,
        frame_ranges=ranges,
        metadata_json=row.metadata_json,
        site_id=row.site_id,
        patient_pk=row.patient_pk,
    )
