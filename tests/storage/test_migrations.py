"""The Alembic history builds exactly the schema the models declare, and 0002 and 0003 revert
cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from telerad.storage import Base, migrate
from telerad.storage.database import alembic_config

MANIFEST_TABLES = {"study_manifests", "study_manifest_entries"}
WORKLIST_TABLES = {
    "reading_requests",
    "reading_tasks",
    "task_events",
    "routing_rules",
    "reading_pools",
    "reading_pool_members",
    "reader_profiles",
}
REPORT_TABLES = {"reports", "report_documents"}


def test_migrations_build_the_schema_of_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_manifest_tables_downgrade_and_upgrade_again(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0001")
    without = set(inspect(engine).get_table_names())

    migrate(engine)

    assert not without & MANIFEST_TABLES
    assert set(inspect(engine).get_table_names()) >= MANIFEST_TABLES


def test_worklist_tables_downgrade_and_upgrade_again(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0002")
    without = set(inspect(engine).get_table_names())

    migrate(engine)

    assert not without & WORKLIST_TABLES
    assert set(inspect(engine).get_table_names()) >= WORKLIST_TABLES


def test_report_tables_downgrade_and_upgrade_again(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0003")
    without = set(inspect(engine).get_table_names())

    migrate(engine)

    assert not without & REPORT_TABLES
    assert set(inspect(engine).get_table_names()) >= REPORT_TABLES


DELIVERY_TABLES = {"consultation_messages", "notifications", "site_webhooks", "share_links"}


def test_delivery_tables_downgrade_and_upgrade_again(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0004")
    without = set(inspect(engine).get_table_names())

    migrate(engine)

    assert not without & DELIVERY_TABLES
    assert set(inspect(engine).get_table_names()) >= DELIVERY_TABLES
