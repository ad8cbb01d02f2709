"""dcmtk's command-line tools by absolute path.

pynetdicom installs console scripts called ``storescu``, ``findscu``, … that shadow dcmtk's on
PATH; the tests mean dcmtk's (OFFIS), so they are looked up in the system directories.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

_SYSTEM_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/dcmtk/bin")


def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool; skips the test when dcmtk is not installed."""
    for directory in _SYSTEM_DIRS:
        candidate = Path(directory) / tool
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(tool)
    if found and "pyenv" not in found and "site-packages" not in found:
        return found
    pytest.skip(f"dcmtk's {tool} is not installed")
    raise AssertionError  # pragma: no cover
