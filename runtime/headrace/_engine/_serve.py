"""The per-process HTTP endpoint: /metrics, /dataflow, /healthz, /readyz.

The server thread waits on the listening socket and on a wake-up pipe, so
`EndpointServer.close` returns at once: `socketserver`'s ``shutdown()``
waits for its loop's next poll, up to half a second, which every run paid
at exit.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from headrace.errors import HeadraceRuntimeError

log = logging.getLogger("headrace.metrics")


class Readiness:
    """What /readyz reports: connected to peers and to the recovery store."""

    def __init__(self) -> None:
        self.peers = False
        self.store = True
        self.running = True
        self.reason = "starting: connecting to peers"

    def ready(self) -> bool:
        return self.peers and self.store and self.running


class EndpointServer:
    """Serves the endpoints on ``host:port`` from a daemon thread.

    With ``fallback`` (a local run that did not choose its port), a port
    already in use is reported in one line on stderr and a free one is used
    instead; otherwise it is an error naming the port.

    >>> srv = EndpointServer("127.0.0.1", 0, lambda: "{}", Readiness())
    >>> srv.port > 0
    True
    >>> srv.close()
    """

    def __init__(
        self,
        host: str,
        port: int,
        dataflow_json: Any,
        readiness: Readiness,
        *,
        fallback: bool = False,
    ) -> None:
        handler = _make_handler(dataflow_json, readiness)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and fallback:
                self.httpd = ThreadingHTTPServer((host, 0), handler)
                print(
                    f"headrace: metrics port {port} on {host} is in use (another run?); serving "
                    f"/metrics on {host}:{self.httpd.server_address[1]} instead",
                    file=sys.stderr,
                    flush=True,
                )
            elif exc.errno == errno.EADDRINUSE:
                msg = (
                    f"metrics port {port} on {host} is already in use; pass another "
                    "--metrics-port (each process of a local cluster needs its own), or 0 to "
                    "disable the endpoint"
                )
                raise HeadraceRuntimeError(msg) from exc
            else:
                msg = f"can't serve metrics on {host}:{port}: {exc}"
                raise HeadraceRuntimeError(msg) from exc
        self.httpd.daemon_threads = True
        self.httpd.timeout = 0  # handle_request() is only called once a client waits
        self.port = self.httpd.server_address[1]
        self._wake_r, self._wake_w = os.pipe()
        self.thread = threading.Thread(target=self._loop, name="headrace-metrics", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.httpd, selectors.EVENT_READ, "request")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while True:
                for key, _events in sel.select():
                    if key.data == "wake":
                        return
                    self.httpd.handle_request()

    def close(self) -> None:
        """Stop serving; returns as soon as the server thread has seen the request."""
        os.write(self._wake_w, b"x")
        self.thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.httpd.server_close()


def _make_handler(dataflow_json: Any, readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/dataflow":
                self._send(200, dataflow_json().encode(), "application/json")
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                if readiness.ready():
                    self._send(200, b"ready\n", "text/plain")
                else:
                    self._send(503, f"not ready: {readiness.reason}\n".encode(), "text/plain")
            else:
                self._send(404, b"try /metrics, /dataflow, /healthz or /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
