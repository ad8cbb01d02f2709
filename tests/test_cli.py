"""The command line: option placement and clean errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from telerad.cli import _parser
from tests.dicom_gateway.conftest import free_port


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "X", "serve"],
        ["serve", "--data-dir", "X"],
        ["--data-dir", "X", "gateway"],
        ["gateway", "--data-dir", "X"],
        ["--data-dir", "X", "gateway", "status"],
        ["--data-dir", "X", "user", "add", "u", "--role", "admin"],
    ],
)
def test_data_dir_counts_before_or_after_the_command(argv: list[str]) -> None:
    # before the fix, `telerad --data-dir X gateway` ran on ./telerad-data (another spool)
    assert _parser().parse_args(argv).data_dir == Path("X")


def test_serve_without_data_dir_uses_the_default() -> None:
    assert _parser().parse_args(["serve"]).data_dir is None


def test_demo_seed_makes_another_study(tmp_path: Path) -> None:
    for seed in (0, 7):
        args = _parser().parse_args(
            ["demo", "--out", str(tmp_path / str(seed)), "--slices", "1", "--seed", str(seed)]
        )
        assert args.func(args) == 0
    first, second = (pydicom.dcmread(tmp_path / s / "0001.dcm") for s in ("0", "7"))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_demo_send_to_nobody_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "telerad.cli", "demo", "--send", "--slices", "1",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "telerad demo: error:" in result.stderr
