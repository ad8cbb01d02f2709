"""Routing administration (``/api/worklist/rules|pools|readers``, administrators only) and the
county's order for a study (``/api/studies/{study}/request``).

================================== ========================================================
GET  /api/worklist/rules           the routing rules in order
POST /api/worklist/rules           add a rule (201)
PUT  /api/worklist/rules/{id}      replace a rule
DELETE /api/worklist/rules/{id}    remove a rule (204)
GET  /api/worklist/pools           the pools and their members
PUT  /api/worklist/pools/{name}    create or replace a pool ``{"description", "members"}``
DELETE /api/worklist/pools/{name}  remove a pool (204)
GET|PUT /api/worklist/readers/{u}  a radiologist's working hours, cap, subspecialties
GET|PUT /api/studies/{study}/request  the order: priority, question, history, referrer
================================== ========================================================

A rule names its site, assignee and pools by name; criteria left out match anything. The
order may be PUT by a radiographer of the study's site or an admin (201 when created), before
or after the study arrives; its ``referrer`` is the username of a referrer account of the same
site (an admin may name one of another site).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from telerad.storage import ReadingRequest, Site, User, record_access
from telerad.viewer_api.deps import AddressDep, ServicesDep
from telerad.viewer_api.routes.worklist import ActorDep, AdminDep, PolicyDep
from telerad.worklist import (
    Actor,
    OrderFields,
    PoolView,
    ProfileView,
    RuleFields,
    RuleView,
    delete_pool,
    delete_rule,
    get_reader_profile,
    get_reading_request,
    list_pools,
    list_rules,
    put_reading_request,
    save_pool,
    save_reader_profile,
    save_rule,
)

router = APIRouter(tags=["worklist administration"])
orders = APIRouter(tags=["orders"])
Name = Annotated[str, Field(max_length=64)]


class RuleIn(BaseModel):
    """A routing rule (names; null criteria match anything)."""

    model_config = ConfigDict(extra="forbid")
    position: int = Field(default=0, ge=0, le=1_000_000)
    name: str = Field(default="", max_length=64)
    active: bool = True
    site: Name | None = None
    modality: str | None = Field(default=None, max_length=16)
    body_part: Name | None = None
    priority: str | None = Field(default=None, max_length=8)
    assignee: Name | None = None
    pool: Name | None = None
    escalation_pool: Name | None = None
    set_priority: str | None = Field(default=None, max_length=8)


class RuleOut(RuleIn):
    """A stored rule."""

    id: int


class PoolIn(BaseModel):
    """A pool's description and members (radiologist usernames)."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field(default="", max_length=256)
    members: list[Name] = Field(default_factory=list, max_length=500)


class PoolOut(BaseModel):
    """A pool."""

    id: int
    name: str
    description: str
    members: list[str]


class ProfileIn(BaseModel):
    """Working hours ``{"mon": [["08:00", "17:00"]], …}`` in ``timezone`` (null: always)."""

    model_config = ConfigDict(extra="forbid")
    timezone: str = Field(default="UTC", max_length=64)
    working_hours: dict[str, list[list[str]]] | None = Field(default=None, max_length=7)
    max_open_tasks: int | None = Field(default=None, ge=0, le=10_000)
    subspecialties: list[Name] = Field(default_factory=list, max_length=20)


class ProfileOut(ProfileIn):
    """A reader's profile."""

    username: str
    last_assigned_at: datetime | None


class OrderIn(BaseModel):
    """The county's order for reading a study."""

    model_config = ConfigDict(extra="forbid")
    priority: str = Field(default="ROUTINE", max_length=8)
    clinical_question: str = Field(default="", max_length=4000)
    history: str = Field(default="", max_length=8000)
    body_part: str = Field(default="", max_length=64)
    accession_number: str = Field(default="", max_length=64)
    referrer: Name | None = None
    site: Name | None = None


class OrderOut(BaseModel):
    """A stored order."""

    study_uid: str
    site: str | None
    priority: str
    clinical_question: str
    history: str
    body_part: str
    accession_number: str
    referrer: str | None
    requested_by: str | None
    created_at: datetime
    updated_at: datetime


@router.get("/rules")
def get_rules(services: ServicesDep, _admin: AdminDep) -> list[RuleOut]:
    """The routing rules in the order they are tried."""
    with services.sessions() as session:
        return [_rule_out(view) for view in list_rules(session)]


@router.post("/rules", status_code=201)
def add_rule(
    body: RuleIn, services: ServicesDep, admin: AdminDep, request: Request, address: AddressDep
) -> RuleOut:
    """Add a routing rule."""
    with services.writer.begin() as session:
        view = save_rule(session, RuleFields(**body.model_dump()))
        audit_admin_change(
            session, admin, address, "worklist-rule", request, f"added rule {view.id}"
        )
    return _rule_out(view)


@router.put("/rules/{rule_id}")
def replace_rule(
    rule_id: int, body: RuleIn, services: ServicesDep, admin: AdminDep, request: Request,
    address: AddressDep,
) -> RuleOut:  # fmt: skip
    """Replace a routing rule."""
    with services.writer.begin() as session:
        view = save_rule(session, RuleFields(**body.model_dump()), rule_id)
        audit_admin_change(
            session, admin, address, "worklist-rule", request, f"replaced rule {rule_id}"
        )
    return _rule_out(view)


