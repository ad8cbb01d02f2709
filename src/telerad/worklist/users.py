"""Account administration: list and read users, and change one (deactivate or reactivate,
reset the password, rename, change the sites a radiologist reads for or the site of a
radiographer or referrer), with what the change means for the work in hand.

* A deactivated user can do nothing from his next request on: every request resolves its
  principal from the database (:func:`~telerad.worklist.accounts.active_principal`), so a
  bearer token issued before stops working at once, and sign-in refuses him. Reactivation
  restores the account as it was.
* His work does not wait for him: tasks he holds (IN PROGRESS) go back to SCHEDULED and the
  SCHEDULED tasks assigned to him are unassigned, each with an event in the task's history,
  so that pools, routing and escalation see them again (:func:`return_work_of`). The same
  happens to a radiologist's tasks of the sites he no longer reads for.
* The last active administrator can be neither deactivated nor removed from that role:
  nobody could administer the service afterwards.
* The role is fixed at creation: a radiologist turned referrer would keep signatures,
  claims and referrals that no longer fit; create a new account instead.

Every function works inside the caller's transaction (a writer session); the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from telerad.storage import ReaderSite, Site, User
from telerad.worklist.accounts import (
    AccountError,
    InvalidAccount,
    Role,
    hash_password,
    site_by_name,
)
from telerad.worklist.claims import return_work_of
from telerad.worklist.tasks import Actor

__all__ = [
    "LastAdministrator",
    "UnknownUser",
    "UserChanges",
    "UserView",
    "get_user",
    "list_users",
    "update_user",
]

MAX_FULL_NAME = 128


class UnknownUser(AccountError):
    """No user has that name."""


class LastAdministrator(AccountError):
    """The change would leave no active administrator."""


@dataclass(frozen=True, slots=True)
class UserView:
    """A user as an administrator sees him (never his password hash)."""

    username: str
    full_name: str
    role: str
    site: str | None
    reads_for: tuple[str, ...]
    active: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UserChanges:
    """What to change; ``None`` leaves a field as it is."""

    active: bool | None = None
    full_name: str | None = None
    password: str | None = None
    site: str | None = None
    reads_for: tuple[str, ...] | None = None

    def describe(self) -> str:
        """The change for the audit log and the task history (the password never)."""
        parts = []
        if self.active is not None:
            parts.append(f"active={str(self.active).lower()}")
        if self.full_name is not None:
            parts.append("full name")
        if self.password is not None:
            parts.append("password reset")
        if self.site is not None:
            parts.append(f"site={self.site}")
        if self.reads_for is not None:
            parts.append(f"reads_for={','.join(self.reads_for) or '-'}")
        return "; ".join(parts) or "nothing"


def list_users(session: Session) -> list[UserView]:
    """Every user, by username."""
    users = session.scalars(select(User).order_by(User.username)).all()
    return [_view(session, user) for user in users]


def get_user(session: Session, username: str) -> UserView:
    """One user; :class:`UnknownUser` otherwise."""
    return _view(session, _user(session, username))


def update_user(
    session: Session,
    username: str,
    changes: UserChanges,
    actor: Actor,
    *,
    now: datetime | None = None,
) -> tuple[UserView, list[int]]:
    """Apply ``changes`` to ``username``; the user as he is now and the ids of the tasks handed
    back (see the module docstring). Nothing is changed if any part is refused.

    Raises
    ------
    UnknownUser, UnknownSite, InvalidAccount, LastAdministrator
    """
    now = now or datetime.now(UTC)
    user = _user(session, username)
    role = Role(user.role)
    if changes.site is not None and role not in (Role.RADIOGRAPHER, Role.REFERRER):
        raise InvalidAccount(f"a {role} has no site of his own")
    if changes.reads_for is not None and role != Role.RADIOLOGIST:
        raise InvalidAccount(f"only a radiologist reads for sites, not a {role}")
    if changes.full_name is not None and len(changes.full_name) > MAX_FULL_NAME:
        raise InvalidAccount(f"full name longer than {MAX_FULL_NAME} characters")
    password_hash = hash_password(changes.password) if changes.password is not None else None
    site_id = site_by_name(session, changes.site).id if changes.site is not None else None
    reading = (
        {site_by_name(session, name).id for name in changes.reads_for}
        if changes.reads_for is not None
        else None
    )
    if changes.active is False and user.active and role == Role.ADMIN:
        _keep_an_administrator(session, user)

    reason = f"{username}: {changes.describe()}"
    returned: list[int] = []
    if changes.active is not None and changes.active != user.active:
        user.active = changes.active
        if not changes.active:
            returned += return_work_of(session, user.id, actor, reason, now=now)
    if changes.full_name is not None:
        user.full_name = changes.full_name
    if password_hash is not None:
        user.password_hash = password_hash
    if site_id is not None:
        user.site_id = site_id
    if reading is not None:
        current = set(
            session.scalars(select(ReaderSite.site_id).where(ReaderSite.user_id == user.id))
        )
        for removed in current - reading:
            session.delete(session.get(ReaderSite, (user.id, removed)))
        for added in reading - current:
            session.add(ReaderSite(user_id=user.id, site_id=added))
        if current - reading and user.active:
            lost = frozenset(current - reading)
            handed = return_work_of(session, user.id, actor, reason, site_ids=lost, now=now)
            returned += [task_id for task_id in handed if task_id not in returned]
    session.flush()
    return _view(session, user), returned


def _keep_an_administrator(session: Session, user: User) -> None:
    """Refuse to deactivate the last active administrator. The active administrators' rows
    are locked (PostgreSQL), so two administrators deactivating each other at once cannot
    both pass; SQLite writer sessions run one at a time anyway."""
    admins = session.scalars(
        select(User.id)
        .where(User.role == Role.ADMIN.value, User.active.is_(True))
        .with_for_update()
    ).all()
    if not set(admins) - {user.id}:
        raise LastAdministrator(f"{user.username} is the last active administrator")


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UnknownUser(f"no user {username[:64]!r}")
    return user


def _view(session: Session, user: User) -> UserView:
    site = session.get(Site, user.site_id) if user.site_id is not None else None
    reads_for = session.scalars(
        select(Site.name)
        .join(ReaderSite, ReaderSite.site_id == Site.id)
        .where(ReaderSite.user_id == user.id)
        .order_by(Site.name)
    ).all()
    return UserView(
        username=user.username,
        full_name=user.full_name,
        role=user.role,
        site=site.name if site else None,
        reads_for=tuple(reads_for),
        active=bool(user.active),
        created_at=user.created_at,
    )
