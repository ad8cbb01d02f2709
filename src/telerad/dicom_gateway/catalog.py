"""Searches for the query/retrieve SCP: at the centre over QIDO-RS, or in the centre's catalog
when the gateway runs beside it.

A county gateway has no catalog: its C-FIND, C-MOVE and C-GET look-ups are QIDO-RS searches at
the centre with the site token (:class:`CentreSearch`), and the centre applies its matcher,
the token's site scope and its audit log.

The gateway that ``telerad serve`` starts next to the centre shares the centre's database. For
it (``gateway.local_catalog``, set by ``serve``) the same search runs in the gateway process on
that database (:class:`CatalogSearch`): the same matcher (:func:`telerad.storage.search` with
:func:`telerad.storage.parse_query`, which is what the QIDO-RS route calls), the same scope (the
site of the gateway's token, checked on every search, so a revoked token stops answering at
once), and an audit event per search, appended by the batched
:class:`~telerad.storage.AuditWriter` as the centre's API does. It skips an HTTP round trip,
authentication and JSON decoding per query: a study-level C-FIND took 7.6 ms with the
round trip and 6.2 to 6.5 ms without it (``bench/cfind.py``, one association; the rest is
pynetdicom's exchange).

Design note: DESIGN.md forbids the gateway to *write to the central catalog*, so that every
instance enters through the centre's one ingest path. Reading it, and appending to its audit
log, which is not catalog data, is what this module does, and only when the two share one
machine and one database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from telerad.dicom_gateway.centre import CentreClient, SearchAnswer
from telerad.dicom_gateway.errors import CentreRefused, CentreUnavailable, QueryRejected
from telerad.settings import Settings
from telerad.storage import (
    BASE_URI_MARKER,
    AuditWriter,
    Level,
    QueryError,
    Scope,
    create_catalog_engine,
    parse_query,
    search,
    session_factory,
    statement_reader,
)
from telerad.worklist import authenticate_site_token

__all__ = ["CatalogSearch", "CentreSearch", "Requestor", "Searcher"]

#: The QIDO-RS resource of each level (:data:`telerad.dicom_gateway.find.RESOURCES`).
LEVELS = {"studies": Level.STUDY, "series": Level.SERIES, "instances": Level.INSTANCE}


@dataclass(frozen=True, slots=True)
class Requestor:
    """Who asked: the DIMSE operation, the calling AE title and its network address."""

    operation: str  # C-FIND, C-MOVE, C-GET
    ae_title: str
    address: str


class Searcher(Protocol):
    """A QIDO-RS search (PS3.18 §10.6) of the site's studies."""

    def search(
        self, resource: str, params: Sequence[tuple[str, str]], requestor: Requestor
    ) -> SearchAnswer:
        """The matches of ``params`` at ``resource`` (``studies``, ``series``, ``instances``).

        Raises QueryRejected, CentreUnavailable, CentreRefused."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class CentreSearch:
    """Searches at the centre over QIDO-RS (the centre audits them as the site token's)."""

    def __init__(self, client: CentreClient) -> None:
        self.client = client

    def search(
        self, resource: str, params: Sequence[tuple[str, str]], requestor: Requestor
    ) -> SearchAnswer:
        """QIDO-RS at the centre."""
        return self.client.search(resource, params)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


class CatalogSearch:
    """Searches in the centre's catalog, in this process (module docstring)."""

    def __init__(self, settings: Settings, site_token: str, centre_url: str) -> None:
        self._engine = create_catalog_engine(settings.database_url, pool_size=4)
        self._reader = statement_reader(self._engine)
        self._sessions = session_factory(self._engine)
        self._token = site_token
        self._base = centre_url.rstrip("/") + "/dicomweb"
        self.audit = AuditWriter(
            session_factory(self._engine, writer=True),
            journal=settings.data_dir / "audit-journal",
        )

    def search(
        self, resource: str, params: Sequence[tuple[str, str]], requestor: Requestor
    ) -> SearchAnswer:
        """The centre's QIDO-RS search, run here (PS3.18 §10.6, PS3.4 C.2.2.2).

        Raises
        ------
        QueryRejected
            A key or value the matcher refuses (the centre would answer 400).
        CentreRefused
            The gateway's token is unknown or revoked (the centre would answer 401).
        CentreUnavailable
            The database cannot be read.
        """
        level = LEVELS[resource]
        try:
            query = parse_query(list(params))
        except QueryError as exc:
            raise QueryRejected(str(exc)) from exc
        try:
            with self._reader.connect() as connection:
                principal = authenticate_site_token(connection, self._token)
            if principal is None or principal.site_id is None:
                raise CentreRefused("the gateway's site token is unknown or revoked")
            with self._sessions() as session:
                result = search(session, level, query, Scope(frozenset({principal.site_id})))
        except SQLAlchemyError as exc:
            raise CentreUnavailable(f"catalog unavailable: {type(exc).__name__}") from exc
        self.audit.record(
            actor=principal.name,
            actor_role=principal.role,
            action=f"{requestor.operation.lower()}-{level.name.lower()}",
            resource=f"dicom:{requestor.operation}",
            source_address=requestor.address,
            study_uids=result.study_uids,
            detail=f"calling AE {requestor.ae_title}: {_query_text(params)}"[:2000],
        )
        matches = [_with_base(match, self._base) for match in result.matches]
        return SearchAnswer(matches, tuple(result.ignored))

    def close(self) -> None:
        """Write the queued audit events, then release the connections."""
        self.audit.close()
        self._engine.dispose()


def _query_text(params: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{name}={value}" for name, value in params)


def _with_base(match: dict[str, object], base: str) -> dict[str, object]:
    """RetrieveURL values with the centre's DICOMweb root, as the QIDO-RS route writes them."""
    retrieve = match.get("00081190")
    if not isinstance(retrieve, dict):
        return match
    values = [
        v.replace(BASE_URI_MARKER, base) if isinstance(v, str) else v
        for v in retrieve.get("Value", [])
    ]
    return {**match, "00081190": {**retrieve, "Value": values}}
