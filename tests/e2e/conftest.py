"""Fixtures of the end-to-end suite: a real Kubernetes cluster and the images its pods run.

The suite is selected with ``pytest -m e2e`` (or ``HEADRACE_E2E=1``); a plain
``pytest`` run deselects it and says so in its summary, because it builds a
cluster (about 10 minutes the first time on a machine) and needs root.

Once selected, it never skips: when the cluster cannot come up or an image
cannot be built, every test fails with the reason. See docs/e2e.md.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.e2e import cluster as cluster_mod
from tests.e2e.harness import HERE, ROOT, E2EError, Kube, build_image, find_tool, log, wait_for

_DESELECTED: list[int] = []
LOCK_FILE = Path(os.environ.get("HEADRACE_E2E_LOCK", "/tmp/headrace-e2e.lock"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e: end-to-end test on a real Kubernetes cluster (docs/e2e.md); select with -m e2e",
    )


def _e2e_selected(config: pytest.Config) -> bool:
    expr = config.getoption("markexpr", "") or ""
    return os.environ.get("HEADRACE_E2E") == "1" or ("e2e" in expr and "not e2e" not in expr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _e2e_selected(config):
        return
    e2e = [item for item in items if item.get_closest_marker("e2e") is not None]
    if e2e:
        config.hook.pytest_deselected(items=e2e)
        items[:] = [item for item in items if item.get_closest_marker("e2e") is None]
        _DESELECTED.append(len(e2e))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _DESELECTED:
        terminalreporter.write_line(
            f"e2e: {sum(_DESELECTED)} end-to-end tests not run; select them with `pytest -m e2e` "
            "(builds a Kubernetes cluster here, needs root; see docs/e2e.md)",
            yellow=True,
        )


def _use_existing_cluster() -> bool:
    return bool(os.environ.get("KUBECONFIG")) and os.environ.get("HEADRACE_E2E_BUILD_CLUSTER") != "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A failed e2e step reports the cluster's side: pods, events, logs, Dataflows.
    rep = yield
    if rep.when == "call" and rep.failed:
        for value in getattr(item, "funcargs", {}).values():
            diagnostics = getattr(value, "diagnostics", None)
            if callable(diagnostics) and not isinstance(value, Kube):
                try:
                    rep.sections.append(("e2e diagnostics", diagnostics()))
                except Exception as e:
                    rep.sections.append(("e2e diagnostics", f"could not collect: {e}"))
                break
    return rep


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """The cluster under test: built here (default) or the one in ``KUBECONFIG``."""
    # Two sessions on one cluster would install two operators that fight over
    # the same Dataflows: only one session per machine.
    lock = open(LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        pytest.fail(f"another e2e session holds {LOCK_FILE}; wait for it to finish")
    try:
        yield from _kube()
    finally:
        lock.close()


def _kube() -> Iterator[Kube]:
    t0 = time.monotonic()
    if _use_existing_cluster():
        bin_dir = Path(cluster_mod.versions()["E2E_BIN"])
        k = Kube(
            env=dict(os.environ),
            kubectl_bin=find_tool("kubectl", bin_dir),
            helm_bin=find_tool("helm", bin_dir),
            image_prefix=os.environ.get("HEADRACE_E2E_IMAGE_PREFIX", ""),
            load_cmd=os.environ.get("HEADRACE_E2E_LOAD", ""),
        )
        try:
            k.kubectl("get", "--raw", "/readyz")
        except E2EError as e:
            pytest.fail(f"the cluster in KUBECONFIG={os.environ['KUBECONFIG']} does not answer: {e}")
        log(f"using the existing cluster in KUBECONFIG={os.environ['KUBECONFIG']}")
        # Only the image tools and Prometheus (for the tools image) are needed here.
        build = subprocess.run([str(HERE / "build.sh"), "prometheus"], check=False)
        if build.returncode != 0:
            pytest.fail(f"tests/e2e/build.sh prometheus failed ({build.returncode}); its output is above")
        yield k
        for ns in k.namespaces:
            k.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        return

    if os.geteuid() != 0:
        pytest.fail(
            "the e2e suite builds a Kubernetes cluster on this machine and needs root; "
            "run as root, or point KUBECONFIG at an existing cluster (docs/e2e.md)"
        )
    log("tests/e2e/build.sh (cached binaries are reused)")
    build = subprocess.run([str(HERE / "build.sh")], check=False)
    if build.returncode != 0:
        pytest.fail(f"tests/e2e/build.sh failed ({build.returncode}); its output is above")
    own = False
    c = cluster_mod.current()
    if c is not None and c.pid("kube-apiserver") and c._node_ready():
        log(f"reusing the running cluster in {c.dir} (left up by `cluster.sh up`)")
    else:
        if c is not None:
            log(f"the recorded cluster in {c.dir} is not healthy: tearing it down")
            cluster_mod.down()
        try:
            c = cluster_mod.up()
        except cluster_mod.ClusterError as e:
            pytest.fail(f"the e2e cluster did not come up: {e}")
        own = True
    log(f"cluster ready after {time.monotonic() - t0:.0f} s")
    k = Kube(env=c.env(), kubectl_bin=str(c.bin / "kubectl"), helm_bin=str(c.bin / "helm"), built=c)
    yield k
    if own and os.environ.get("HEADRACE_E2E_KEEP") != "1":
        cluster_mod.down()
        rest = cluster_mod.leftovers()
        if rest:
            pytest.fail("the e2e cluster left things behind: " + "; ".join(rest))
    else:
        for ns in k.namespaces:
            k.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="session")
def headrace_image(kube: Kube) -> str:
    """The project's image, built from the root Dockerfile over the Debian base and loaded.

    With the ``kafka`` extra (the way docs/kubernetes.md builds it for Kafka
    flows): the suite runs a Kafka-to-Kafka Dataflow too.
    """
    name = "localhost/headrace:e2e"
    if os.environ.get("HEADRACE_E2E_IMAGE"):
        return os.environ["HEADRACE_E2E_IMAGE"]
    try:
        archive = build_image(ROOT / "Dockerfile", name, build_args=["HEADRACE_EXTRAS=operator,kafka"])
        kube.load_image(archive, name)
    except (E2EError, cluster_mod.ClusterError) as e:
        pytest.fail(f"could not build or load the Headrace image: {e}")
    return kube.image(name)


@pytest.fixture(scope="session")
def tools_image(kube: Kube) -> str:
    """Redis (Debian's package) and Prometheus (built by build.sh) in one image, loaded."""
    name = "localhost/headrace-e2e/tools:1"
    v = cluster_mod.versions()
    context = Path(v["E2E_DIR"]) / "tools-context"
    try:
        prometheus = Path(v["E2E_BIN"]) / "prometheus"
        if not prometheus.exists():
            raise E2EError(f"{prometheus} is missing: run tests/e2e/build.sh")
        context.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "images" / "tools.Dockerfile", context / "Dockerfile")
        shutil.copy2(prometheus, context / "prometheus")
        archive = build_image(context / "Dockerfile", name, context=context)
        kube.load_image(archive, name)
    except (E2EError, cluster_mod.ClusterError, OSError) as e:
        pytest.fail(f"could not build or load the tools image: {e}")
    return kube.image(name)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace for one test; its pods, events and logs are printed if the test fails."""
    ns = kube.create_namespace("e2e")
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


__all__ = ["wait_for"]
