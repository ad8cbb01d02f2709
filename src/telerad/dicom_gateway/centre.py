"""The gateway's HTTP client for the centre: STOW-RS, manifests, the site's modalities, and
QIDO-RS / WADO-RS for the query/retrieve SCP.

Authenticated with the site's gateway token (``Authorization: Bearer trs_…``). Errors are
translated here: connection failures, timeouts, 408, 429 and 5xx are
:class:`CentreUnavailable` (try again later); other 4xx are :class:`CentreRefused`.
"""

from __future__ import annotations

import logging
import re
import secrets
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from telerad.dicom_gateway.errors import CentreRefused, CentreUnavailable, QueryRejected

logger = logging.getLogger(__name__)

#: WADO-RS Accept for instances exactly as stored (PS3.18 §8.7.3.5.2, transfer-syntax=*).
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_IGNORED_KEYS = re.compile(r'ignored matching keys: ([^"]*)')

#: Failure Reasons (PS3.18 Table 10.5.3-2, PS3.4 B.2.3) worth another attempt later.
TRANSIENT_REASONS = frozenset({0xA700, 0xA701, 0x0110, 0x0212, 0x0213})


@dataclass(frozen=True, slots=True)
class StowOutcome:
    """What the centre said about each part of one STOW-RS request (PS3.18 §10.5.3)."""

    http_status: int
    stored: frozenset[str]
    failed: Mapping[str, int]
    warning: str
    wire_bytes: int


@dataclass(frozen=True, slots=True)
class SearchAnswer:
    """A QIDO-RS answer: the matches, and the matching keys the centre did not match on."""

    matches: list[dict[str, Any]]
    ignored: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    """The centre's view of a study after a manifest."""

    complete: bool
    received: int
    expected: int
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]


class CentreClient:
    """One keep-alive HTTP client, safe to share between threads (httpx.Client is)."""

    def __init__(self, base_url: str, token: str, *, timeout: float, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "telerad-gateway"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            limits=limits,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def store_instances(self, study_uid: str, parts: Sequence[bytes], *, gzip: bool) -> StowOutcome:
        """POST the parts to ``/dicomweb/studies/{study}`` (PS3.18 §10.5.1)."""
        boundary = secrets.token_hex(16)
        body = _multipart(parts, boundary)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        if gzip:
            body = _gzip(body)
            headers["Content-Encoding"] = "gzip"
        response = self._request("POST", f"/dicomweb/studies/{study_uid}", body, headers)
        return _stow_outcome(response, len(body))

    def put_manifest(self, study_uid: str, entries: Mapping[str, str]) -> ManifestAnswer:
        """PUT the study's manifest; the centre answers what it holds."""
        document = {"instances": [{"sop_instance_uid": u, "sha256": h} for u, h in entries.items()]}
        response = self._request("PUT", f"/api/studies/{study_uid}/manifest", json=document)
        data = _json(response)
        return ManifestAnswer(
            complete=bool(data.get("complete")),
            received=int(data.get("received", 0)),
            expected=int(data.get("expected", 0)),
            missing=tuple(data.get("missing", ())),
            mismatched=tuple(data.get("mismatched", ())),
        )

    def site(self) -> dict[str, Any]:
        """The site this token belongs to, with its modalities (``GET /api/sites/me``)."""
        return _json(self._request("GET", "/api/sites/me"))

    def search(self, resource: str, params: Sequence[tuple[str, str]]) -> SearchAnswer:
        """QIDO-RS ``GET /dicomweb/{resource}`` (PS3.18 §10.6): ``studies``, ``series`` or
        ``instances``; the centre answers only the site's studies.

        Raises
        ------
        QueryRejected
            The centre found the query malformed (400).
        CentreUnavailable, CentreRefused
            As for every request.
        """
        headers = {"Accept": "application/dicom+json"}
        response = self._request(
            "GET", f"/dicomweb/{resource}", headers=headers, params=params, refused=QueryRejected
        )
        matches = response.json() if response.status_code != 204 and response.content else []
        if not isinstance(matches, list):
            raise CentreUnavailable("centre answered a search with unexpected JSON")
        found = _IGNORED_KEYS.search(response.headers.get("Warning", ""))
        ignored = tuple(k for k in found.group(1).split(",") if k) if found else ()
        return SearchAnswer(matches, ignored)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bytes:
        """WADO-RS Retrieve Instance as stored (PS3.18 §10.4.1.1.3): the Part-10 bytes.

        Raises
        ------
        CentreRefused
            Unknown to the centre (404) or refused.
        CentreUnavailable
            Unreachable, or the answer is not one DICOM part.
        """
        url = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}"
        response = self._request("GET", url, headers={"Accept": AS_STORED})
        parts = multipart_parts(response.headers.get("Content-Type", ""), response.content)
        if len(parts) != 1:
            raise CentreUnavailable(f"centre answered {len(parts)} parts for one instance")
        return parts[0]

    def _request(
        self,
        method: str,
        url: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        params: Sequence[tuple[str, str]] | None = None,
        refused: type[CentreRefused] = CentreRefused,
    ) -> httpx.Response:
        """Send one request; ``refused`` is raised for a 400 answer."""
        try:
            response = self._client.request(
                method,
                url,
                content=content,
                headers=headers,
                json=json,
                params=list(params) if params is not None else None,
            )
        except httpx.HTTPError as exc:
            raise CentreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status in (408, 429) or status >= 500:
            raise CentreUnavailable(f"centre answered {status}")
        if status in (401, 403):
            raise CentreRefused(f"centre refused the site token ({status})")
        if status == 400:
            raise refused(f"centre answered 400: {response.text[:200]}")
        if status >= 400 and status != 409:
            raise CentreRefused(f"centre answered {status}: {response.text[:200]}")
        return response


def _multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related message (RFC 2387, PS3.18 §8.6.1.2).

    Raises
    ------
    CentreUnavailable
        Not multipart, or without a boundary.
    """
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/related") or not found:
        raise CentreUnavailable(f"centre answered {content_type[:80]!r}, not multipart/related")
    delimiter = b"\r\n--" + found.group(1).encode()
    parts = []
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        _headers, separator, content = chunk.partition(b"\r\n\r\n")
        if separator:
            parts.append(content)
    return parts


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise CentreUnavailable("centre answered with a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise CentreUnavailable("centre answered with unexpected JSON")
    return data


def _stow_outcome(response: httpx.Response, wire_bytes: int) -> StowOutcome:
    """Read the Referenced and Failed SOP Sequences (PS3.18 Table 10.5.3-1)."""
    data = _json(response) if response.content else {}
    stored = {
        _value(item, "00081155")
        for item in data.get("00081199", {}).get("Value", [])
        if isinstance(item, dict)
    }
    failed = {
        _value(item, "00081155"): int(_value(item, "00081197") or 0x0110)
        for item in data.get("00081198", {}).get("Value", [])
        if isinstance(item, dict)
    }
    return StowOutcome(
        http_status=response.status_code,
        stored=frozenset(uid for uid in stored if uid),
        failed=failed,
        warning=response.headers.get("Warning", ""),
        wire_bytes=wire_bytes,
    )


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]
