"""uvicorn in a thread of the serving process (``serve --http-port``).

A thread, not a process: ``/healthz`` must see the node's own scheduler thread,
DICOM server thread and receiving children, which live in this process. The
Starlette endpoints are light (database reads, one PNG encode); the demo's model
pass runs in uvicorn's thread pool under a lock.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import TYPE_CHECKING

from dicomnode.config import Settings
from dicomnode.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn

    from dicomnode.web.app import WebContext

logger = logging.getLogger(__name__)

#: Seconds :meth:`WebServer.start` waits for uvicorn to listen.
_START_TIMEOUT_S = 20.0


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse a web server off loopback without ``http.token``.

    Raises:
        ConfigError: one line saying what to set.
    """
    host = settings.dicom.bind_address
    if not is_loopback(host) and not settings.http.token:
        raise ConfigError(
            f"the web server would listen on {host}, beyond this machine: set http.token "
            "(DICOMNODE_HTTP__TOKEN, at least 16 characters) or serve on 127.0.0.1"
        )


class WebServer:
    """The web app served by uvicorn on ``host:port`` in a daemon thread.

    Args:
        context: what the app reads.
        host: address to bind (the node's ``dicom.bind_address``).
        port: TCP port.
    """

    def __init__(self, context: WebContext, host: str, port: int) -> None:
        self.context = context
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start serving and wait until the port listens.

        Raises:
            OSError: the port cannot be bound (``filename`` names ``host:port``).
        """
        import uvicorn

        from dicomnode.web.app import build_app

        config = uvicorn.Config(
            build_app(self.context), host=self.host, port=self.port, log_config=None,
            access_log=False, lifespan="off", server_header=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="dicomnode-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            server.should_exit = True
            thread.join(timeout=5)
            where = f"http {self.host}:{self.port}"
            raise OSError(0, "the web server did not start (port in use?)", where)
        self._server, self._thread = server, thread
        shown = f"[{self.host}]" if ":" in self.host else self.host
        logger.info("web page, API and metrics on http://%s:%d/", shown, self.port)

    def alive(self) -> bool:
        """True while the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop accepting and finish open requests (up to a few seconds)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None
