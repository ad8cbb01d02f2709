"""Honour a trusted reverse proxy's view of the request (RFC 7239 ``Forwarded``, or the de facto
``X-Forwarded-Proto`` / ``X-Forwarded-Host`` / ``X-Forwarded-For``).

Absolute URLs in responses (QIDO RetrieveURL, WADO BulkDataURI) are built from the request's
scheme and host, and the audit log records the client address: behind a proxy those are the
proxy's unless it tells us. Only a peer whose address is in ``viewer.forwarded_allow_ips``
(addresses or networks; ``*`` for any) is believed; anyone else's headers are ignored, so a
client cannot forge its audited address or redirect the URLs we hand out. ``http.public_url``,
when set, still wins for URLs (see ``deps.dicomweb_base``).

``Forwarded`` is preferred when present; from a list of hops the first (the original client's)
is used, since every hop up to us is a trusted proxy we configured.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)\s*')
_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")


class ForwardedHeadersMiddleware:
    """ASGI middleware rewriting ``scheme``, ``Host`` and ``client`` for trusted proxies."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self.app = app
        self.trust_all = "*" in trusted
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted if t != "*"]
        self._verdicts: dict[str, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self._trusted(scope.get("client")):
            _apply(scope, _forwarded(scope["headers"]))
        await self.app(scope, receive, send)

    def _trusted(self, client: tuple[str, int] | None) -> bool:
        if client is None:
            return False
        if self.trust_all:
            return True
        known = self._verdicts.get(client[0])
        if known is None:
            known = self._verdicts[client[0]] = self._trusted_address(client[0])
            if len(self._verdicts) > _MAX_VERDICTS:  # bounded: addresses are the peers'
                self._verdicts.clear()
        return known

    def _trusted_address(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


#: Peer addresses whose trust is remembered (every request asks; parsing costs more).
_MAX_VERDICTS = 4096
#: The only request headers :func:`_forwarded` reads.
_FORWARDING_HEADERS = frozenset(
    {b"forwarded", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-for"}
)


def _forwarded(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """proto/host/for from the first hop of ``Forwarded``, else from the X-Forwarded-*."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.lower()
        if name not in _FORWARDING_HEADERS:
            continue
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = raw_value.decode("latin-1")
    if "forwarded" in headers:
        first = headers["forwarded"].split(",")[0]
        return {k.lower(): v.strip('"') for k, v in _PAIR.findall(first)}
    found = {}
    for key, header in (("proto", "x-forwarded-proto"), ("host", "x-forwarded-host"),
                        ("for", "x-forwarded-for")):  # fmt: skip
        if header in headers:
            found[key] = headers[header].split(",")[0].strip()
    return found


def _apply(scope: Scope, forwarded: dict[str, str]) -> None:
    proto = forwarded.get("proto", "").lower()
    if proto in ("http", "https"):
        scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
    host = forwarded.get("host", "")
    if host and _HOST.fullmatch(host):
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
        scope["headers"].append((b"host", host.encode("latin-1")))
    client = forwarded.get("for", "").strip("[]")
    if client and not client.startswith("_"):
        address = client.rsplit(":", 1)[0] if client.count(":") == 1 else client
        scope["client"] = (address, 0)
