"""The gateway's status endpoint and page, for the county radiographer and IT.

``GET /status`` (JSON) and ``GET /`` (HTML, refreshes itself) list per study: instances
received, forwarded, confirmed by the centre, dead-lettered, complete, bytes received and sent,
retries and the last error; ``POST /studies/{uid}/retry`` puts dead-lettered instances back in
the queue. It listens on 127.0.0.1 by default: it shows UIDs and counts, never patient names,
but it has no login and belongs on the gateway's own machine.
"""

from __future__ import annotations

import html
import logging
import socket
import threading
import time
from dataclasses import asdict
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from telerad.dicom_gateway.outbox import Outbox, StudyProgress

logger = logging.getLogger(__name__)
_PRIORITY = {0: "routine", 1: "urgent", 2: "STAT"}


def study_json(progress: StudyProgress) -> dict[str, Any]:
    """One study's figures as JSON."""
    data = asdict(progress)
    data["complete"] = progress.complete
    data["priority"] = _PRIORITY.get(progress.priority, str(progress.priority))
    return data


def create_status_app(outbox: Outbox, info: dict[str, Any]) -> FastAPI:
    """The status application over an outbox; ``info`` is shown as is (AE title, centre)."""
    app = FastAPI(title="telerad gateway", docs_url=None, redoc_url=None)

    @app.get("/status")
    def status(limit: int = 100) -> dict[str, Any]:
        """Counts per state and per-study progress, most recent first."""
        studies = outbox.progress(limit=max(1, min(limit, 1000)))
        return {
            **info,
            "instances": outbox.counts(),
            "studies": [study_json(p) for p in studies],
        }

    @app.post("/studies/{study_uid}/retry")
    def retry(study_uid: str) -> dict[str, int]:
        """Dead-lettered instances of the study go back to the queue."""
        return {"requeued": outbox.retry(study_uid)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        """A self-refreshing table for people."""
        return render_page(outbox.progress(limit=200), outbox.counts(), info)

    return app


def render_page(studies: list[StudyProgress], counts: dict[str, int], info: dict[str, Any]) -> str:
    """The status page's HTML (every value escaped)."""
    rows = "".join(_row(p) for p in studies) or '<tr><td colspan="10">no studies yet</td></tr>'
    summary = ", ".join(f"{html.escape(k)}: {v}" for k, v in counts.items())
    title = html.escape(str(info.get("ae_title", "")))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>telerad gateway {title}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}td.l{{text-align:left}}
progress{{width:8em}}.err{{color:#a00}}</style></head><body>
<h1>telerad gateway {title}</h1><p>centre: {html.escape(str(info.get("centre", "")))}
&middot; instances {summary}</p>
<table><thead><tr><th>study</th><th>priority</th><th>received</th><th>forwarded</th>
<th>confirmed</th><th>progress</th><th>complete</th><th>MB sent</th><th>retries</th>
<th>last error</th></tr></thead><tbody>{rows}</tbody></table></body></html>"""


def _row(p: StudyProgress) -> str:
    done = "yes" if p.complete else (f"dead: {p.dead}" if p.dead else "no")
    error = html.escape(p.last_error or "")
    return (
        f'<tr><td class="l"><code>{html.escape(p.study_uid)}</code></td>'
        f"<td>{_PRIORITY.get(p.priority, p.priority)}</td><td>{p.received}</td>"
        f"<td>{p.forwarded}</td><td>{p.confirmed}</td>"
        f'<td><progress max="{max(p.received, 1)}" value="{p.confirmed}"></progress></td>'
        f"<td>{done}</td><td>{p.bytes_sent / 1e6:.1f}</td><td>{p.retries}</td>"
        f'<td class="l err">{error}</td></tr>'
    )


class StatusServer:
    """uvicorn in a background thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
            name="gateway-status",
        )  # fmt: skip

    def start(self) -> None:
        """Serve until :meth:`stop`."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut down and close the socket."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
