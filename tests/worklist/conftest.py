"""A catalog with sites, readers and complete studies, for the worklist's database tests."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from telerad.settings import WorklistSettings
from telerad.storage import (
    Archive,
    IngestSource,
    ReaderSite,
    ReadingTask,
    StudyManifest,
    User,
    session_factory,
    submit_manifest,
)
from telerad.worklist import WorklistPolicy, create_site, hash_password, take_in_study
from tests.factories import ct_instances, manifest_of

PASSWORD = "correct horse battery"
#: name → (role, site, reads_for)
PEOPLE = {
    "admin": ("admin", None, ()),
    "rg1": ("radiographer", "county1", ()),
    "ref1": ("referrer", "county1", ()),
    "ref2": ("referrer", "county2", ()),
    "rad1": ("radiologist", None, ("county1",)),
    "rad2": ("radiologist", None, ("county2",)),
    "rad3": ("radiologist", None, ("county1", "county2")),
}


@dataclass
class World:
    """An archive with two sites and a few people; helpers to complete studies."""

    archive: Archive
    engine: Engine
    sites: dict[str, int]
    users: dict[str, int]
    policy: WorklistPolicy

    def writer(self) -> Session:
        """A writer session (SQLite: BEGIN IMMEDIATE)."""
        return session_factory(self.engine, writer=True)()

    def complete_study(self, site: str = "county1", slices: int = 2) -> str:
        """Store a small CT study for ``site`` and post its manifest: the study completes."""
        instances = ct_instances(slices)
        source = IngestSource(self.sites[site], site.upper(), site)
        for raw in instances:
            self.archive.ingest_instance(raw, source)
        study_uid, entries = manifest_of(instances)
        result = submit_manifest(self.engine, study_uid, entries, self.sites[site])
        assert result.became_complete
        return study_uid

    def take_in(self, study_uid: str, now: datetime | None = None) -> int:
        """Intake of ``study_uid``; the task id."""
        with session_factory(self.engine, writer=True).begin() as session:
            result = take_in_study(session, study_uid, self.policy, now)
        assert result.task_id is not None
        return result.task_id

    def task(self, task_id: int) -> ReadingTask:
        """The task as stored now."""
        with session_factory(self.engine)() as session:
            task = session.get(ReadingTask, task_id)
            assert task is not None
            return task

    def user(self, name: str) -> User:
        """The user row of ``name``."""
        with session_factory(self.engine)() as session:
            user = session.scalar(select(User).where(User.username == name))
            assert user is not None
            return user

    def completed_at(self, study_uid: str) -> datetime:
        """When the study last became complete (UTC)."""
        with session_factory(self.engine)() as session:
            manifest = session.scalar(
                select(StudyManifest).where(StudyManifest.study_uid == study_uid)
            )
            assert manifest is not None and manifest.completed_at is not None
            value = manifest.completed_at
            return value if value.tzinfo else value.replace(tzinfo=UTC)


def make_world(archive: Archive, **settings: object) -> World:
    """Sites county1/county2 and :data:`PEOPLE` in ``archive``'s catalog."""
    with session_factory(archive.engine).begin() as session:
        sites = {
            name: create_site(session, name, issuer=name.upper()).id
            for name in ("county1", "county2")
        }
        users = {
            name: _user(session, name, role, sites, site, reads)
            for name, (role, site, reads) in PEOPLE.items()
        }
    policy = WorklistPolicy.from_settings(WorklistSettings(**settings))  # type: ignore[arg-type]
    return World(archive, archive.engine, sites, users, policy)


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)


def _user(
    session: Session,
    name: str,
    role: str,
    sites: dict[str, int],
    site: str | None,
    reads: tuple[str, ...],
) -> int:
    """A user row with a password hashed once per run (Argon2 is slow on purpose)."""
    user = User(username=name, password_hash=_password_hash(), role=role)
    user.site_id = sites[site] if site else None
    session.add(user)
    session.flush()
    session.add_all(ReaderSite(user_id=user.id, site_id=sites[s]) for s in reads)
    return user.id


@pytest.fixture
def world(archive: Archive) -> World:
    """A fresh world on each database."""
    return make_world(archive)


def later(minutes: float) -> datetime:
    """Now plus ``minutes``."""
    return datetime.now(UTC) + timedelta(minutes=minutes)
