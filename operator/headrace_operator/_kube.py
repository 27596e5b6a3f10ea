"""Input and output: the Kubernetes API, Redis and the workers' /metrics.

Everything here talks to the outside world and nothing decides; `handlers`
calls it to build an `Observation` and to carry out a `Plan`.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
import typing
import urllib.request
from collections.abc import Callable
from typing import Any

from headrace_operator import autoscaler as asc
from headrace_operator import manifests as mf
from headrace_operator.crd import GROUP, PLURAL, VERSION
from headrace_operator.election import Conflict, LeaseRecord
from headrace_operator.observation import KeptSnapshotInfo, PodInfo, RunInfo, SecretInfo, StoreInfo
from headrace_operator.outcome import Action
from headrace_operator.spec import DataflowSpec

log = logging.getLogger("headrace.operator")

FIELD_MANAGER = "headrace-operator"


def _load_config() -> None:
    """The service account's config inside a pod, else the kubeconfig (a developer's machine)."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    """A thin wrapper over the `kubernetes` client: dicts in, dicts out."""

    def __init__(self) -> None:
        from kubernetes import client
        from kubernetes.dynamic import DynamicClient

        _load_config()
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.dynamic = DynamicClient(self.api)
        self._pm_checked = 0.0
        self._pm_supported = False
        self._lock = threading.Lock()

    def _dict(self, obj: Any) -> dict[str, Any]:
        return typing.cast(dict[str, Any], self.api.sanitize_for_serialization(obj))

    @staticmethod
    def _missing(exc: Exception) -> bool:
        return getattr(exc, "status", None) == 404

    def dataflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Dataflow as stored now (fresher than a handler's body)."""
        from kubernetes.client.exceptions import ApiException

        try:
            got = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return typing.cast(dict[str, Any], got)
        except ApiException as exc:
            if self._missing(exc):
                return None
            raise

    def list_dataflows(self, namespaces: list[str]) -> dict[str, str]:
        """uid -> resourceVersion of the watched Dataflows (for the stale-watch check)."""
        if namespaces:
            items = [
                i
                for ns in namespaces
                for i in typing.cast(
                    dict[str, Any], (self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
                ).get("items", [])
            ]
        else:
            items = typing.cast(
                dict[str, Any], self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            ).get("items", [])
        return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}

    def statefulset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Dataflow's StatefulSet, or ``None``."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._dict(self.apps.read_namespaced_stateful_set(name, namespace))
        except ApiException as exc:
            if self._missing(exc):
                return None
            raise

    def pods(self, namespace: str, name: str) -> list[PodInfo]:
        """The Dataflow's worker pods."""
        sel = ",".join(f"{k}={v}" for k, v in mf.selector(name).items())
        got = self.core.list_namespaced_pod(namespace, label_selector=sel)
        return [PodInfo.from_pod(self._dict(p)) for p in got.items]

    def secret(self, namespace: str, name: str, key: str) -> tuple[SecretInfo, str | None]:
        """Whether the Secret and its key exist, and the value."""
        from kubernetes.client.exceptions import ApiException

        try:
            sec = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if self._missing(exc):
                return SecretInfo(name, key, found=False, has_key=False), None
            raise
        data = sec.data or {}
        if key not in data:
            return SecretInfo(name, key, found=True, has_key=False), None
        return SecretInfo(name, key, True, True), base64.b64decode(data[key]).decode()

    def create_secret(self, obj: dict[str, Any], key: str) -> bool:
        """Create the Secret ``obj`` with a random value under ``key``, unless it exists.

        An existing Secret is left as it is: its value must not change while
        pods use it. Returns whether it was created.
        """
        from kubernetes.client.exceptions import ApiException

        body = {**obj, "stringData": {key: secrets.token_hex(32)}}
        try:
            # The client takes a plain dict for a body as well as a model.
            self.core.create_namespaced_secret(obj["metadata"]["namespace"], typing.cast(Any, body))
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists
                return False
            raise
        return True

    def pod_monitor_supported(self) -> bool:
        """Whether the PodMonitor CRD is installed (checked every 5 minutes)."""
        now = time.monotonic()
        if now - self._pm_checked > 300:
            try:
                self.dynamic.resources.get(api_version="monitoring.coreos.com/v1", kind="PodMonitor")
                self._pm_supported = True
            except Exception:  # absent API or discovery error: treat as absent
                self._pm_supported = False
            self._pm_checked = now
        return self._pm_supported

    def apply(self, obj: dict[str, Any], dry_run: bool = False) -> None:
        """Server-side apply ``obj`` (create or update the fields the operator owns).

        ``dry_run``: the API server checks it (admission, validation) and
        stores nothing.
        """
        res = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        self.dynamic.server_side_apply(
            res,
            body=obj,
            namespace=obj["metadata"]["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            dry_run="All" if dry_run else None,
        )

    def check_create(self, obj: dict[str, Any]) -> None:
        """Have the API server check the creation of ``obj`` (``dryRun=All``: nothing is stored)."""
        res = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        self.dynamic.create(res, body=obj, namespace=obj["metadata"]["namespace"], dry_run="All")

    def delete(self, obj: dict[str, Any]) -> None:
        """Delete ``obj`` if it exists."""
        from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

        try:
            res = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            res_ns = obj["metadata"]["namespace"]
            self.dynamic.delete(res, name=obj["metadata"]["name"], namespace=res_ns)
        except (NotFoundError, ResourceNotFoundError):
            pass

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set the StatefulSet's replicas, leaving its template alone."""
        self.apps.patch_namespaced_stateful_set(
            name, namespace, {"spec": {"replicas": replicas}}, field_manager=FIELD_MANAGER
        )

    def patch_dataflow_replicas(self, namespace: str, name: str, replicas: int) -> None:
        """The autoscaler's apply: set the Dataflow's spec.replicas."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"replicas": replicas}}
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource."""
        # Custom objects get a JSON merge patch: null deletes a field.
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )


