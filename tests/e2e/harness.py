"""Helpers of the end-to-end suite: kubectl and helm against the cluster under test, waits, images.

The suite runs against one of two targets:

- the cluster that ``cluster.py`` builds on this machine (the default; needs
  root, builds the binaries once with ``build.sh``), or
- an existing cluster named by ``KUBECONFIG`` (kind, k3d, a real cluster),
  with ``HEADRACE_E2E_LOAD`` telling how to load an image archive there
  (``kind load image-archive {archive}``) or ``HEADRACE_E2E_IMAGE_PREFIX``
  naming a registry the images were pushed to.

Stdlib only, like ``cluster.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
T = TypeVar("T")


class E2EError(AssertionError):
    """A step of the end-to-end suite failed; the message says what was expected and what was seen."""


def log(msg: str) -> None:
    """Print a progress line on stderr (shown by pytest with ``-s`` or on failure)."""
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; raise ``E2EError`` with its stderr when it fails."""
    try:
        p = subprocess.run(
            list(argv), env=env, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise E2EError(f"{shlex.join(argv)} timed out after {timeout:.0f} s") from e
    if check and p.returncode != 0:
        raise E2EError(
            f"{shlex.join(argv)} failed ({p.returncode}):\n{p.stderr.strip()[-3000:]}\n{p.stdout[-1000:]}"
        )
    return p


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail naming ``what``.

    Exceptions from ``probe`` count as "not yet"; the last one is in the failure message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise E2EError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!s:.3000}")
        time.sleep(interval)


@dataclass
class Kube:
    """kubectl and helm against the cluster under test."""

    env: dict[str, str]
    kubectl_bin: str
    helm_bin: str
    # Where images come from: "" for images imported into the node.
    image_prefix: str = ""
    load_cmd: str = ""
    # The cluster this suite built (None for an existing cluster).
    built: Any = None
    namespaces: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        """Run kubectl and return its stdout."""
        return sh([self.kubectl_bin, *args], env=self.env, input=input, check=check, timeout=timeout).stdout

    def kubectl_json(self, *args: str) -> Any:
        """Run ``kubectl ... -o json`` and return the parsed output."""
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        """Run helm and return its stdout."""
        return sh([self.helm_bin, *args], env=self.env, check=check, timeout=timeout).stdout

    def apply(self, manifest: str, namespace: str) -> str:
        """``kubectl apply -f -`` of a YAML/JSON document in ``namespace``."""
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def get(self, kind: str, name: str, namespace: str) -> Any:
        """One object as a dict."""
        return self.kubectl_json("get", kind, name, "-n", namespace)

    def exists(self, kind: str, name: str, namespace: str) -> bool:
        """Whether the object exists."""
        out = self.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
        return bool(out.strip())

    def pods(self, namespace: str, selector: str) -> list[Any]:
        """Pods matching a label selector."""
        return list(self.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"])

    def create_namespace(self, prefix: str) -> str:
        """Create a fresh namespace (deleted at the end of the session)."""
        name = f"{prefix}-{os.urandom(3).hex()}"
        self.kubectl("create", "namespace", name)
        self.namespaces.append(name)
        # The ServiceAccount controller makes "default" shortly after; pods need it.
        wait_for(
            f"ServiceAccount default in {name}", lambda: self.exists("serviceaccount", "default", name), 60
        )
        return name

    def image(self, local_name: str) -> str:
        """The reference pods use for an image the suite built (``localhost/...``)."""
        if not self.image_prefix:
            return local_name
        return self.image_prefix.rstrip("/") + "/" + local_name.split("/", 1)[1]

    @property
    def pull_policy(self) -> str:
        """``Never`` for images imported into the node, ``IfNotPresent`` for a registry."""
        return "IfNotPresent" if self.image_prefix else "Never"

    def load_image(self, archive: Path, name: str) -> None:
        """Make a built image available to the cluster's nodes."""
        if self.built is not None:
            self.built.load_image(archive)
        elif self.image_prefix:
            from tests.e2e.cluster import versions

            v = versions()
            root, driver = v["E2E_BUILDAH_ROOT"], v["E2E_BUILDAH_DRIVER"]
            target = self.image(name)
            log(f"pushing {name} to {target}")
            storage = [f"--root={root}/storage-{driver}", f"--runroot={root}/run"]
            sh(
                ["buildah", *storage, f"--storage-driver={driver}", "push", name, f"docker://{target}"],
                timeout=900,
            )
        elif self.load_cmd:
            cmd = self.load_cmd.format(archive=shlex.quote(str(archive)), image=shlex.quote(name))
            log(f"loading {name}: {cmd}")
            sh(["sh", "-c", cmd], env=self.env, timeout=600)
        else:
            raise E2EError(
                "cannot make the suite's images available to the cluster in KUBECONFIG: set "
                "HEADRACE_E2E_LOAD (e.g. 'kind load image-archive {archive}') or push the images "
                "and set HEADRACE_E2E_IMAGE_PREFIX (see docs/e2e.md)"
            )

    def diagnostics(self, namespace: str) -> str:
        """Pods, events and recent logs of a namespace, for failure messages."""
        parts = [
            self.kubectl("get", "pods,statefulsets,services", "-n", namespace, "-o", "wide", check=False),
            # Why a pod is where it is: deleting since when, exit codes, signals.
            self.kubectl(
                "get",
                "pods",
                "-n",
                namespace,
                "-o",
                "custom-columns="
                + ",".join(
                    [
                        "POD:.metadata.name",
                        "PHASE:.status.phase",
                        "DELETING-SINCE:.metadata.deletionTimestamp",
                        "EXIT:.status.containerStatuses[*].state.terminated.exitCode",
                        "FINISHED:.status.containerStatuses[*].state.terminated.finishedAt",
                        "LAST-EXIT:.status.containerStatuses[*].lastState.terminated.exitCode",
                        "LAST-FINISHED:.status.containerStatuses[*].lastState.terminated.finishedAt",
                    ]
                ),
                check=False,
            ),
            self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)[-4000:],
        ]
        for pod in self.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).split():
            logs = self.kubectl("logs", "-n", namespace, pod, "--all-containers", "--tail=30", check=False)
            parts.append(f"--- {pod}\n{logs}")
        return "\n".join(parts)


def build_image(
    dockerfile: Path, tag: str, *, context: Path | None = None, build_args: Sequence[str] = ()
) -> Path:
    """Build an image with ``image.sh`` (buildah over the Debian base) and return its archive."""
    argv = [str(HERE / "image.sh"), "--dockerfile", str(dockerfile), "--tag", tag]
    if context is not None:
        argv += ["--context", str(context)]
    for arg in build_args:
        argv += ["--build-arg", arg]
    t = time.monotonic()
    p = sh(argv, timeout=1800)
    archive = Path(p.stdout.strip().splitlines()[-1])
    log(f"built {tag} in {time.monotonic() - t:.0f} s -> {archive}")
    return archive


def find_tool(name: str, cached_bin: Path | None) -> str:
    """A tool from the suite's cache, else from PATH; fail clearly when neither has it."""
    if cached_bin is not None and (cached_bin / name).exists():
        return str(cached_bin / name)
    found = shutil.which(name)
    if found is None:
        raise E2EError(f"{name} not found: install it or run tests/e2e/build.sh (which builds it)")
    return found
