"""User administration (``/api/users``, administrators only).

=============================== ============================================================
GET    /api/users               every user (username, name, role, site, reading sites, active)
POST   /api/users               create one (201); 409 if the username is taken
GET    /api/users/{username}    one user
PATCH  /api/users/{username}    change ``active``, ``full_name``, ``password``, ``site``
                                (radiographer, referrer) or ``reads_for`` (radiologist)
=============================== ============================================================

A deactivated user is refused from his next request on, whatever token he holds; his claimed
and assigned tasks are handed back (``returned_tasks`` in the answer), see
:mod:`telerad.worklist.users`. The last active administrator cannot be deactivated (409).
Every change is audited in the same transaction, naming the fields changed (never the
password). Unknown users are 404, unknown sites and invalid values 400, malformed bodies 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from telerad.viewer_api.deps import AddressDep, ServicesDep
from telerad.viewer_api.routes.worklist import AdminDep
from telerad.viewer_api.routes.worklist_admin import audit_admin_change
from telerad.worklist import (
    Role,
    UserChanges,
    UserView,
    create_user,
    get_user,
    list_users,
    update_user,
)

router = APIRouter(tags=["users"])
Name = Annotated[str, Field(min_length=1, max_length=64)]
Password = Annotated[str, Field(min_length=8, max_length=1024)]


class UserOut(BaseModel):
    """A user as an administrator sees him."""

    username: str
    full_name: str
    role: str
    site: str | None
    reads_for: list[str]
    active: bool
    created_at: datetime


class UserChanged(UserOut):
    """The user after a change, and the tasks handed back by it."""

    returned_tasks: list[int]


class UserIn(BaseModel):
    """A new user."""

    model_config = ConfigDict(extra="forbid")

    username: Name
    role: Role
    password: Password
    full_name: Annotated[str, Field(max_length=128)] = ""
    site: Name | None = None
    reads_for: Annotated[list[Name], Field(max_length=200)] = []


class UserPatch(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    active: bool | None = None
    full_name: Annotated[str | None, Field(max_length=128)] = None
    password: Password | None = None
    site: Name | None = None
    reads_for: Annotated[list[Name] | None, Field(max_length=200)] = None


@router.get("")
def get_users(services: ServicesDep, _admin: AdminDep) -> list[UserOut]:
    """Every user, by username."""
    with services.sessions() as session:
        return [_out(view) for view in list_users(session)]


@router.post("", status_code=201)
def add_user(
    body: UserIn, services: ServicesDep, admin: AdminDep, request: Request, address: AddressDep
) -> UserOut:
    """Create a user (radiographers and referrers need a site)."""
    with services.writer.begin() as session:
        create_user(
            session, body.username, body.password, body.role, site=body.site,
            reads_for=tuple(body.reads_for), full_name=body.full_name,
        )  # fmt: skip
        view = get_user(session, body.username)
        audit_admin_change(
            session, admin, address, "user-add", request, f"{body.username} ({body.role})"
        )
    return _out(view)


@router.get("/{username}")
def get_one_user(username: str, services: ServicesDep, _admin: AdminDep) -> UserOut:
    """One user."""
    with services.sessions() as session:
        return _out(get_user(session, username))


@router.patch("/{username}")
def change_user(
    username: str, body: UserPatch, services: ServicesDep, admin: AdminDep, request: Request,
    address: AddressDep,
) -> UserChanged:  # fmt: skip
    """Change a user; see the module docstring."""
    changes = UserChanges(
        active=body.active, full_name=body.full_name, password=body.password, site=body.site,
        reads_for=tuple(body.reads_for) if body.reads_for is not None else None,
    )  # fmt: skip
    with services.writer.begin() as session:
        view, returned = update_user(session, username, changes, admin)
        detail = f"{username}: {changes.describe()}"
        if returned:
            detail += f"; tasks handed back: {', '.join(map(str, returned))}"
        audit_admin_change(session, admin, address, "user-change", request, detail[:2000])
    return UserChanged(**_out(view).model_dump(), returned_tasks=returned)


def _out(view: UserView) -> UserOut:
    return UserOut(
        username=view.username, full_name=view.full_name, role=view.role, site=view.site,
        reads_for=list(view.reads_for), active=view.active, created_at=view.created_at,
    )  # fmt: skip
