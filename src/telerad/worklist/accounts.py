"""Sites, users and their credentials as domain concepts.

A *site* is a county hospital: its name, the issuer of its patient IDs and the AE titles of its
modalities. A *user* has one role; radiographers and referrers belong to a site; radiologists
read for the sites listed for them. Passwords are hashed with Argon2id; site API tokens (for
gateways) are random and only their SHA-256 is stored.

Errors: :class:`AccountError` → :class:`AccountExists`, :class:`UnknownSite`,
:class:`InvalidAccount`.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from telerad.storage import DirectLookup, Modality, Reader, ReaderSite, Site, SiteToken, User

_HASHER = PasswordHasher()
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_AE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: no backslash, no control chars
#: A hash of a random password, verified when the username is unknown so timing says nothing.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class Role(enum.StrEnum):
    """What a user may do (DESIGN.md, security model)."""

    ADMIN = "admin"
    RADIOGRAPHER = "radiographer"
    RADIOLOGIST = "radiologist"
    REFERRER = "referrer"


class AccountError(Exception):
    """Base class of account errors."""


class AccountExists(AccountError):
    """A user or site with that name exists already."""


class UnknownSite(AccountError):
    """No site has that name."""


class InvalidAccount(AccountError):
    """A name, role, AE title or password is not acceptable."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user, or a site's gateway acting with a site token."""

    name: str
    role: str
    site_id: int | None
    reading_site_ids: frozenset[int] = frozenset()
    is_site_token: bool = False


def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` (at least 8 characters)."""
    if len(password) < 8:
        raise InvalidAccount("password must have at least 8 characters")
    return _HASHER.hash(password)


def create_site(
    session: Session,
    name: str,
    *,
    issuer: str | None = None,
    ae_titles: tuple[str, ...] = (),
    accept_any_ae: bool = False,
) -> Site:
    """Add a site; its issuer of patient IDs defaults to its name."""
    _check_name(name)
    if session.scalar(select(Site).where(Site.name == name)) is not None:
        raise AccountExists(f"site {name!r} exists")
    site = Site(name=name, issuer_of_patient_id=issuer or name, accept_any_ae=accept_any_ae)
    session.add(site)
    session.flush()
    for ae_title in ae_titles:
        add_modality(session, site, ae_title)
    return site


def add_modality(
    session: Session, site: Site, ae_title: str, host: str | None = None, port: int | None = None
) -> Modality:
    """Register a modality's AE title with a site (the gateway accepts only those)."""
    ae_title = ae_title.strip()
    if not _AE_RE.fullmatch(ae_title):
        raise InvalidAccount(f"invalid AE title {ae_title!r}")
    modality = Modality(site_id=site.id, ae_title=ae_title, host=host, port=port)
    session.add(modality)
    session.flush()
    return modality


def site_by_name(session: Session, name: str) -> Site:
    """The site called ``name``; :class:`UnknownSite` otherwise."""
    site = session.scalar(select(Site).where(Site.name == name))
    if site is None:
        raise UnknownSite(f"no site {name!r}")
    return site


def create_user(
    session: Session,
    username: str,
    password: str,
    role: Role | str,
    *,
    site: str | None = None,
    reads_for: tuple[str, ...] = (),
    full_name: str = "",
) -> User:
    """Add a user. Radiographers and referrers need a site; radiologists may read for sites."""
    _check_name(username)
    role = Role(role)
    if role in (Role.RADIOGRAPHER, Role.REFERRER) and site is None:
        raise InvalidAccount(f"a {role} needs a site")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountExists(f"user {username!r} exists")
    site_id = site_by_name(session, site).id if site else None
    user = User(
        username=username,
        full_name=full_name,
        password_hash=hash_password(password),
        role=role.value,
        site_id=site_id,
    )
    session.add(user)
    session.flush()
    for name in reads_for:
        session.add(ReaderSite(user_id=user.id, site_id=site_by_name(session, name).id))
    session.flush()
    return user


def authenticate_user(session: Session, username: str, password: str) -> Principal | None:
    """The principal for a correct username and password, else None (constant-ish time)."""
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    try:
        _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return principal_for_user(session, user) if user else None


def principal_for_user(session: Session, user: User) -> Principal:
    """The principal of an (active) user, with the sites he reads for."""
    reading = frozenset(
        session.scalars(select(ReaderSite.site_id).where(ReaderSite.user_id == user.id))
    )
    return Principal(user.username, user.role, user.site_id, reading)


def active_principal(session: Reader, username: str) -> Principal | None:
    """The principal of the active user ``username`` with the sites he reads for, in one
    query (every authenticated request makes it); None if unknown or deactivated."""
    rows = _principal_lookup().all(session, {"username": username})
    if not rows:
        return None
    reading = frozenset(row.reads for row in rows if row.reads is not None)
    return Principal(username, rows[0].role, rows[0].site_id, reading)


@lru_cache(maxsize=1)
def _principal_lookup() -> DirectLookup:
    """Run on the DBAPI cursor (:class:`telerad.storage.DirectLookup`): every request makes it."""
    return DirectLookup(_principal_statement())


@lru_cache(maxsize=1)
def _principal_statement() -> Select[*tuple[Any, ...]]:
    """Built once: building a statement costs more than running this indexed lookup."""
    return (
        select(User.role, User.site_id, ReaderSite.site_id.label("reads"))
        .outerjoin(ReaderSite, ReaderSite.user_id == User.id)
        .where(User.username == bindparam("username"), User.active.is_(True))
    )


def create_site_token(session: Session, site: str, name: str = "gateway") -> str:
    """Issue a new API token for ``site``'s gateway; the clear token is returned only now."""
    token = "trs_" + secrets.token_urlsafe(32)
    row = SiteToken(site_id=site_by_name(session, site).id, name=name, token_sha256=_digest(token))
    session.add(row)
    session.flush()
    return token


def authenticate_site_token(session: Reader, token: str) -> Principal | None:
    """The site principal for a valid, unrevoked site token, else None."""
    row = session.execute(_site_token_statement(), {"digest": _digest(token)}).first()
    if row is None:
        return None
    return Principal(f"site:{row.name}", "gateway", row.id, is_site_token=True)


@lru_cache(maxsize=1)
def _site_token_statement() -> Select[*tuple[Any, ...]]:
    """Built once (a gateway's every C-FIND authenticates with its token)."""
    return (
        select(Site.id, Site.name)
        .join(SiteToken, SiteToken.site_id == Site.id)
        .where(SiteToken.token_sha256 == bindparam("digest"), SiteToken.revoked_at.is_(None))
    )


def revoke_site_tokens(session: Session, site: str, name: str | None = None) -> int:
    """Revoke every token of ``site`` (or only those labelled ``name``); returns how many were
    active."""
    site_id = site_by_name(session, site).id
    query = select(SiteToken).where(SiteToken.site_id == site_id, SiteToken.revoked_at.is_(None))
    if name is not None:
        query = query.where(SiteToken.name == name)
    rows = session.scalars(query).all()
    for row in rows:
        row.revoked_at = datetime.now(UTC)
    return len(rows)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise InvalidAccount(f"invalid name {name[:64]!r}: letters, digits, _.@- (max 64)")
