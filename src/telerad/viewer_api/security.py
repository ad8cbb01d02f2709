"""Bearer tokens and who may see what.

Users get short-lived HS256 JWT access tokens from the OAuth2 password flow
(``POST /api/auth/token``); gateways present their site API token (``trs_…``) as a bearer
token. Every request re-reads the user, so deactivation takes effect at once.

Visibility (DESIGN.md, security model): an admin sees every study; a radiographer and a
gateway see their site's; a radiologist the sites he reads for; a referrer exactly the studies
of his site whose order names him as the referring doctor (an explicit referral, never a
free-text name match). A study outside the scope looks exactly like a missing one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import jwt

from telerad.storage import Reader, Scope
from telerad.worklist import Principal, Role, active_principal, authenticate_site_token

ALGORITHM = "HS256"
SITE_TOKEN_PREFIX = "trs_"  # noqa: S105 - a prefix, not a secret


class AuthenticationFailed(Exception):
    """Missing, malformed, expired or revoked credentials (HTTP 401)."""


class PermissionDenied(Exception):
    """Authenticated, but not allowed to do this (HTTP 403)."""


def issue_access_token(principal: Principal, secret: str, minutes: int) -> tuple[str, int]:
    """A signed access token for ``principal`` and its lifetime in seconds."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": principal.name,
        "role": principal.role,
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "typ": "access",
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), minutes * 60


def principal_from_token(session: Reader, token: str, secret: str) -> Principal:
    """Resolve a bearer token (user JWT or site token) to a principal."""
    if token.startswith(SITE_TOKEN_PREFIX):
        principal = authenticate_site_token(session, token)
        if principal is None:
            raise AuthenticationFailed("unknown or revoked site token")
        return principal
    try:
        claims = _verified_claims(token, secret)
    except jwt.PyJWTError as exc:
        raise AuthenticationFailed(f"invalid token: {exc}") from exc
    if claims["exp"] <= time.time():  # the one check that changes with time (RFC 7519 §4.1.4)
        raise AuthenticationFailed("invalid token: Signature has expired")
    if claims.get("typ") != "access":
        raise AuthenticationFailed("not an access token")
    principal = active_principal(session, str(claims["sub"]))
    if principal is None:
        raise AuthenticationFailed("user unknown or disabled")
    return principal


@lru_cache(maxsize=4096)
def _verified_claims(token: str, secret: str) -> Mapping[str, Any]:
    """The claims of ``token``, its signature and claims checked once: a viewer presents the
    same token on every request, and verifying it (0.03 to 0.2 ms) cost as much as the user
    lookup. Only valid tokens are kept (an exception is not cached); expiry, the only claim
    that time can invalidate, is checked by the caller on every use."""
    claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    return MappingProxyType(claims)


def scope_for(principal: Principal, referred: frozenset[str] = frozenset()) -> Scope:
    """The studies ``principal`` may see; ``referred``: the studies whose order names him as
    the referring doctor (:func:`telerad.worklist.referred_study_uids`), for a referrer."""
    if principal.role == Role.ADMIN:
        return Scope(None)
    if principal.role == Role.RADIOLOGIST:
        return Scope(principal.reading_site_ids)
    if principal.role == Role.REFERRER:
        sites = frozenset({principal.site_id}) if principal.site_id is not None else frozenset()
        return Scope(sites, referred)
    return Scope(frozenset({principal.site_id}) if principal.site_id is not None else frozenset())


def may_store(principal: Principal) -> bool:
    """Gateways, radiographers and admins may store instances (STOW-RS)."""
    return principal.is_site_token or principal.role in (Role.ADMIN, Role.RADIOGRAPHER)
