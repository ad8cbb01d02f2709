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
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
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
UID = re.compile(r"\d+(\.\d+){3,}")


def _missing(what: str) -> None:
    """Skip on a workstation; in CI (``CI`` set) a missing OHIF build is a failure."""
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
    allowed_origin: str | None = None  # the response's Access-Control-Allow-Origin

    def failed(self, origin: str) -> bool:
        if self.failure is None and self.allowed_origin != origin:
            self.failure = f"{self.status} without Access-Control-Allow-Origin: {origin}"
        return self.failure is not None or (self.status or 0) >= 400

    def __str__(self) -> str:
        outcome = self.failure if self.failure is not None else self.status
        return f"{outcome} {self.method} {self.url}"


class Preflights:
    """ASGI wrapper noting each CORS preflight reaching telerad (its requested headers); it
    changes nothing, so the test can tell that Chromium asked before sending the token."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requested_headers: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = dict(scope["headers"])
            self.requested_headers.append(
                headers.get(b"access-control-request-headers", b"").decode().lower()
            )
        await self.app(scope, receive, send)


@dataclass
class Viewer:
    """telerad and OHIF running, a browser, the study, and the calls recorded so far."""

    api: str
    ohif: str
    token: str
    browser: Browser
    study: dict[str, str]
    instances: list[str]
    directory: Path
    preflights: Preflights
    calls: list[Call] = field(default_factory=list)

    def page(self, width: int = 1024, height: int = 640) -> Page:
        """A fresh browser context on OHIF that sends the token and records DICOMweb calls
        (from now on: ``calls`` starts empty)."""
        self.calls = []
        context = self.browser.new_context(
            viewport={"width": width, "height": height},
            extra_http_headers={"Authorization": f"Bearer {self.token}"},
        )
        root = f"{self.api}/dicomweb"

        def answered(response: Any) -> None:
            if response.url.startswith(root):
                allowed = response.headers.get("access-control-allow-origin")
                call = Call(response.request.method, response.url, response.status,
                            allowed_origin=allowed)  # fmt: skip
                self.calls.append(call)

        def failed(request: Any) -> None:
            if request.url.startswith(root):
                self.calls.append(Call(request.method, request.url, failure=request.failure))

        context.on("response", answered)
        context.on("requestfailed", failed)
        return context.new_page()

    def summary(self) -> str:
        """The calls by kind (UIDs shown as {uid}) and outcome, with how many of each."""
        kinds = Counter(
            f"{c.failure or c.status} {c.method} {UID.sub('{uid}', c.url.split('/dicomweb')[1])}"
            for c in self.calls
        )
        return "\n".join(f"{n:4d} x {kind}" for kind, n in sorted(kinds.items()))

    def failed_calls(self) -> list[str]:
        return [str(c) for c in self.calls if c.failed(self.ohif)]

    @contextmanager
    def explained(self, page: Page) -> Iterator[None]:
        """On failure, say which of OHIF's DICOMweb calls failed (the usual cause) and keep a
        screenshot of the page."""
        try:
            yield
        except Exception as exc:
            failed = "\n  ".join(self.failed_calls()) or "none"
            shot = self.directory / f"failed-{time.monotonic_ns()}.png"
            page.screenshot(path=shot)
            raise AssertionError(
                f"{exc}\nDICOMweb calls that failed:\n  {failed}\nthe page: {shot}\n"
                f"every DICOMweb call:\n{self.summary()}"
            ) from exc


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
    if chromium is None or sync_playwright is None:  # test prerequisites: never a skip
        pytest.fail("chromium (apt-get install chromium) and playwright (pip) are needed")
    directory = tmp_path_factory.mktemp("ohif")
    ohif_socket = bound_socket()
    origin = f"http://127.0.0.1:{ohif_socket.getsockname()[1]}"
    with catalog_url(request.param, directory) as url, pytest.MonkeyPatch.context() as env:
        env.setenv("TELERAD_VIEWER__CORS_ORIGINS", json.dumps([origin]))
        settings = Settings(data_dir=directory / "data", database={"url": url})
        assert settings.viewer.cors_origins == [origin]
        services = build_services(settings)
        with services.writer.begin() as session:
            create_site(session, "county1", issuer="COUNTY1", ae_titles=("CT1",))
            create_user(session, "rad1", PASSWORD, "radiologist", reads_for=("county1",))
            site_token = create_site_token(session, "county1")
        try:
            preflights = Preflights(create_app(settings, services))
            with serving(preflights) as api:
                study, instances = _store_study(api, site_token)
                form = {"username": "rad1", "password": PASSWORD}
                token = httpx.post(f"{api}/api/auth/token", data=form).json()["access_token"]
                app = ohif_app(dist, ohif_config(f"{api}/dicomweb"))  # type: ignore[arg-type]
                with serving(app, ohif_socket) as ohif, sync_playwright() as playwright:
                    launch = playwright.chromium.launch
                    browser = launch(executable_path=chromium, args=CHROMIUM_ARGS)
                    try:
                        yield Viewer(
                            api, ohif, token, browser, study, instances, directory, preflights
                        )
                    finally:
                        browser.close()
        finally:
            services.close()


# --- helpers --------------------------------------------------------------------------------


def _eventually(page: Page, check: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    """Poll ``check`` until true. Waiting through Playwright (not ``time.sleep``) lets it
    deliver the page's events (the calls recorded) in between."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        page.wait_for_timeout(50)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


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

    _eventually(page, check, what)
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
    page = viewer.page(width=1400, height=900)  # narrower, OHIF's list hides Accession
    with viewer.explained(page):
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
        assert any("authorization" in h for h in viewer.preflights.requested_headers)

        patient = page.locator("input").first  # the Patient column's filter
        patient.fill("Tester")
        for name, shown in (("Tester", 1), ("Nobody", 0)):  # wildcard search, OHIF's *x*
            patient.fill(name)
            query = f"PatientName=*{name}*"
            searched = lambda q=query: any(q in c.url and c.status for c in viewer.calls)  # noqa: E731
            _eventually(page, searched, f"OHIF searches {query}")
            _eventually(page, lambda n=shown: row.count() == n, f"{query}: {shown} row")
        print(viewer.summary())  # shown with -s, or when the test fails
        assert viewer.failed_calls() == []
    page.context.close()


