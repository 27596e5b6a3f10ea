"""A real headless browser for the e2e suite: Chromium (Debian's package, installed by
``build.sh chromium``), a ``kubectl port-forward`` to reach a Service, and the run's
artifact directory where screenshots go.

Stdlib only, like ``harness.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.harness import E2EError, Kube, log, sh


@functools.cache
def artifact_dir() -> Path:
    """Where this run's artifacts go: ``$HEADRACE_E2E_ARTIFACTS``, else
    ``<tmp>/headrace-e2e-artifacts/<start time>`` (made once per run, its path logged)."""
    base = os.environ.get("HEADRACE_E2E_ARTIFACTS")
    path = (
        Path(base)
        if base
        else Path(tempfile.gettempdir()) / "headrace-e2e-artifacts" / time.strftime("%Y%m%d-%H%M%S")
    )
    path.mkdir(parents=True, exist_ok=True)
    log(f"artifacts of this run: {path}")
    return path


def chromium() -> str:
    """The Chromium binary; fail clearly without it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise E2EError("chromium not found: run tests/e2e/build.sh chromium (as root; Debian's package)")


def headless(url: str, *, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """Load ``url`` in headless Chromium, let the page run ``budget_ms`` of virtual time
    (network fetches pause it), and return the DOM; with ``screenshot``, save a PNG too."""
    # Its profile in a throwaway directory: runs share nothing.
    with tempfile.TemporaryDirectory(prefix="headrace-chromium-") as profile:
        common = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,2600",
            f"--virtual-time-budget={budget_ms}",
            f"--user-data-dir={profile}",
        ]
        dom = sh([*common, "--dump-dom", url], timeout=120).stdout
        if screenshot is not None:
            sh([*common, f"--screenshot={screenshot}", url], timeout=120)
            if not screenshot.exists() or screenshot.stat().st_size == 0:
                raise E2EError(f"Chromium wrote no screenshot of {url} to {screenshot}")
            log(f"screenshot of {url}: {screenshot}")
    return dom


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def port_forward(kube: Kube, namespace: str, service: str, port: int) -> Iterator[str]:
    """``kubectl port-forward svc/<service> <local>:<port>`` while in the block; yields the base URL."""
    local = _free_port()
    proc = subprocess.Popen(
        [kube.kubectl_bin, "port-forward", "-n", namespace, f"svc/{service}", f"{local}:{port}"],
        env=kube.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _answers(local):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                raise E2EError(f"kubectl port-forward svc/{service} {local}:{port} did not come up: {out}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
