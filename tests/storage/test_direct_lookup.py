"""DirectLookup: the image requests' lookups on the DBAPI cursor give what SQLAlchemy's
execution gives, and fail as it fails (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, column, select, table
from sqlalchemy.exc import DBAPIError

from telerad.storage import (
    Archive,
    DirectLookup,
    IngestSource,
    Scope,
    find_instances,
    statement_reader,
)
from telerad.storage.retrieve import _instances_statement
from telerad.worklist.accounts import _principal_statement
from tests.factories import ct_datasets, part10


def test_rows_are_those_of_sqlalchemy(engine: Engine, archive: Archive) -> None:
    datasets = ct_datasets(3)
    for ds in datasets:
        archive.ingest_instance(part10(ds), IngestSource(site_id=None, issuer="T", label="t"))
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    statement = _instances_statement(True, False)
    parameters = {"study_uid": study, "series_uid": series}
    with statement_reader(engine).connect() as connection:
        direct = DirectLookup(statement).all(connection, parameters)
        executed = connection.execute(statement, parameters).all()
        assert len(direct) == 3
        assert [tuple(row) for row in direct] == [tuple(row) for row in executed]
        assert [row._fields for row in direct[:1]] == [tuple(executed[0]._fields)]
        # The public call that uses it, on a bare connection and on a session, agrees too.
        bare = find_instances(connection, Scope(None), study, series)
    with archive.sessions() as session:
        assert find_instances(session, Scope(None), study, series) == bare
    assert [i.sop_instance_uid for i in bare] == [str(d.SOPInstanceUID) for d in datasets]


def test_the_principal_lookup_binds_its_parameter(engine: Engine) -> None:
    lookup = DirectLookup(_principal_statement())
    with statement_reader(engine).connect() as connection:
        assert lookup.all(connection, {"username": "nobody"}) == []
        assert lookup.all(connection, {"username": "it's'; DROP TABLE users; --"}) == []
        assert connection.execute(select(column("id")).select_from(table("users"))).all() == []


def test_errors_are_sqlalchemys(engine: Engine) -> None:
    missing = DirectLookup(select(column("x")).select_from(table("no_such_table")))
    with statement_reader(engine).connect() as connection, pytest.raises(DBAPIError):
        missing.all(connection, {})