@router.delete("/rules/{rule_id}", status_code=204)
def remove_rule(
    rule_id: int, services: ServicesDep, admin: AdminDep, request: Request, address: AddressDep
) -> Response:
    """Remove a routing rule."""
    with services.writer.begin() as session:
        delete_rule(session, rule_id)
        audit_admin_change(
            session, admin, address, "worklist-rule", request, f"removed rule {rule_id}"
        )
    return Response(status_code=204)


@router.get("/pools")
def get_pools(services: ServicesDep, _admin: AdminDep) -> list[PoolOut]:
    """Every pool with its members."""
    with services.sessions() as session:
        return [_pool_out(view) for view in list_pools(session)]


@router.put("/pools/{name}")
def put_pool(
    name: str, body: PoolIn, services: ServicesDep, admin: AdminDep, request: Request,
    address: AddressDep,
) -> PoolOut:  # fmt: skip
    """Create or replace a pool."""
    with services.writer.begin() as session:
        view = save_pool(session, name, body.description, tuple(body.members))
        audit_admin_change(session, admin, address, "worklist-pool", request, f"pool {name}")
    return _pool_out(view)


@router.delete("/pools/{name}", status_code=204)
def remove_pool(
    name: str, services: ServicesDep, admin: AdminDep, request: Request, address: AddressDep
) -> Response:
    """Remove a pool (its tasks and rules lose it)."""
    with services.writer.begin() as session:
        delete_pool(session, name)
        audit_admin_change(
            session, admin, address, "worklist-pool", request, f"removed pool {name}"
        )
    return Response(status_code=204)


@router.get("/readers/{username}")
def get_reader(username: str, services: ServicesDep, _admin: AdminDep) -> ProfileOut:
    """A radiologist's working hours, cap on open tasks and subspecialties."""
    with services.sessions() as session:
        return _profile_out(get_reader_profile(session, username))


@router.put("/readers/{username}")
def put_reader(
    username: str, body: ProfileIn, services: ServicesDep, admin: AdminDep, request: Request,
    address: AddressDep,
) -> ProfileOut:  # fmt: skip
    """Replace a radiologist's profile."""
    with services.writer.begin() as session:
        view = save_reader_profile(
            session, username, timezone=body.timezone,
            working_hours=dict(body.working_hours) if body.working_hours else None,
            max_open_tasks=body.max_open_tasks, subspecialties=tuple(body.subspecialties),
        )  # fmt: skip
        audit_admin_change(
            session, admin, address, "worklist-reader", request, f"profile {username}"
        )
    return _profile_out(view)


@orders.put("/{study}/request")
def put_order(
    study: str, body: OrderIn, services: ServicesDep, actor: ActorDep, policy: PolicyDep,
    request: Request, response: Response, address: AddressDep,
) -> OrderOut:  # fmt: skip
    """Create (201) or replace (200) the order of ``study``."""
    with services.writer.begin() as session:
        order, created = put_reading_request(
            session, study, actor, OrderFields(**body.model_dump()), policy
        )
        audit_admin_change(
            session, actor, address, "order", request, f"priority={order.priority}", study
        )
        out = _order_out(session, order)
    response.status_code = 201 if created else 200
    return out


@orders.get("/{study}/request")
def get_order(
    study: str, services: ServicesDep, actor: ActorDep, request: Request, address: AddressDep
) -> OrderOut:
    """The order of ``study`` (404 if there is none or the caller may not see it)."""
    with services.sessions() as session:
        out = _order_out(session, get_reading_request(session, study, actor))
    with services.writer.begin() as session:
        audit_admin_change(session, actor, address, "order-read", request, "", study)
    return out


def _order_out(session: Session, order: ReadingRequest) -> OrderOut:
    def username(user_id: int | None) -> str | None:
        user = session.get(User, user_id) if user_id else None
        return user.username if user else None

    site = session.get(Site, order.site_id) if order.site_id else None
    return OrderOut(
        study_uid=order.study_uid, site=site.name if site else None, priority=order.priority,
        clinical_question=order.clinical_question, history=order.history,
        body_part=order.body_part, accession_number=order.accession_number,
        referrer=username(order.referrer_user_id),
        requested_by=username(order.requested_by_user_id),
        created_at=order.created_at, updated_at=order.updated_at,
    )  # fmt: skip


def _rule_out(view: RuleView) -> RuleOut:
    fields = view.fields
    return RuleOut(id=view.id, **{k: getattr(fields, k) for k in RuleIn.model_fields})


def _pool_out(view: PoolView) -> PoolOut:
    return PoolOut(
        id=view.id, name=view.name, description=view.description, members=list(view.members)
    )


def _profile_out(view: ProfileView) -> ProfileOut:
    return ProfileOut(
        username=view.username, timezone=view.timezone, working_hours=view.working_hours,
        max_open_tasks=view.max_open_tasks, subspecialties=list(view.subspecialties),
        last_assigned_at=view.last_assigned_at,
    )  # fmt: skip


def audit_admin_change(
    session: Session, actor: Actor, address: str, action: str, request: Request, detail: str,
    study_uid: str | None = None,
) -> None:  # fmt: skip
    """Record an administrative change in the audit log, in the change's own transaction."""
    record_access(
        session, actor=actor.name, actor_role=actor.role, action=action,
        resource=request.url.path, source_address=address,
        study_uids=[study_uid] if study_uid else [], detail=detail,
    )  # fmt: skip
