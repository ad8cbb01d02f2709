"""OHIF Viewer v3, the ``@ohif/app`` build from the npm registry, in headless Chromium against a
live telerad: the study list, the viewer, thumbnails, the image, scrolling to the last slice.

OHIF is served as a hospital would serve it (its ``dist`` folder from a static server on its own
origin) with an ``app-config.js`` naming one DICOMweb data source: telerad's ``/dicomweb`` root,
nothing else (`tests.ohif.server.ohif_config`). telerad runs for real (uvicorn on a free port)
with ``TELERAD_VIEWER__CORS_ORIGINS`` set to OHIF's origin, and holds a 40-slice 512x512 CT
stored with STOW-RS by the county gateway's token.

Authentication: every DICOMweb route needs a bearer token. OHIF would get one from an OpenID
Connect provider (its ``oidc`` configuration), which is out of scope here; instead the browser
context sends a radiologist's token on every request (``extra_http_headers``). The requests stay
cross-origin requests carrying ``Authorization``, so Chromium still sends the CORS preflight and
enforces telerad's answers to it, as it would with an OIDC login.

Every DICOMweb request OHIF makes is recorded; none may fail (HTTP status >= 400, or blocked by
CORS). The build comes from ``python tests/ohif/fetch.py`` (``.ci/run`` runs it): without it the
test is skipped on a workstation and fails in CI (environment variable ``CI`` set).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from telerad.demo import generate_ct_study
from telerad.settings import Settings
from telerad.viewer_api import create_app
from telerad.viewer_api.services import build_services
from telerad.worklist import create_site, create_site_token, create_user
from tests.conftest import DATABASES, PASSWORD, catalog_url
from tests.factories import multipart_related, part10
from tests.ohif.fetch import PACKAGE, ohif_dist
from tests.ohif.server import bound_socket, ohif_app, ohif_config, serving

pytestmark = pytest.mark.slow

SLICES = 40
ACCESSION = "ACC-OHIF-1"
PATIENT = ("Ohif^Tester", "Ohif, Tester")  # as stored, as OHIF's study list shows it
#: headless Chromium with WebGL on SwiftShader (no GPU here; cornerstone3D renders with WebGL)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
]
TIMEOUT_S = 60.0


def _missing(what: str) -> None:
    """Skip on a workstation; in CI (``CI`` set) a missing prerequisite is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must provide it: .ci/run)")
    pytest.skip(what)


try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]


@dataclass
class Call:
    """One request OHIF made to telerad: status, or the network error (CORS, reset)."""

    method: str
    url: str
    status: int | None = None
    failure: str | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None or (self.status or 0) >= 400

    def __str__(self) -> str:
        outcome = self.failure if self.failure is not None else self.status
        return f"{outcome} {self.method} {self.url}"


@dataclass
class Viewer:
    """telerad and OHIF running, a browser, the study, and the calls recorded so far."""

    api: str
    ohif: str
    token: str
    browser: Browser
    study: dict[str, str]
    instances: list[str]
    calls: list[Call] = field(default_factory=list)

    def page(self) -> Page:
        """A fresh browser context on OHIF that sends the token and records DICOMweb calls
        (from now on: ``calls`` starts empty)."""
        self.calls = []
        context = self.browser.new_context(
            viewport={"width": 1400, "height": 900},
            extra_http_headers={"Authorization": f"Bearer {self.token}"},
        )
        root = f"{self.api}/dicomweb"

        def answered(response: Any) -> None:
            if response.url.startswith(root):
                call = Call(response.request.method, response.url, status=response.status)
                self.calls.append(call)

        def failed(request: Any) -> None:
            if request.url.startswith(root):
                self.calls.append(Call(request.method, request.url, failure=request.failure))

        context.on("response", answered)
        context.on("requestfailed", failed)
        return context.new_page()

    def failed_calls(self) -> list[str]:
        return [str(c) for c in self.calls if c.failed]

    @contextmanager
    def explained(self) -> Iterator[None]:
        """On failure, say which of OHIF's DICOMweb calls failed (the usual cause)."""
        try:
            yield
        except Exception as exc:
            failed = "\n  ".join(self.failed_calls()) or "none"
            raise AssertionError(f"{exc}\nDICOMweb calls that failed:\n  {failed}") from exc


def _store_study(api: str, site_token: str) -> tuple[dict[str, str], list[str]]:
    """STOW-RS the CT as the county gateway does; what the study list should show."""
    datasets = list(
        generate_ct_study(SLICES, patient_name=PATIENT[0], patient_id="OHIF-1",
                          accession_number=ACCESSION, seed=7)
    )  # fmt: skip
    body, content_type = multipart_related([part10(ds) for ds in datasets])
    response = httpx.post(
        f"{api}/dicomweb/studies", content=body, timeout=120,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {site_token}"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    first = datasets[0]
    when = datetime.strptime(f"{first.StudyDate}{first.StudyTime}", "%Y%m%d%H%M%S")
    study = {
        "uid": str(first.StudyInstanceUID),
        "patient": PATIENT[1],
        "date": when.strftime("%d-%b-%Y"),  # OHIF: DD-MMM-YYYY hh:mm A
        "time": when.strftime("%I:%M %p"),
        "modality": str(first.Modality),
        "description": str(first.StudyDescription),
        "accession": str(first.AccessionNumber),
        "series": str(first.SeriesDescription),
    }
    return study, [str(ds.SOPInstanceUID) for ds in datasets]


@pytest.fixture(scope="module", params=DATABASES)
def viewer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Viewer]:
    dist = ohif_dist()
    if dist is None:
        _missing(f"{PACKAGE} not fetched: run python tests/ohif/fetch.py")
    chromium = shutil.which("chromium")
    if chromium is None or sync_playwright is None:
        _missing("chromium (apt-get install chromium) and playwright (pip) are needed")
    directory = tmp_path_factory.mktemp("ohif")
    ohif_socket = bound_socket()
    origin = f"http://127.0.0.1:{ohif_socket.getsockname()[1]}"
    with catalog_url(request.param, directory) as url, pytest.MonkeyPatch.context() as env:
        env.setenv("TELERAD_VIEWER__CORS_ORIGINS", json.dumps([origin]))
        settings = Settings(data_dir=directory / "data", database={"url": url})
        assert settings.viewer.cors_origins == [origin]
        services = build_services(settings)
        with services.sessions.begin() as session:
            create_site(session, "county1", issuer="COUNTY1", ae_titles=("CT1",))
            create_user(session, "rad1", PASSWORD, "radiologist", reads_for=("county1",))
            site_token = create_site_token(session, "county1")
        try:
            with serving(create_app(settings, services)) as api:
                study, instances = _store_study(api, site_token)
                form = {"username": "rad1", "password": PASSWORD}
                token = httpx.post(f"{api}/api/auth/token", data=form).json()["access_token"]
                app = ohif_app(dist, ohif_config(f"{api}/dicomweb"))  # type: ignore[arg-type]
                with serving(app, ohif_socket) as ohif, sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=chromium,
                                                         args=CHROMIUM_ARGS)  # fmt: skip
                    try:
                        yield Viewer(api, ohif, token, browser, study, instances)
                    finally:
                        browser.close()
        finally:
            services.close()


