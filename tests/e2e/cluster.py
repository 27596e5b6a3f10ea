"""A real single-node Kubernetes cluster on this machine, for the end-to-end suite.

``python3 tests/e2e/cluster.py up`` starts etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy and
CoreDNS from the binaries that ``build.sh`` cached, with certificates, keys,
kubeconfigs and configs generated into a fresh temporary directory. ``down``
removes everything again: processes, containers, mounts, network namespaces,
the bridge, iptables rules and sysctls. Only one cluster runs at a time; its
state directory is recorded in ``/run/headrace-e2e.json``.

Everything listens on loopback or on the pod bridge ``hre2e0``
(``10.244.77.1/24``); pods cannot route beyond the bridge, containerd's
registry mirror for every registry is a closed loopback port, and CoreDNS
answers only cluster names, so nothing here addresses another machine.

The module uses only the standard library so the CLI runs before the project
is installed; the pytest fixtures import it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
POINTER = Path("/run/headrace-e2e.json")

BRIDGE = "hre2e0"
POD_CIDR = "10.244.77.0/24"
GATEWAY = "10.244.77.1"
SERVICE_CIDR = "10.96.77.0/24"
KUBERNETES_SERVICE_IP = "10.96.77.1"
NODE = "headrace-e2e"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
ETCD_CLIENT = "127.0.0.1:23790"
ETCD_PEER = "127.0.0.1:23800"
COREDNS_READY = "127.0.0.1:18181"
COREDNS_HEALTH = "127.0.0.1:18080"
KUBELET_HEALTHZ = "127.0.0.1:10248"
KUBE_PROXY_HEALTHZ = "127.0.0.1:10256"
# A port nothing listens on: containerd sends every image pull there, so a
# manifest that forgets `imagePullPolicy: Never` fails fast instead of
# reaching a public registry.
CLOSED_REGISTRY = "http://127.0.0.1:9"
CNI_BIN_DIR = "/usr/lib/cni"
CNI_NETWORK = "headrace-e2e"

# Sysctls that the cluster's components change (kubelet's kernel tunables,
# forwarding for Service traffic); `down` puts the previous values back.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)

# Host paths that the kubelet or containerd create outside their configured
# directories; `down` removes them again if `up` found them absent.
HOST_DIRS = ("/var/log/containers", "/run/containerd", "/run/netns", "/var/lib/cni")

# Start order; `down` stops in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "coredns",
    "kubelet",
    "kube-proxy",
)


class ClusterError(RuntimeError):
    """The cluster could not be brought up or torn down; the message says why and what to do."""


def log(msg: str) -> None:
    """Print a progress line on stderr."""
    print(f"[e2e cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@functools.cache
def versions() -> dict[str, str]:
    """Return the pinned versions and cache paths of ``versions.sh``."""
    out = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(HERE / 'versions.sh'))} && env -0"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    env = dict(line.split("=", 1) for line in out.split("\0") if "=" in line)
    keys = [k for k in env if k.startswith(("E2E_", "K8S_", "ETCD_", "COREDNS_", "HELM_", "DEBIAN_"))]
    return {k: env[k] for k in keys}


def run(argv: Sequence[str], *, check: bool = True, quiet: bool = False, **kw: object) -> str:
    """Run a command and return its stdout; raise with its stderr when it fails."""
    p = subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and p.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    if not quiet and p.returncode != 0:
        log(f"ignored: {shlex.join(argv)}: {p.stderr.strip()[-300:]}")
    return str(p.stdout)


# ---------------------------------------------------------------- certificates


def _openssl_cert(
    d: Path, name: str, subject: str, *, server: bool = False, sans: Sequence[str] = ()
) -> None:
    key, csr, crt, ext = (d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)])
    run(["openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)])
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    run(
        [
            *(
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(d / "ca.crt"),
                "-CAkey",
                str(d / "ca.key"),
            ),
            *(
                "-set_serial",
                "0x" + os.urandom(12).hex(),
                "-days",
                "7",
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            ),
        ]
    )
    csr.unlink()
    ext.unlink()


def make_pki(d: Path) -> None:
    """Write a cluster CA, the component certificates and the service-account key pair into ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ),
            *("-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "7"),
            *("-subj", "/CN=headrace-e2e-ca", "-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"),
        ]
    )
    svc = "kubernetes.default.svc"
    _openssl_cert(
        d,
        "apiserver",
        "/CN=kube-apiserver",
        server=True,
        sans=[
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            f"DNS:{svc}",
            f"DNS:{svc}.{CLUSTER_DOMAIN}",
            f"IP:{GATEWAY}",
            f"IP:{KUBERNETES_SERVICE_IP}",
        ],
    )
    _openssl_cert(d, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _openssl_cert(d, "admin", "/O=system:masters/CN=headrace-e2e-admin")
    _openssl_cert(d, "controller-manager", "/CN=system:kube-controller-manager")
    _openssl_cert(d, "scheduler", "/CN=system:kube-scheduler")
    _openssl_cert(d, "kubelet-client", f"/O=system:nodes/CN=system:node:{NODE}")
    _openssl_cert(d, "kubelet", f"/CN={NODE}", server=True, sans=[f"DNS:{NODE}", f"IP:{GATEWAY}"])
    _openssl_cert(d, "kube-proxy", "/CN=system:kube-proxy")
    _openssl_cert(d, "coredns", "/CN=system:coredns")
    run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"])
    run(["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")])
    for key in d.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, pki: Path, user: str) -> None:
    """Write a kubeconfig for client certificate ``pki/<user>.crt`` with the data embedded."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "headrace-e2e",
                "cluster": {
                    "server": f"https://{GATEWAY}:{API_PORT}",
                    "certificate-authority-data": b64(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{user}.crt"),
                    "client-key-data": b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "headrace-e2e", "context": {"cluster": "headrace-e2e", "user": user}}],
        "current-context": "headrace-e2e",
    }
    # JSON is YAML, so every component reads it.
    path.write_text(json.dumps(cfg, indent=1))
    path.chmod(0o600)


# ---------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """One cluster's state directory and the operations on it."""

    dir: Path
    bin: Path

    # ------------------------------------------------------------ paths

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (``system:masters``)."""
        return self.dir / "admin.kubeconfig"

    @property
    def containerd_sock(self) -> Path:
        """containerd's gRPC socket."""
        return self.dir / "containerd" / "containerd.sock"

    def env(self) -> dict[str, str]:
        """Environment for kubectl and helm against this cluster, with the cached binaries first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        # helm keeps its caches in the state directory, not in the user's home.
        env["HELM_CACHE_HOME"] = str(self.dir / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(self.dir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.dir / "helm" / "data")
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run the cached kubectl against this cluster and return its stdout."""
        return run([str(self.bin / "kubectl"), *args], check=check, quiet=True, env=self.env(), input=input)

    def ctr(self, *args: str, check: bool = True, quiet: bool = False) -> str:
        """Run ``ctr`` in containerd's ``k8s.io`` namespace (the one the kubelet uses)."""
        return run(
            ["ctr", "--address", str(self.containerd_sock), "-n", "k8s.io", *args], check=check, quiet=quiet
        )

    def load_image(self, archive: Path) -> None:
        """Import a docker-archive image into containerd, for pods with ``imagePullPolicy: Never``."""
        t = time.monotonic()
        self.ctr("images", "import", str(archive))
        log(f"imported {archive.name} in {time.monotonic() - t:.1f} s")

    # ------------------------------------------------------------ processes

    def _pidfile(self, name: str) -> Path:
        return self.dir / "pids" / f"{name}.pid"

    def _logfile(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        self._logfile(name).parent.mkdir(parents=True, exist_ok=True)
        self._pidfile(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self._logfile(name), "ab") as out:
            p = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                env={**os.environ, "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"},
            )
        self._pidfile(name).write_text(f"{p.pid} {_proc_stat(p.pid)[19]}")

    def pid(self, name: str) -> int | None:
        """The pid of a running component, or None."""
        try:
            pid_s, start = self._pidfile(name).read_text().split()
            pid = int(pid_s)
            stat = _proc_stat(pid)
        except (OSError, ValueError):
            return None
        # The start time guards against a reused pid.
        if stat[19] != start or stat[0] == "Z":
            return None
        return pid

    def log_tail(self, name: str, lines: int = 25) -> str:
        """The last lines of a component's log."""
        try:
            text = self._logfile(name).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def _wait(self, what: str, component: str, probe: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.pid(component) is None:
                raise ClusterError(
                    f"{component} exited while waiting for {what}; its log "
                    f"({self._logfile(component)}) ends with:\n{self.log_tail(component)}"
                )
            try:
                if probe():  # type: ignore[operator]
                    return
            except Exception as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
        raise ClusterError(
            f"timed out after {timeout:.0f} s waiting for {what} ({last}); {component}'s log "
            f"({self._logfile(component)}) ends with:\n{self.log_tail(component)}"
        )

    def _https_ok(self, url: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        ctx.load_cert_chain(str(self.dir / "pki" / "admin.crt"), str(self.dir / "pki" / "admin.key"))
        with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
            return bool(r.status == 200)

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=3) as r:
            return bool(r.status == 200)

    # ------------------------------------------------------------ configs

    def _write_configs(self) -> None:
        d, pki = self.dir, self.dir / "pki"
        for user in ("admin", "controller-manager", "scheduler", "kubelet-client", "kube-proxy", "coredns"):
            write_kubeconfig(d / f"{user}.kubeconfig", pki, user)
        (d / "cni" / "net.d").mkdir(parents=True)
        (d / "cni" / "net.d" / "10-headrace-e2e.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            # No masquerading: pods have no route off this machine.
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(d / "cni" / "ipam"),
                            },
                        },
                        {"type": "loopback"},
                    ],
                },
                indent=1,
            )
        )
        hosts = d / "containerd" / "certs.d" / "_default"
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            f'server = "{CLOSED_REGISTRY}"\n\n'
            f'[host."{CLOSED_REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        c = d / "containerd"
        pause_image = versions()["E2E_PAUSE_IMAGE"]
        (c / "config.toml").write_text(
            f"""version = 2
root = "{c}/root"
state = "{c}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{c}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # Without these two every pod sandbox fails on these machines with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c}/certs.d"
"""
        )
        (d / "kubelet-config.json").write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": GATEWAY,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": KUBELET_HEALTHZ.split(":")[0],
                    "healthzPort": int(KUBELET_HEALTHZ.split(":")[1]),
                    "tlsCertFile": str(pki / "kubelet.crt"),
                    "tlsPrivateKeyFile": str(pki / "kubelet.key"),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
                    # These machines are cgroup v1 (hybrid) without systemd as init.
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "cgroupsPerQOS": False,
                    "enforceNodeAllocatable": [],
                    "failSwapOn": False,
                    # Pods get only the cluster's DNS, never the host's resolvers.
                    "resolvConf": "",
                    "clusterDNS": [GATEWAY],
                    "clusterDomain": CLUSTER_DOMAIN,
                    "podLogsDir": str(d / "pod-logs"),
                    "volumePluginDir": str(d / "kubelet-plugins"),
                    # Imported images cannot be pulled again: never garbage-collect or evict them.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "serializeImagePulls": False,
                    "syncFrequency": "10s",
                    "nodeStatusUpdateFrequency": "5s",
                    "fileCheckFrequency": "10s",
                    "shutdownGracePeriod": "0s",
                },
                indent=1,
            )
        )
        (d / "kube-proxy-config.json").write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
                    "hostnameOverride": NODE,
                    "clusterCIDR": POD_CIDR,
                    "metricsBindAddress": "127.0.0.1:10249",
                    "healthzBindAddress": KUBE_PROXY_HEALTHZ,
                    "nodePortAddresses": [f"{GATEWAY}/32"],
                    # Leave the host's conntrack tuning alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
                },
                indent=1,
            )
        )
        (d / "Corefile").write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {GATEWAY}
    errors
    health {COREDNS_HEALTH}
    ready {COREDNS_READY}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {d}/coredns.kubeconfig headrace-e2e
        pods insecure
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {GATEWAY}
    errors
    # Names outside the cluster are not resolved: nothing in the suite may
    # address another machine.
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""
        )

    # ------------------------------------------------------------ host network and kernel

    def _snapshot_host(self) -> None:
        saved: dict[str, object] = {"sysctl": {}, "dirs": {}}
        for key in SYSCTLS:
            with contextlib.suppress(OSError):
                saved["sysctl"][key] = Path("/proc/sys", key).read_text().strip()  # type: ignore[index]
        for d in HOST_DIRS:
            saved["dirs"][d] = os.path.exists(d)  # type: ignore[index]
        saved["cgroups"] = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/k8s.io"))
        saved["netns"] = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
        saved["iptables"] = {tool: _iptables_save(tool) for tool in ("iptables", "ip6tables")}
        (self.dir / "host-before.json").write_text(json.dumps(saved, indent=1))

    def _setup_network(self) -> None:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # Service traffic between pods is DNAT-ed by kube-proxy on the host,
        # which needs forwarding; bridged traffic must pass iptables for the
        # replies to be un-NAT-ed.
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text("1")
        # Forwarding is on, so stop anything from the pod bridge leaving it
        # for another interface: pods must not reach other machines.
        run(
            [
                *("iptables", "-I", "FORWARD", "1", "-i", BRIDGE, "!", "-o", BRIDGE),
                *("-m", "comment", "--comment", "headrace-e2e: pods stay on this machine", "-j", "DROP"),
            ]
        )

    # ------------------------------------------------------------ up

    def up(self, timeout: float = 180) -> None:
        """Start every component and wait until the node is Ready and cluster DNS answers."""
        t0 = time.monotonic()
        for exe in (
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "kubectl",
            "coredns",
            "helm",
        ):
            if not (self.bin / exe).exists():
                raise ClusterError(f"{self.bin / exe} is missing: run tests/e2e/build.sh first")
        for exe in ("containerd", "runc", "ctr", "iptables", "ip", "openssl"):
            if shutil.which(exe) is None:
                raise ClusterError(f"{exe} is not installed: run tests/e2e/build.sh first (it installs it)")
        pause = Path(versions()["E2E_DIR"]) / "pause.tar"
        if not pause.exists():
            raise ClusterError(f"{pause} is missing: run tests/e2e/build.sh first")

        self._snapshot_host()
        make_pki(self.dir / "pki")
        self._write_configs()
        self._setup_network()
        pki, d = self.dir / "pki", self.dir

        self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name",
                NODE,
                "--data-dir",
                str(d / "etcd"),
                "--listen-client-urls",
                f"http://{ETCD_CLIENT}",
                "--advertise-client-urls",
                f"http://{ETCD_CLIENT}",
                "--listen-peer-urls",
                f"http://{ETCD_PEER}",
                "--initial-advertise-peer-urls",
                f"http://{ETCD_PEER}",
                "--initial-cluster",
                f"{NODE}=http://{ETCD_PEER}",
                "--listen-metrics-urls",
                "",
                "--log-level",
                "warn",
            ],
        )
        self._wait("etcd health", "etcd", lambda: self._http_ok(f"http://{ETCD_CLIENT}/health"), 60)
        log(f"etcd up ({time.monotonic() - t0:.1f} s)")

        self._spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://{ETCD_CLIENT}",
                f"--bind-address={GATEWAY}",
                f"--advertise-address={GATEWAY}",
                f"--secure-port={API_PORT}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=false",
                "--profiling=false",
                f"--cert-dir={d / 'apiserver-certs'}",
                "--v=1",
            ],
        )
        self._wait(
            "kube-apiserver /readyz",
            "kube-apiserver",
            lambda: self._https_ok(f"https://{GATEWAY}:{API_PORT}/readyz"),
            90,
        )
        log(f"kube-apiserver up ({time.monotonic() - t0:.1f} s)")

        self._spawn("containerd", ["containerd", "--config", str(d / "containerd" / "config.toml")])
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={d / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={d / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={d / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={d / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={d / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={d / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.kubectl("apply", "-f", "-", input=COREDNS_RBAC)
        self._spawn("coredns", [str(self.bin / "coredns"), "-conf", str(d / "Corefile")])

        self._wait("containerd's socket", "containerd", lambda: self.containerd_sock.is_socket(), 30)
        self._wait(
            "containerd to answer",
            "containerd",
            lambda: bool(self.ctr("version", check=False, quiet=True)),
            30,
        )
        self.load_image(pause)
        log(f"containerd up ({time.monotonic() - t0:.1f} s)")

        self._spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={d / 'kubelet-config.json'}",
                f"--kubeconfig={d / 'kubelet-client.kubeconfig'}",
                f"--root-dir={d / 'kubelet'}",
                f"--hostname-override={NODE}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-proxy",
            [str(self.bin / "kube-proxy"), f"--config={d / 'kube-proxy-config.json'}", "--v=1"],
        )
        self._wait("node Ready", "kubelet", self._node_ready, timeout)
        log(f"node {NODE} Ready ({time.monotonic() - t0:.1f} s)")
        self._wait(
            "kube-proxy healthz",
            "kube-proxy",
            lambda: self._http_ok(f"http://{KUBE_PROXY_HEALTHZ}/healthz"),
            60,
        )
        self._wait("CoreDNS ready", "coredns", lambda: self._http_ok(f"http://{COREDNS_READY}/ready"), 60)
        self._wait(
            "the default ServiceAccount",
            "kube-controller-manager",
            lambda: bool(self.kubectl("get", "serviceaccount", "default", "-o", "name", check=False).strip()),
            60,
        )
        self._wait(
            "the kube-root-ca.crt ConfigMap",
            "kube-controller-manager",
            lambda: bool(
                self.kubectl("get", "configmap", "kube-root-ca.crt", "-o", "name", check=False).strip()
            ),
            60,
        )
        log(f"cluster up in {time.monotonic() - t0:.1f} s; KUBECONFIG={self.kubeconfig}")

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get", "node", NODE, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False
        )
        return out.strip() == "True"

    # ------------------------------------------------------------ down

    def down(self) -> None:
        """Stop every component and remove containers, mounts, network state, rules and files."""
        t0 = time.monotonic()
        # The kubelet first, so it does not restart the containers killed below.
        for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"):
            self._stop(name)
        netns, containers = self._remove_containers()
        self._stop("containerd")
        for name in ("coredns", "kube-apiserver", "etcd"):
            self._stop(name)
        self._kill_strays()
        self._kill_container_cgroups()
        _cleanup_host_state(self.dir, netns, containers)
        self._unmount_all()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            raise ClusterError(f"could not remove {self.dir}: see `findmnt -R {self.dir}`")
        log(f"cluster down in {time.monotonic() - t0:.1f} s")

    def _stop(self, name: str) -> None:
        pid = self.pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # kube-apiserver's graceful shutdown takes long; the port must be free for the next run.
        deadline = time.monotonic() + (3 if name == "kube-apiserver" else 10)
        while time.monotonic() < deadline and self.pid(name) is not None:
            _reap(pid)
            time.sleep(0.1)
        if self.pid(name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                _reap(pid)
                if self.pid(name) is None:
                    break
                time.sleep(0.1)

    def _remove_containers(self) -> tuple[list[str], list[str]]:
        """Kill and delete every container; return their sandboxes' network namespaces, and their ids."""
        if self.pid("containerd") is None or not self.containerd_sock.exists():
            return [], []
        netns: list[str] = []
        ids = self.ctr("containers", "ls", "-q", check=False, quiet=True).split()
        for cid in ids:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                info = json.loads(self.ctr("containers", "info", cid, check=False, quiet=True) or "{}")
                for ns in info["Spec"]["linux"]["namespaces"]:
                    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
                        netns.append(ns["path"])
        for cid in ids:
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False, quiet=True)
        for cid in ids:
            for _ in range(50):
                self.ctr("tasks", "delete", "--force", cid, check=False, quiet=True)
                if cid not in self.ctr("tasks", "ls", "-q", check=False, quiet=True).split():
                    break
                time.sleep(0.1)
            self.ctr("containers", "delete", cid, check=False, quiet=True)
        return sorted(set(netns)), ids

    def _kill_strays(self) -> None:
        """Kill any process still running from this state directory (shims, crashed restarts)."""
        marker = str(self.dir).encode()
        for pid in _pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    shown = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
                    log(f"killed stray process {pid}: {shown}")

    def _kill_container_cgroups(self) -> None:
        """Kill what is left in containerd's cgroups (containers whose containerd died)."""
        try:
            kept = set(json.loads((self.dir / "host-before.json").read_text()).get("cgroups", []))
        except (OSError, ValueError):
            return
        for parent in Path("/sys/fs/cgroup").glob("*/k8s.io"):
            if str(parent) in kept:
                continue
            for procs in parent.glob("*/cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                            log(f"killed container process {pid} ({procs.parent.name[:12]})")

    def _unmount_all(self) -> None:
        for mnt in _mounts_under(self.dir):
            if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mnt], capture_output=True)


# ---------------------------------------------------------------- host helpers


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [0] is the state, [19] the start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _mounts_under(prefix: Path) -> list[str]:
    """Mount points at or under ``prefix``, deepest first."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4].encode().decode("unicode_escape")
        if mnt == str(prefix) or mnt.startswith(f"{prefix}/"):
            out.append(mnt)
    return sorted(set(out), key=len, reverse=True)


def _iptables_save(tool: str) -> list[str]:
    save = f"{tool}-save"
    if shutil.which(save) is None:
        return []
    p = subprocess.run([save], capture_output=True, text=True)
    return [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]


def _cleanup_iptables(before: dict[str, list[str]], kube_proxy: Path | None) -> None:
    if kube_proxy is not None and kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup", "--v=0"], capture_output=True)
    for tool in ("iptables", "ip6tables"):
        old = set(before.get(tool, []))
        table = ""
        rules: list[tuple[str, str]] = []
        chains: list[tuple[str, str]] = []
        for ln in _iptables_save(tool):
            if ln.startswith("*"):
                table = ln[1:]
            elif ln.startswith("-A ") and ln not in old and ("KUBE-" in ln or "headrace-e2e" in ln):
                rules.append((table, ln))
            elif ln.startswith(":KUBE-") and f":{ln[1:].split()[0]}" not in {o.split()[0] for o in old}:
                chains.append((table, ln[1:].split()[0]))
        for table, ln in rules:
            spec = shlex.split(ln)[1:]
            subprocess.run([tool, "-t", table, "-D", *spec], capture_output=True)
        for table, chain in chains:
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
        for table, chain in chains:
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def _cleanup_host_state(state: Path, netns: Sequence[str], containers: Sequence[str] = ()) -> None:
    """Undo what ``up`` and the components changed outside the state directory."""
    try:
        before = json.loads((state / "host-before.json").read_text())
    except (OSError, ValueError):
        before = {"sysctl": {}, "dirs": {}, "netns": [], "iptables": {}}
    bin_dir = Path(versions()["E2E_BIN"])
    _cleanup_iptables(before.get("iptables", {}), bin_dir / "kube-proxy")
    for path in netns:
        name = os.path.basename(path)
        if name in before.get("netns", []):
            continue
        for p in (path, f"/run/netns/{name}"):
            subprocess.run(["umount", p], capture_output=True)
            with contextlib.suppress(OSError):
                os.unlink(p)
    # veth ends left on the bridge (their namespace is gone with the pods), then the bridge.
    links = subprocess.run(["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True, text=True)
    for ln in links.stdout.splitlines():
        dev = ln.split(":")[1].strip().split("@")[0]
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    for key, value in before.get("sysctl", {}).items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(value)
    # Files the components wrote outside the state directory.
    with contextlib.suppress(OSError):
        for f in os.listdir("/var/log/containers"):
            link = Path("/var/log/containers", f)
            if link.is_symlink() and os.readlink(link).startswith(str(state)):
                link.unlink()
    # libcni's result cache: the pod network's and containerd's loopback entries.
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for cached in results.iterdir():
            if cached.name.startswith(f"{CNI_NETWORK}-") or any(c in cached.name for c in containers):
                cached.unlink()
    # containerd's cgroup parent in each hierarchy (runc removed the containers' own).
    kept = set(before.get("cgroups", []))
    for cg in Path("/sys/fs/cgroup").glob("*/k8s.io"):
        if str(cg) not in kept:
            _remove_empty_tree(cg)
    for d, existed in before.get("dirs", {}).items():
        if not existed and os.path.isdir(d):
            _remove_empty_tree(Path(d))


def _remove_empty_tree(d: Path) -> None:
    """Remove ``d`` and its subdirectories if they hold no files (cgroups: no processes)."""
    subdirs = [Path(root, n) for root, dirs, _ in os.walk(d) for n in dirs]
    for sub in sorted(subdirs, key=lambda p: len(str(p)), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        d.rmdir()


COREDNS_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
"""


# ---------------------------------------------------------------- the running cluster


def current() -> Cluster | None:
    """The cluster recorded in ``/run/headrace-e2e.json``, if any."""
    try:
        data = json.loads(POINTER.read_text())
    except (OSError, ValueError):
        return None
    return Cluster(Path(data["dir"]), Path(data["bin"]))


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def up(timeout: float = 180) -> Cluster:
    """Bring a new cluster up and record it as the current one; tear it down again if that fails."""
    if os.geteuid() != 0:
        raise ClusterError("the e2e cluster needs root (network, mounts, containers); run as root")
    existing = current()
    if existing is not None:
        raise ClusterError(
            f"a cluster is already recorded in {POINTER} (state {existing.dir}); "
            "run `tests/e2e/cluster.sh down` first"
        )
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        raise ClusterError(f"bridge {BRIDGE} exists from an earlier run; run `tests/e2e/cluster.sh down`")
    for host, port in (
        ("127.0.0.1", 23790),
        ("127.0.0.1", 10248),
        ("127.0.0.1", 10257),
        ("127.0.0.1", 10259),
    ):
        if _port_in_use(host, port):
            raise ClusterError(f"port {host}:{port} is taken; is another Kubernetes running here?")
    prefix = POD_CIDR.rsplit(".", 1)[0] + "."
    for what in (["ip", "-o", "addr"], ["ip", "route"]):
        taken = [ln for ln in run(what).splitlines() if prefix in ln]
        if taken:
            raise ClusterError(f"{POD_CIDR} is already in use on this machine ({taken[0].strip()})")
    v = versions()
    state = Path(tempfile.mkdtemp(prefix="headrace-e2e.", dir=os.environ.get("HEADRACE_E2E_TMP", "/tmp")))
    state.chmod(0o755)
    cluster = Cluster(state, Path(v["E2E_BIN"]))
    POINTER.write_text(json.dumps({"dir": str(state), "bin": v["E2E_BIN"], "stamp": v["E2E_STAMP"]}))
    try:
        cluster.up(timeout)
    except BaseException:
        log(f"cluster did not come up; logs kept in {state}/logs -> copying to {state}.logs, tearing down")
        shutil.copytree(state / "logs", f"{state}.logs", dirs_exist_ok=True)
        down()
        raise
    return cluster


def down() -> None:
    """Tear the current cluster down (no-op if none), and remove leftovers of a crashed run."""
    cluster = current()
    if cluster is not None:
        cluster.down()
    elif Path(f"/sys/class/net/{BRIDGE}").exists():
        log(f"no cluster recorded, but {BRIDGE} exists: removing leftovers")
        _cleanup_host_state(Path("/nonexistent"), [])
    with contextlib.suppress(FileNotFoundError):
        POINTER.unlink()


def leftovers() -> list[str]:
    """Describe anything of an e2e cluster still present on this machine (empty when clean)."""
    found = []
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    for tool in ("iptables", "ip6tables"):
        rules = [ln for ln in _iptables_save(tool) if "KUBE-" in ln or "headrace-e2e" in ln]
        if rules:
            found.append(f"{len(rules)} {tool} rules/chains mentioning KUBE- or headrace-e2e")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if "headrace-e2e." in line.split()[4]:
            found.append(f"mount {line.split()[4]}")
    names = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"}
    names |= {"coredns", "containerd-shim-runc-v2"}
    for pid in _pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        exe = os.path.basename(cmd[0].decode(errors="replace")) if cmd and cmd[0] else ""
        if exe in names or (exe == "containerd" and b"headrace-e2e" in b" ".join(cmd)):
            found.append(f"process {pid} {exe}")
    found += [f"cgroup {cg}" for cg in Path("/sys/fs/cgroup").glob("*/k8s.io")]
    if os.path.isdir("/run/netns"):
        found += [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith("cni-")]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``up``, ``down``, ``status``, ``env`` and ``load-image ARCHIVE``."""
    ap = argparse.ArgumentParser(prog="cluster.sh", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="bring a cluster up (build.sh must have run)")
    sub.add_parser("down", help="tear the cluster down and remove everything it left")
    sub.add_parser("status", help="show the components and anything left over")
    sub.add_parser("env", help="print `export` lines for KUBECONFIG and PATH")
    li = sub.add_parser("load-image", help="import a docker-archive image into the cluster's containerd")
    li.add_argument("archive", type=Path)
    args = ap.parse_args(None if argv is None else list(argv))
    try:
        c: Cluster | None
        if args.cmd == "up":
            c = up()
            print(f"export KUBECONFIG={c.kubeconfig} PATH={c.bin}:$PATH")
        elif args.cmd == "down":
            down()
            rest = leftovers()
            if rest:
                log("left over: " + "; ".join(rest))
                return 1
        elif args.cmd == "env":
            c = current()
            if c is None:
                raise ClusterError("no cluster is up; run `tests/e2e/cluster.sh up`")
            print(f"export KUBECONFIG={c.kubeconfig} PATH={c.bin}:$PATH")
        elif args.cmd == "status":
            c = current()
            if c is None:
                print("no cluster recorded")
            else:
                print(f"state {c.dir}")
                for name in COMPONENTS:
                    pid = c.pid(name)
                    print(f"  {name:24} {'pid ' + str(pid) if pid else 'NOT RUNNING'}")
            for item in leftovers():
                print(f"  present: {item}")
        elif args.cmd == "load-image":
            c = current()
            if c is None:
                raise ClusterError("no cluster is up; run `tests/e2e/cluster.sh up`")
            c.load_image(args.archive)
    except ClusterError as e:
        log(f"ERROR: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
