"""``telerad user list|disable|enable|password|reads-for`` on a SQLite catalog in a temp dir:
each change lands, a refused one is a one-line error that changes nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from telerad.cli import main
from telerad.storage import create_catalog_engine, session_factory
from telerad.worklist import authenticate_user, get_user

PASSWORD = "a-long-enough-secret"


def add_user(data: list[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    return main([*data, "user", "add", *argv, "--password-stdin"])


def test_user_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main([*data, "site", "add", "county1"]) == 0
    assert main([*data, "site", "add", "county2"]) == 0
    assert add_user(data, monkeypatch, "boss", "--role", "admin") == 0
    assert (
        add_user(data, monkeypatch, "rad1", "--role", "radiologist", "--reads-for", "county1") == 0
    )
    capsys.readouterr()

    assert main([*data, "user", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split() == ["username", "role", "site", "reads", "for", "active"]
    assert listed[2].split() == ["rad1", "radiologist", "-", "county1", "yes"]

    assert main([*data, "user", "disable", "rad1"]) == 0
    assert "rad1: active=false" in capsys.readouterr().out
    assert main([*data, "user", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[-1] == "NO"
    assert main([*data, "user", "enable", "rad1"]) == 0
    assert main([*data, "user", "reads-for", "rad1", "county2", "county1"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("new-password-123\n"))
    assert main([*data, "user", "password", "rad1", "--password-stdin"]) == 0
    capsys.readouterr()

    refused = [
        ["user", "disable", "boss"],  # the last active administrator
        ["user", "reads-for", "rad1", "nowhere"],
        ["user", "reads-for", "boss", "county1"],  # not a radiologist
        ["user", "enable", "nobody"],
    ]
    for argv in refused:
        assert main([*data, *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err

    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'telerad.db'}")
    try:
        with session_factory(engine)() as session:
            rad1, boss = get_user(session, "rad1"), get_user(session, "boss")
            assert rad1.active and rad1.reads_for == ("county1", "county2")
            assert boss.active
            assert authenticate_user(session, "rad1", "new-password-123") is not None
            assert authenticate_user(session, "rad1", PASSWORD) is None
    finally:
        engine.dispose()