# --- helpers --------------------------------------------------------------------------------


def _eventually(check: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def _dismiss(page: Page) -> None:
    """OHIF's first-visit tour and its "investigational use" banner cover parts of the page."""
    for name in ("Skip all", "Confirm and hide"):
        button = page.get_by_role("button", name=name)
        if button.count() and button.first.is_visible():
            button.first.click()


def _pixels(page: Page) -> np.ndarray:
    """The viewport's canvas as the user sees it (a screenshot), in grey levels."""
    png = page.locator("canvas.cornerstone-canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def _shows_an_image(pixels: np.ndarray) -> bool:
    """More than one grey level, and a good part of the canvas lit (not a blank viewport)."""
    return bool(np.unique(pixels).size > 16 and (pixels > 40).mean() > 0.05)


def _image_drawn(page: Page, what: str, unlike: np.ndarray | None = None) -> np.ndarray:
    """Wait until the canvas shows an image (different from ``unlike``, if given)."""
    drawn: list[np.ndarray] = []

    def check() -> bool:
        pixels = _pixels(page)
        if not _shows_an_image(pixels):
            return False
        if unlike is not None and np.abs(pixels - unlike).mean() <= 1.0:
            return False
        drawn.append(pixels)
        return True

    _eventually(check, what)
    return drawn[-1]


def _position(page: Page) -> tuple[int, int] | None:
    """(index, count) from the viewport's "I: n (index/count)" overlay."""
    text = page.locator('[data-cy="viewport-overlay-bottom-right"]').first.inner_text()
    if "(" not in text or "/" not in text:
        return None
    index, count = text.rsplit("(", 1)[1].rstrip(")\n ").split("/")
    return int(index), int(count)


# --- tests ----------------------------------------------------------------------------------


def test_study_list_shows_the_study(viewer: Viewer) -> None:
    page = viewer.page()
    with viewer.explained():
        page.goto(f"{viewer.ohif}/")
        study = viewer.study
        row = page.locator("tr", has_text=study["accession"])
        row.wait_for(timeout=TIMEOUT_S * 1000)
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert cells[:6] == [
            study["patient"],
            f"{study['date']} {study['time']}",
            study["modality"],
            study["description"],
            study["accession"],
            str(SLICES),
        ]
        searches = [c for c in viewer.calls if "/dicomweb/studies?" in c.url]
        assert searches, "OHIF listed the study without a QIDO-RS search"
        assert viewer.failed_calls() == []
        page.context.close()


def test_viewer_shows_thumbnails_the_image_and_scrolls_to_the_last_slice(viewer: Viewer) -> None:
    page = viewer.page()
    with viewer.explained():
        page.goto(f"{viewer.ohif}/viewer?StudyInstanceUIDs={viewer.study['uid']}")
        thumbnail = page.locator('[data-cy="study-browser-thumbnail"] img').first
        thumbnail.wait_for(timeout=TIMEOUT_S * 1000)
        _eventually(lambda: thumbnail.evaluate("img => img.complete && img.naturalWidth > 0"),
                    "the series thumbnail is drawn")  # fmt: skip
        assert (
            viewer.study["series"]
            in page.locator('[data-cy="study-browser-thumbnail"]').first.inner_text()
        )

        first = _image_drawn(page, "the viewport shows an image")
        _dismiss(page)
        assert _position(page) == (1, SLICES)
        box = page.locator("canvas.cornerstone-canvas").first.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 120)
        _eventually(lambda: _position(page) == (2, SLICES), "one wheel step shows the next slice")
        second = _image_drawn(page, "scrolling changes the image", unlike=first)

        def wheel_to_the_end() -> bool:
            if _position(page) == (SLICES, SLICES):
                return True
            page.mouse.wheel(0, 120)
            return False

        _eventually(wheel_to_the_end, "the wheel reaches the last slice", timeout=120)
        last = _image_drawn(page, "the last slice is drawn", unlike=second)
        assert np.abs(last - first).mean() > 1.0

        frames = {c.url.split("/instances/")[1].split("/")[0] for c in viewer.calls
                  if "/frames/" in c.url and c.status == 200}  # fmt: skip
        assert frames == set(viewer.instances), "every slice's pixels came from WADO-RS frames"
        assert viewer.failed_calls() == []
        page.context.close()
