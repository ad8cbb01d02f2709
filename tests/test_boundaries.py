"""Package boundaries: storage ← worklist ← {dicom_gateway, viewer_api}, public ``__all__``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "telerad"
MAY_IMPORT = {
    "storage": set(),
    "worklist": {"storage"},
    "dicom_gateway": {"storage", "worklist"},
    "viewer_api": {"storage", "worklist"},
}


def _imports(path: Path) -> set[tuple[str, str]]:
    """(package imported, module imported) for each telerad import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "telerad" and len(parts) > 1:
                found.add((parts[1], name))
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(package: str) -> None:
    allowed = MAY_IMPORT[package] | {package, "settings"}
    for path in (SRC / package).rglob("*.py"):
        for imported, module in _imports(path):
            assert imported in allowed, f"{path.relative_to(SRC)} imports {module}"
            if imported != package and imported in MAY_IMPORT:
                assert module == f"telerad.{imported}", (
                    f"{path.relative_to(SRC)} imports {module}; use the package's public API"
                )


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_public_api_is_declared(package: str) -> None:
    module = importlib.import_module(f"telerad.{package}")
    assert isinstance(module.__all__, list)
    for name in module.__all__:
        assert hasattr(module, name), f"telerad.{package}.__all__ names missing {name}"
