"""``telerad site webhook``: set, refuse a bad URL, remove (SQLite catalog in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from telerad.cli import main
from telerad.storage import SiteWebhook, create_catalog_engine, session_factory


def test_site_webhook_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main([*data, "site", "add", "county9"]) == 0

    set_code = main([*data, "site", "webhook", "county9", "https://h.example.org/t"])
    shown = capsys.readouterr().out
    bad_code = main([*data, "site", "webhook", "county9", "ftp://h.example.org/t"])
    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'telerad.db'}")
    with session_factory(engine)() as session:
        stored = session.scalars(select(SiteWebhook)).one()
    remove_code = main([*data, "site", "webhook", "county9", "--remove"])
    with session_factory(engine)() as session:
        left = session.scalars(select(SiteWebhook)).all()
    engine.dispose()

    assert (set_code, bad_code, remove_code) == (0, 1, 0)
    assert stored.url == "https://h.example.org/t"
    assert f"(X-Telerad-Signature): {stored.secret}" in shown and len(stored.secret) >= 32
    assert left == []
