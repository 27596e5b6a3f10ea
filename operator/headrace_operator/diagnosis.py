"""Pod diagnosis: from the pods' own state, what is wrong, in words a user can act on.

Placed in the flow: `reconcile` calls `diagnose_pods` on the observed pods
(`observation.PodInfo`) while they are not all Ready; the reason names the
event and the Ready condition, and some reasons (a startup error, an image
that can't be pulled) mean a restart can't help. `finished_report` tells a
worker whose input ended (exit 0 with a ``finished:`` termination message)
from one that crashed.
"""

from __future__ import annotations

from headrace_operator.observation import PodInfo

__all__ = ["UNFIXABLE_BY_RESTART", "diagnose_pods", "finished_report"]

UNFIXABLE_BY_RESTART = ("StartupError", "ImagePullError", "ConfigError")
"""Reasons a restart can't fix (the kubelet keeps retrying the pods anyway)."""


def _last_line(text: str) -> str:
    r"""The worker's own summary of why it stopped, from its termination message.

    The CLI ends a failed run with ``error: ...`` and one ``caused by: ...``
    line per cause it had to add (see ``headrace.run``); they are kept
    together, on one line. Other output gives its last line that looks
    like an error, or its last line.

    >>> _last_line("Traceback ...\nerror: building sink 'f.out'\n"
    ...            "caused by: ConnectionError: Redis is unreachable\n")
    "error: building sink 'f.out'; caused by: ConnectionError: Redis is unreachable"
    >>> _last_line("x\nValueError: bad\nexiting")
    'ValueError: bad'
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            causes = [ln for ln in lines[i + 1 :] if ln.startswith("caused by:")]
            return "; ".join([lines[i], *causes])
    for ln in reversed(lines):
        if "Error" in ln:
            return ln
    return lines[-1] if lines else ""


_IMAGE_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}


def diagnose_pods(pods: list[PodInfo], image: str = "") -> tuple[str, str] | None:
    """``(reason, message)`` naming the most telling pod problem, or ``None``.

    >>> p = PodInfo("wc-0", 0, waiting_reason="CrashLoopBackOff", last_exit_code=2,
    ...             last_message="error: can't import 'app.flows': No module named 'app'")
    >>> diagnose_pods([p])[0]
    'StartupError'
    """
    found = [
        problem
        for p in sorted(pods, key=lambda p: p.ordinal)
        if not (p.ready or p.terminating)
        if (problem := _pod_problem(p, image)) is not None
    ]
    if not found:
        return None
    _, reason, message = min(found, key=lambda f: f[0])
    return reason, message


def _pod_problem(p: PodInfo, image: str) -> tuple[int, str, str] | None:
    """``(rank, reason, message)`` of one pod that is not Ready; lower ranks tell more."""
    if p.waiting_reason in _IMAGE_REASONS:
        return (
            0,
            "ImagePullError",
            f"pod {p.name} can't pull image {image!r} ({p.waiting_reason}: "
            f"{p.waiting_message}). Check spec.image, spec.imagePullPolicy and "
            "spec.imagePullSecrets",
        )
    if p.waiting_reason in ("CreateContainerConfigError", "CreateContainerError"):
        return (
            1,
            "ConfigError",
            f"pod {p.name}: {p.waiting_message or p.waiting_reason}. Check that "
            "the Secrets and ConfigMaps named in spec.recovery.secretRef, "
            "spec.flow.env and spec.flow.envFrom exist",
        )
    if p.last_exit_code == 2:
        return (
            2,
            "StartupError",
            f"pod {p.name} exited with code 2: {_last_line(p.last_message)}. "
            "Check spec.flow.import and spec.flow.args, and that the image "
            "contains the module",
        )
    if p.last_reason == "OOMKilled":
        return (
            3,
            "OOMKilled",
            f"pod {p.name} ran out of memory (OOMKilled). Raise "
            "spec.resources.limits.memory or lower workersPerProcess",
        )
    if p.last_exit_code not in (None, 0) and p.restarts > 0:
        return (
            4,
            "WorkerCrashed",
            f"pod {p.name} exited with code {p.last_exit_code} (restart {p.restarts}): "
            f"{_last_line(p.last_message) or p.last_reason}. Its peers restart "
            "and resume from the last committed epoch",
        )
    if p.unschedulable:
        return (
            5,
            "Unschedulable",
            f"pod {p.name} can't be scheduled: {p.unschedulable}. Check "
            "spec.resources, spec.nodeSelector, spec.tolerations and "
            "spec.affinity",
        )
    return None


def finished_report(pods: list[PodInfo], replicas: int) -> bool | None:
    """Whether the workers' input ended: ``None`` if no pod says so, else whether all
    ``replicas`` pods say so (in their current or last container's termination message).

    A worker that received SIGTERM exits 0 without that line; its peers, which
    stop on its request, may write it (they can't tell), but the pod that was
    asked to stop never does, or is a new pod: only an end of input has every
    pod saying so.

    >>> pods = [PodInfo("wc-0", 0, finished=["finished: every input ended"]), PodInfo("wc-1", 1)]
    >>> finished_report(pods, 2), finished_report(pods[:1], 1), finished_report(pods[1:], 1)
    (False, True, None)
    """
    done = {p.ordinal for p in pods if p.finished and not p.terminating and 0 <= p.ordinal < replicas}
    if not done:
        return None
    return len(done) == replicas
