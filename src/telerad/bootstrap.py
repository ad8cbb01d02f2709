"""First-start set-up of an empty installation: the ``local`` site and the first admin."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from telerad.settings import Settings
from telerad.storage import Site, User
from telerad.worklist import Role, create_site, create_user

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapResult:
    """What the first start created; ``admin_password`` is set only when generated here."""

    created_admin: bool
    created_local_site: bool
    admin_password: str | None


def bootstrap(session: Session, settings: Settings) -> BootstrapResult:
    """Create site ``local`` and user ``admin`` when the database has none (idempotent).

    The admin password is ``TELERAD_ADMIN_PASSWORD`` or, if unset, generated and returned so
    the caller can show it once.
    """
    created_site = False
    if session.scalar(select(Site).where(Site.name == "local")) is None:
        create_site(session, "local", issuer="telerad-local", accept_any_ae=True)
        created_site = True
    if session.scalar(select(func.count()).select_from(User)):
        return BootstrapResult(False, created_site, None)
    given = settings.admin_password.get_secret_value() if settings.admin_password else None
    password = given or secrets.token_urlsafe(12)
    create_user(session, "admin", password, Role.ADMIN, full_name="Administrator")
    return BootstrapResult(True, created_site, None if given else password)