def test_viewer_shows_thumbnails_the_image_and_scrolls_to_the_last_slice(viewer: Viewer) -> None:
    page = viewer.page()
    with viewer.explained(page):
        page.goto(f"{viewer.ohif}/viewer?StudyInstanceUIDs={viewer.study['uid']}")
        thumbnail = page.locator('[data-cy="study-browser-thumbnail"] img').first
        thumbnail.wait_for(timeout=TIMEOUT_S * 1000)
        drawn = "img => img.complete && img.naturalWidth > 0"
        _eventually(page, lambda: thumbnail.evaluate(drawn), "the series thumbnail is drawn")
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
        _eventually(
            page, lambda: _position(page) == (2, SLICES), "one wheel step shows the next slice"
        )
        second = _image_drawn(page, "scrolling changes the image", unlike=first)

        for index in range(3, SLICES + 1):  # one slice per wheel step, to the last
            page.mouse.wheel(0, 120)
            _eventually(
                page, lambda i=index: _position(page) == (i, SLICES), f"slice {index} shown"
            )
        last = _image_drawn(page, "the last slice is drawn", unlike=second)
        assert np.abs(last - first).mean() > 1.0

        frames = {
            c.url.split("/instances/")[1].split("/")[0]
            for c in viewer.calls
            if "/frames/" in c.url and c.status == 200
        }
        assert frames == set(viewer.instances), "every slice's pixels came from WADO-RS frames"
        print(viewer.summary())  # shown with -s, or when the test fails
        assert viewer.failed_calls() == []
    page.context.close()
