"""The per-process HTTP endpoint: /metrics, /dataflow, /healthz, /readyz."""

from __future__ import annotations

import errno
import logging
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

    >>> srv = EndpointServer("127.0.0.1", 0, lambda: "{}", Readiness())
    >>> srv.port > 0
    True
    >>> srv.close()
    """

    def __init__(self, host: str, port: int, dataflow_json: Any, readiness: Readiness) -> None:
        handler = _make_handler(dataflow_json, readiness)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                msg = (
                    f"metrics port {port} on {host} is already in use; pass another "
                    "--metrics-port (each process of a local cluster needs its own), or 0 to "
                    "disable the endpoint"
                )
            else:
                msg = f"can't serve metrics on {host}:{port}: {exc}"
            raise HeadraceRuntimeError(msg) from exc
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="headrace-metrics", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
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
