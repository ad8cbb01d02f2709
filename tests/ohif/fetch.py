"""Fetch the OHIF Viewer v3 build (``@ohif/app`` from the npm registry) for the OHIF test.

Run ``python tests/ohif/fetch.py`` (``.ci/run`` does): it does nothing when the pinned build is
already there, else downloads the package tarball with ``npm pack`` (npm checks the registry's
integrity hash, and so do we, against the pinned one), and unpacks it next to where it belongs
before renaming it into place, so an interrupted run never leaves a half-written build behind.

Why ``npm pack`` and not ``npm install``: the package's ``dist/`` folder is the complete webpack
build of the viewer (``index.html``, bundles, WebAssembly codecs); its ~40 npm dependencies are
the sources that build was made from and serve no purpose here. ``npm install`` would download
them all (and fails outright on registries that lack any one of them, such as a partial mirror).

The build lives outside the repository, in ``$TELERAD_OHIF_DIR`` or
``~/.cache/telerad/ohif-app-<version>`` (a CI machine keeps it between runs); never commit it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: The pinned OHIF release (``npm view @ohif/app dist-tags``: latest on 2026-11-24).
OHIF_VERSION = "3.13.2"
#: ``npm view @ohif/app@3.13.2 dist.integrity``.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxF"
    "fpq+jd5xXZB9E8EA=="
)
PACKAGE = f"@ohif/app@{OHIF_VERSION}"


def ohif_home() -> Path:
    """Where the pinned build is (or will be) unpacked."""
    configured = os.environ.get("TELERAD_OHIF_DIR")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "telerad" / f"ohif-app-{OHIF_VERSION}"


def ohif_dist() -> Path | None:
    """The build's ``dist`` folder, or None when it has not been fetched."""
    dist = ohif_home() / "package" / "dist"
    return dist if (dist / "index.html").is_file() else None


def _check_integrity(tarball: Path) -> None:
    algorithm, _, expected = OHIF_INTEGRITY.partition("-")
    digest = hashlib.new(algorithm, tarball.read_bytes()).digest()
    if base64.b64encode(digest).decode() != expected:
        raise SystemExit(f"{tarball.name}: integrity mismatch (expected {OHIF_INTEGRITY})")


def fetch() -> Path:
    """Download and unpack the pinned build unless present; its ``dist`` folder."""
    present = ohif_dist()
    if present is not None:
        return present
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to fetch OHIF (apt-get install npm)")
    home = ohif_home()
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=".ohif-") as scratch:
        work = Path(scratch)
        subprocess.run(
            [npm, "pack", PACKAGE, "--pack-destination", str(work), "--silent"],
            check=True, cwd=work, stdout=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
        (tarball,) = work.glob("*.tgz")
        _check_integrity(tarball)
        unpacked = work / "unpacked"
        with tarfile.open(tarball) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: refuse unsafe members
                archive.extractall(unpacked, filter="data")
            else:  # pragma: no cover - the tarball's integrity was checked above
                archive.extractall(unpacked)
        if home.exists():
            shutil.rmtree(home)
        unpacked.rename(home)
    dist = ohif_dist()
    if dist is None:
        raise SystemExit(f"{PACKAGE} has no dist/index.html")
    return dist


if __name__ == "__main__":
    print(f"{PACKAGE}: {fetch()}")
    sys.exit(0)
