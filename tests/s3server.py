"""A real S3 HTTP endpoint for tests: moto's server on a free localhost port.

Importable from any test package (``from tests.s3server import run_moto_server``); each
package wraps it in its own session fixture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from moto.server import ThreadedMotoServer

#: moto accepts any credentials; these are the conventional ones.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


@contextlib.contextmanager
def run_moto_server() -> Iterator[str]:
    """Run moto's S3 server in a thread and yield its endpoint, ``"127.0.0.1:PORT"``.

    Port 0 lets the kernel pick a free port at bind time, so parallel runs cannot collide.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        server.stop()