class Leases:
    """`election.LeaseStore` on the API server (``coordination.k8s.io/v1``).

    A client of its own, used before kopf starts; every request gives up
    after ``timeout`` seconds, so that a hung request cannot hold a leader
    past its renew deadline.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        from kubernetes import client

        _load_config()
        self.api = client.ApiClient()
        self.coordination = client.CoordinationV1Api(self.api)
        self.timeout = timeout

    def _record(self, obj: Any) -> LeaseRecord:
        d = typing.cast(dict[str, Any], self.api.sanitize_for_serialization(obj))
        return LeaseRecord.from_spec(d.get("spec"), str((d.get("metadata") or {}).get("resourceVersion", "")))

    @staticmethod
    def _body(namespace: str, name: str, record: LeaseRecord) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if record.resource_version:
            meta["resourceVersion"] = record.resource_version
        spec = {k: v for k, v in record.to_spec().items() if v is not None}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def get(self, namespace: str, name: str) -> LeaseRecord | None:
        """The Lease, or None."""
        from kubernetes.client.exceptions import ApiException

        try:
            got = self.coordination.read_namespaced_lease(name, namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._record(got)

    def _write(self, call: Callable[..., Any], *args: Any) -> LeaseRecord:
        """The Lease as ``call(*args)`` wrote it; `Conflict` if the API server answers 409."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._record(call(*args, _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(api_message(exc)) from None
            raise

    def create(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """Create the Lease; `Conflict` if it exists."""
        body = self._body(namespace, name, record)
        return self._write(self.coordination.create_namespaced_lease, namespace, body)

    def replace(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """Replace the Lease at its resourceVersion; `Conflict` if it changed since."""
        body = self._body(namespace, name, record)
        return self._write(self.coordination.replace_namespaced_lease, name, namespace, body)


# ------------------------------------------------------------------ Redis


def _run_info(marks: Any) -> RunInfo | None:
    """The start of the execution that committed last (headrace's ``_engine._marks``)."""
    if not marks.execution:
        return None
    at = marks.start
    return RunInfo(
        marks.execution,
        process=at.get("process", 0.0),
        imported=at.get("imported", 0.0),
        restored=at.get("restored", 0.0),
        first_output=marks.first_output,
        previous_output=at.get("previous_output", 0.0),
    )


class Stores:
    """Recovery-store handles, cached per (url, prefix)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}

    def _open(self, url: str, prefix: str) -> Any:
        from headrace._engine import open_store

        key = (url, prefix)
        if key not in self._cache:
            self._cache[key] = open_store(url, prefix, retry_for=1.0)
        return self._cache[key]

    def info(self, url: str, prefix: str) -> StoreInfo:
        """What Redis says about the dataflow; ``ok=False`` with the error when unreachable."""
        try:
            meta = self._open(url, prefix).load_meta()
        except Exception as exc:  # reported in status, never raised
            self._cache.pop((url, prefix), None)
            return StoreInfo(ok=False, error=_short(exc))
        try:
            kept = self.kept(url, prefix)
        except Exception as exc:  # reported in status, never raised
            self._cache.pop((url, prefix), None)
            return StoreInfo(ok=False, error=_short(exc))
        if meta is None:
            return StoreInfo(ok=True, exists=False, kept=kept)
        try:
            standby = self._open(url, prefix).standby_note()
        except Exception:  # only a transition's wait for it: it then stops the old pods
            standby = ""
        return StoreInfo(
            ok=True,
            exists=True,
            epoch=meta.committed_epoch,
            committed_at=meta.committed_at,
            worker_count=meta.worker_count,
            key_groups=meta.key_groups,
            epoch_bytes=meta.epoch_bytes,
            kept=kept,
            execution_id=meta.execution_id,
            last_output_at=meta.marks.last_output,
            run=_run_info(meta.marks),
            standby=standby,
        )

    def kept(self, url: str, prefix: str) -> list[KeptSnapshotInfo]:
        """The dataflow's kept snapshots, oldest first."""
        from headrace._engine import kept_snapshots

        return [
            KeptSnapshotInfo(k.name, k.epoch, k.taken_at, k.size, k.flow_id, tuple(k.steps))
            for k in kept_snapshots(self._open(url, prefix))
        ]

    def keep(self, url: str, prefix: str, name: str) -> str:
        """Keep the committed epoch as ``name`` (done already, or nothing committed: said, not raised)."""
        from headrace._engine import SnapshotError, keep_snapshot, kept_snapshots

        store = self._open(url, prefix)
        if any(k.name == name for k in kept_snapshots(store)):
            return f"kept snapshot {name!r} exists already"
        try:
            rec = keep_snapshot(store, name)
        except SnapshotError as exc:
            if "holds no committed epoch" in str(exc):
                return f"nothing to keep as {name!r}: no committed epoch"
            raise
        return f"kept epoch {rec.epoch} as {name!r} ({rec.size} bytes)"

    def prune(self, url: str, prefix: str, keep: int | None, max_age: float | None) -> list[str]:
        """Apply retention; return the names deleted."""
        from headrace._engine import prune_snapshots

        return list(prune_snapshots(self._open(url, prefix), keep, max_age))

    def restore(self, url: str, prefix: str, name: str, source: str | None) -> int:
        """Restore kept snapshot ``name`` (of ``source``, else of ``prefix``) into ``prefix``; its epoch."""
        from headrace._engine import restore_snapshot

        src = self._open(url, source) if source else None
        return int(restore_snapshot(self._open(url, prefix), name, src).epoch)

    def delete(self, url: str, prefix: str) -> int:
        """Delete all of the dataflow's state; return the records deleted."""
        return int(self._open(url, prefix).delete_all())

    def expire(self, url: str, prefix: str, seconds: float) -> int:
        """Let every key of the live state expire in ``seconds`` (kept snapshots stay); return how many."""
        # Every key of the prefix (on a Redis Cluster, every key group's hash tag too).
        return int(self._open(url, prefix).expire_all(seconds))


def api_message(exc: BaseException) -> str:
    """What the API server (or Redis) said, without the HTTP wrapping.

    >>> from kubernetes.client.exceptions import ApiException
    >>> e = ApiException(status=422, reason="Unprocessable Entity")
    >>> e.body = '{"message": "StatefulSet.apps wc is invalid: spec.x: Required value"}'
    >>> api_message(e)
    'StatefulSet.apps wc is invalid: spec.x: Required value'
    """
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str) and message:
            return message[:900]
    if getattr(exc, "status", None) is not None:
        return f"{getattr(exc, 'status', '')} {getattr(exc, 'reason', '')}".strip()
    return _short(exc)


def _short(exc: BaseException) -> str:
    """The root cause in one line (the store's own message is written for workers)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}"[:300]


def recovery_url(spec: DataflowSpec, secret_value: str | None) -> str | None:
    """The Redis URL from the spec or its Secret.

    >>> from headrace_operator.spec import parse_spec
    >>> recovery_url(parse_spec({"image": "i", "flow": {"import": "m:f"},
    ...                          "recovery": {"url": "redis://r:6379/0"}}), None)
    'redis://r:6379/0'
    """
    if spec.recovery is None:
        return None
    return spec.recovery.url or secret_value


# ------------------------------------------------------------------ worker metrics


def scrape(pods: list[PodInfo], port: int, timeout: float = 3.0) -> asc.Sample:
    """Scrape every running pod's /metrics now (pods that don't answer are left out)."""
    out: dict[str, asc.PodSample] = {}
    for p in pods:
        if not p.ip or p.terminating:
            continue
        try:
            with urllib.request.urlopen(f"http://{p.ip}:{port}/metrics", timeout=timeout) as r:
                out[p.name] = asc.parse_metrics(r.read().decode())
        except OSError as exc:
            log.debug("scrape of %s failed: %s", p.name, exc)
    return asc.Sample(t=time.time(), pods=out)


def apply_actions(
    kube: Kube, stores: Stores, namespace: str, name: str, actions: list[Action], url: str | None, prefix: str
) -> None:
    """Carry out a plan's actions in order."""
    for a in actions:
        log.info("%s/%s: %s", namespace, name, a.describe())
        if a.kind == "apply" and a.obj is not None:
            kube.apply(a.obj)
        elif a.kind == "dry_run" and a.obj is not None and a.obj["kind"] == "Pod":
            kube.check_create(a.obj)
        elif a.kind == "dry_run" and a.obj is not None:
            kube.apply(a.obj, dry_run=True)
        elif a.kind == "delete" and a.obj is not None:
            kube.delete(a.obj)
        elif a.kind == "create_secret" and a.obj is not None:
            kube.create_secret(a.obj, mf.MESH_SECRET_KEY)
        elif a.kind == "scale" and a.replicas is not None:
            kube.scale(namespace, a.target or name, a.replicas)
        elif a.kind == "patch_replicas" and a.replicas is not None:
            kube.patch_dataflow_replicas(namespace, name, a.replicas)
        elif a.kind == "delete_state" and url:
            n = stores.delete(url, prefix)
            log.info("%s/%s: deleted %d state records under %r", namespace, name, n, prefix)
        elif a.kind == "expire_state" and url and a.seconds is not None:
            stores.expire(url, prefix, a.seconds)
        elif a.kind == "keep_snapshot" and url and a.name:
            log.info("%s/%s: %s", namespace, name, stores.keep(url, prefix, a.name))
        elif a.kind == "prune_snapshots" and url:
            gone = stores.prune(url, prefix, a.keep, a.seconds)
            log.info("%s/%s: deleted kept snapshots %s", namespace, name, gone)
        elif a.kind == "restore_snapshot" and url and a.name:
            epoch = stores.restore(url, prefix, a.name, a.source)
            log.info("%s/%s: restored %r at epoch %d", namespace, name, a.name, epoch)


def dumps(obj: Any) -> str:
    """Compact JSON for logs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
