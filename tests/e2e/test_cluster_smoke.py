"""The cluster itself works for what Headrace needs, before any operator or chart is involved.

A 2-replica StatefulSet of the Headrace image (non-root, read-only root file
system, no capabilities, RuntimeDefault seccomp) behind a headless Service:
both pods become Ready (their readiness needs the TCP mesh between them),
pod DNS resolves the peers' stable names, a deleted pod is recreated by the
StatefulSet controller and rejoins, and a pod lists pods through the
``kubernetes`` Service with its ServiceAccount token. helm and kubectl explain
answer.
"""

from __future__ import annotations

import functools
import json

import pytest

from tests.e2e.harness import HERE, Kube, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


def _ready(kube: Kube, ns: str, pod: str) -> bool:
    p = kube.get("pod", pod, ns)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))


def _in_pod(kube: Kube, ns: str, pod: str, code: str) -> str:
    return kube.kubectl("exec", "-n", ns, pod, "-c", "worker", "--", "python3", "-c", code)


def test_statefulset_of_the_image(kube: Kube, headrace_image: str, namespace: str) -> None:
    ns = namespace
    manifest = (HERE / "manifests" / "smoke.yaml").read_text()
    manifest = manifest.replace("image: IMAGE", f"image: {headrace_image}")
    manifest = manifest.replace("imagePullPolicy: Never", f"imagePullPolicy: {kube.pull_policy}")
    kube.apply(manifest, ns)
    try:
        both = ("smoke-0", "smoke-1")
        wait_for("smoke-0 and smoke-1 Ready", lambda: all(_ready(kube, ns, pod) for pod in both), 180)

        pods = {p["metadata"]["name"]: p for p in kube.pods(ns, "app=smoke")}
        spec = pods["smoke-0"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        # The process really runs as the non-root user, and / is read-only.
        ids = _in_pod(kube, ns, "smoke-0", "import os; print(os.getuid(), os.access('/', os.W_OK))")
        assert ids.split() == ["10001", "False"], ids
        caps = _in_pod(
            kube, ns, "smoke-0", "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0])"
        )
        assert caps.split()[-1] == "0000000000000000", caps

        # Pod DNS: the peer's stable name resolves to its pod IP.
        peer_ip = pods["smoke-1"]["status"]["podIP"]
        resolved = _in_pod(
            kube,
            ns,
            "smoke-0",
            f"import socket; print(socket.gethostbyname('smoke-1.smoke.{ns}.svc.cluster.local'))",
        )
        assert resolved.strip() == peer_ip

        # A ClusterIP Service reaches the pods behind it (also the calling pod itself),
        # once the EndpointSlice controller has listed both Ready pods and
        # kube-proxy has written its rules (both lag pod readiness by a moment:
        # until then the Service's rule rejects connections).
        def endpoints_ready() -> bool:
            slices = json.loads(
                kube.kubectl(
                    "get",
                    "endpointslices",
                    "-n",
                    ns,
                    "-l",
                    "kubernetes.io/service-name=smoke-metrics",
                    "-o",
                    "json",
                )
            )["items"]
            ready = [
                e
                for sl in slices
                for e in sl.get("endpoints") or []
                if (e.get("conditions") or {}).get("ready")
            ]
            return len(ready) == 2

        wait_for("the smoke-metrics EndpointSlice listing both pods", endpoints_ready, 60)
        fetch = (
            "import urllib.request\n"
            "for _ in range(6):\n"
            f"    urllib.request.urlopen('http://smoke-metrics.{ns}.svc/metrics', timeout=5).read()\n"
            "print('ok')\n"
        )
        fetched = wait_for(
            "smoke-metrics answering through its ClusterIP",
            lambda: _in_pod(kube, ns, "smoke-0", fetch).strip() == "ok",
            60,
            interval=2.0,
        )
        assert fetched is True
        if kube.built is not None:
            # The suite's cluster resolves only cluster names: nothing leaves this machine.
            outside = _in_pod(
                kube,
                ns,
                "smoke-0",
                "import socket\n"
                "try:\n"
                "    print(socket.gethostbyname('pypi.org'))\n"
                "except socket.gaierror:\n"
                "    print('unresolved')\n",
            )
            assert outside.strip() == "unresolved"

        # Both workers run the dataflow (each prints its own ticks).
        def ticking(pod: str) -> bool:
            return "tick" in kube.kubectl("logs", "-n", ns, pod, "-c", "worker")

        for pod in ("smoke-0", "smoke-1"):
            wait_for(f"{pod} printing ticks", functools.partial(ticking, pod), 60)

        # A deleted pod is recreated by the StatefulSet controller and becomes Ready again.
        old_uid = pods["smoke-1"]["metadata"]["uid"]
        kube.kubectl("delete", "pod", "-n", ns, "smoke-1", "--wait=false")
        wait_for(
            "smoke-1 recreated and Ready",
            lambda: (
                kube.get("pod", "smoke-1", ns)["metadata"]["uid"] != old_uid and _ready(kube, ns, "smoke-1")
            ),
            180,
        )

        # In-cluster API access through the `kubernetes` Service with the mounted token.
        listing = _in_pod(
            kube,
            ns,
            "smoke-0",
            "import json, ssl, urllib.request\n"
            "d = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
            "ctx = ssl.create_default_context(cafile=d + 'ca.crt')\n"
            "req = urllib.request.Request(\n"
            f"    'https://kubernetes.default.svc/api/v1/namespaces/{ns}/pods',\n"
            "    headers={'Authorization': 'Bearer ' + open(d + 'token').read()})\n"
            "items = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['items']\n"
            "print(json.dumps(sorted(p['metadata']['name'] for p in items)))\n",
        )
        assert json.loads(listing) == ["smoke-0", "smoke-1"]
        # ... and RBAC applies to that token: the Role grants pods only.
        denied = _in_pod(
            kube,
            ns,
            "smoke-0",
            "import ssl, urllib.request, urllib.error\n"
            "d = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
            "ctx = ssl.create_default_context(cafile=d + 'ca.crt')\n"
            "req = urllib.request.Request(\n"
            f"    'https://kubernetes.default.svc/api/v1/namespaces/{ns}/secrets',\n"
            "    headers={'Authorization': 'Bearer ' + open(d + 'token').read()})\n"
            "try:\n"
            "    urllib.request.urlopen(req, context=ctx, timeout=10)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n",
        )
        assert denied.strip() == "403"

        # The suite's failure report reads every pod's container states.
        states = [ln.split() for ln in kube.diagnostics(ns).splitlines() if ln.startswith(("POD ", "smoke-"))]
        assert states[0][:3] == ["POD", "PHASE", "DELETING-SINCE"], states
        assert {row[0] for row in states[1:]} == {"smoke-0", "smoke-1"}, states
    except BaseException:
        print(kube.diagnostics(ns))
        raise


def test_tools_answer(kube: Kube) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["clientVersion"]["gitVersion"].startswith("v1.")
    assert "v0.0.0" not in version["serverVersion"]["gitVersion"]
    assert kube.helm("version", "--short").startswith("v3.")
    explained = kube.kubectl("explain", "statefulset.spec.podManagementPolicy")
    assert "Parallel" in explained
    assert kube.helm("list", "-A", "-o", "json").strip().startswith("[")
