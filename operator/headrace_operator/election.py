"""Leader election on a ``coordination.k8s.io/v1`` Lease: one operator replica reconciles.

Placed in the flow: `main` runs an `Elector` before it starts kopf. A standby
replica loops in `Elector.wait_until_leading` and has no kopf at all (no
watches, no handlers); once it holds the Lease, `main` starts kopf and
`Elector.keep_leading` renews the Lease from a thread. If renewing fails
for ``renew_deadline`` seconds, or the Lease names someone else, the leader
calls its ``on_lost`` at once (`main` exits the process, as controller-runtime
does, and the container restarts as a standby). On a clean stop `main`
releases the Lease so that a standby takes over at its next retry instead of
waiting for the Lease to expire.

The algorithm is client-go's (``tools/leaderelection``), so a Headrace Lease
reads like any other controller's: ``holderIdentity``,
``leaseDurationSeconds``, ``acquireTime``, ``renewTime``,
``leaseTransitions``. A candidate never trusts the clock of another
machine: it takes over only when the record it reads has not changed for
``lease_duration`` seconds of its *own* monotonic clock. Writes are
optimistic (the record's ``resourceVersion``), so of two candidates racing
for a free Lease exactly one wins.

`decide` is the pure decision; `Elector` adds the reads and writes through
a `LeaseStore` (`headrace_operator._kube.Leases` against the API server).

>>> t = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
>>> decide("b", LeaseRecord(holder="a", lease_duration=15), observed_at=100.0, now=110.0, timing=t)
'wait'
>>> decide("b", LeaseRecord(holder="a", lease_duration=15), observed_at=100.0, now=115.0, timing=t)
'take'
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal, Protocol

from headrace_operator.metrics import metric

__all__ = [
    "Conflict",
    "Elector",
    "LeaseRecord",
    "LeaseStore",
    "Role",
    "Timing",
    "decide",
]

log = logging.getLogger("headrace.operator")

Decision = Literal["create", "renew", "take", "wait"]


class Conflict(Exception):
    """A write lost a race: the Lease exists already, or changed since it was read."""


@dataclass(frozen=True)
class Timing:
    """The three durations of leader election, in seconds (client-go's defaults).

    ``lease_duration``: how long a standby waits, after the record last
    changed, before it takes over; ``renew_deadline``: how long the leader
    keeps trying to renew before it gives up leading (shorter, so it has
    stopped before anyone may take over); ``retry_period``: between two tries.

    >>> Timing().check()
    >>> Timing(lease_duration=10, renew_deadline=10).check()
    Traceback (most recent call last):
    ...
    ValueError: leader election: the lease duration (10s) must be longer than the renew deadline (10s)
    """

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def check(self) -> None:
        """Refuse durations that would let two replicas lead at once."""
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(
                f"leader election: the lease duration ({self.lease_duration:g}s) must be longer "
                f"than the renew deadline ({self.renew_deadline:g}s)"
            )
        if self.renew_deadline <= 1.2 * self.retry_period:
            raise ValueError(
                f"leader election: the renew deadline ({self.renew_deadline:g}s) must be longer "
                f"than 1.2 x the retry period ({self.retry_period:g}s)"
            )
        if self.retry_period <= 0:
            raise ValueError("leader election: the retry period must be positive")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's ``spec`` says, and the ``resourceVersion`` it was read at.

    Times are Unix seconds (``None`` when absent); an empty ``holder`` is a
    released Lease.

    >>> r = LeaseRecord(holder="op-1", lease_duration=15, renew_time=0.5)
    >>> LeaseRecord.from_spec(r.to_spec(), "7") == replace(r, resource_version="7")
    True
    >>> r.to_spec()["renewTime"]
    '1970-01-01T00:00:00.500000Z'
    """

    holder: str = ""
    lease_duration: float = 15.0
    acquire_time: float | None = None
    renew_time: float | None = None
    transitions: int = 0
    resource_version: str = ""

    def to_spec(self) -> dict[str, object]:
        """The Lease ``spec`` (MicroTime strings, as the API server stores them)."""
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": _micro(self.acquire_time),
            "renewTime": _micro(self.renew_time),
            "leaseTransitions": self.transitions,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, object] | None, resource_version: str = "") -> LeaseRecord:
        """Read a Lease ``spec`` (the API's camelCase keys)."""
        spec = spec or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=float(spec.get("leaseDurationSeconds") or 0),  # type: ignore[arg-type]
            acquire_time=_unix(spec.get("acquireTime")),
            renew_time=_unix(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),  # type: ignore[call-overload]
            resource_version=resource_version,
        )


def _micro(t: float | None) -> str | None:
    if t is None:
        return None
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unix(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        dt = value
    else:
        dt = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.timestamp()


def decide(me: str, record: LeaseRecord | None, observed_at: float, now: float, timing: Timing) -> Decision:
    """What candidate ``me`` does with the Lease it just read.

    ``observed_at`` is when (on ``me``'s monotonic clock) the record was
    first seen as it is now; ``now`` is the same clock. No Lease: create it.
    Ours: renew it. Released (no holder): take it. Someone else's that has
    not changed for its ``leaseDurationSeconds``: take it. Else wait.

    >>> t = Timing()
    >>> decide("a", None, 0.0, 0.0, t), decide("a", LeaseRecord(holder="a"), 0.0, 99.0, t)
    ('create', 'renew')
    >>> decide("a", LeaseRecord(holder=""), 5.0, 5.0, t)
    'take'
    """
    if record is None:
        return "create"
    if record.holder == me:
        return "renew"
    if not record.holder:
        return "take"
    duration = record.lease_duration if record.lease_duration > 0 else timing.lease_duration
    return "take" if now >= observed_at + duration else "wait"


class LeaseStore(Protocol):
    """Reads and writes one kind of object: Leases (the API server, or a test's stand-in)."""

    def get(self, namespace: str, name: str) -> LeaseRecord | None:
        """The Lease, or None if there is none."""
        ...

    def create(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """Create it; `Conflict` if it exists."""
        ...

    def replace(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        """Write it at ``record.resource_version``; `Conflict` if it changed since."""
        ...


class Role(Enum):
    """Where a candidate stands after a round."""

    STANDBY = "standby"
    LEADING = "leading"
    LOST = "lost"


class Elector:
    """One candidate for one Lease.

    `round` is one try (read, decide, write) at a given time on the
    candidate's monotonic clock; `wait_until_leading` and `keep_leading`
    loop over it in real time. ``wall`` gives the Unix time written into the
    record (for people reading the Lease; no decision depends on it).
    """

    def __init__(
        self,
        store: LeaseStore,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or Timing()
        self.timing.check()
        self.wall = wall
        self.clock = clock
        self.leading = False
        self.last_renew = 0.0  # monotonic time of the last successful write as leader
        self.record: LeaseRecord | None = None  # as last read or written
        self.observed_at = 0.0
        self.previous = ""  # the holder we took over from ("" if none)
        self.stop = threading.Event()
        self._lock = threading.Lock()  # one round or release at a time (renew thread, main)

    @property
    def lease(self) -> str:
        """``namespace/name`` of the Lease."""
        return f"{self.namespace}/{self.name}"

    def holder(self) -> str:
        """The holder as last read ("" if none)."""
        return self.record.holder if self.record is not None else ""

    def _observe(self, record: LeaseRecord | None, now: float) -> None:
        # A change of holder or renew time restarts the wait (client-go compares whole records).
        if record is None or self.record is None or _key(record) != _key(self.record):
            self.observed_at = now
        self.record = record

    def round(self, now: float) -> Role:
        """One try at ``now`` (monotonic seconds): `Role.LEADING`, `Role.STANDBY`, or
        `Role.LOST` once, when a leader can no longer lead."""
        with self._lock:
            return self._round(now)

    def _round(self, now: float) -> Role:
        try:
            got = self.store.get(self.namespace, self.name)
            self._observe(got, now)
            if self.leading and got is not None and got.holder != self.identity:
                # Taken (or released by someone else): stop at once, never take it back.
                self.leading = False
                return Role.LOST
            wrote = self._write(decide(self.identity, got, self.observed_at, now, self.timing), got)
        except Conflict:
            wrote = False
        except Exception as exc:  # an API outage: a standby waits, a leader has renew_deadline
            log.warning("leader election: lease %s: %s", self.lease, exc)
            wrote = False
        if wrote:
            self.observed_at = now
            self.last_renew = now
            if not self.leading:
                self.leading = True
            return Role.LEADING
        if self.leading:
            if now - self.last_renew >= self.timing.renew_deadline:
                self.leading = False
                return Role.LOST
            return Role.LEADING
        return Role.STANDBY

    def _write(self, decision: Decision, got: LeaseRecord | None) -> bool:
        if decision == "wait":
            return False
        t = self.wall()
        duration = self.timing.lease_duration
        if decision == "create":
            mine = LeaseRecord(self.identity, duration, acquire_time=t, renew_time=t)
            self.record = self.store.create(self.namespace, self.name, mine)
            self.previous = ""
        elif decision == "renew":
            assert got is not None
            self.record = self.store.replace(
                self.namespace, self.name, replace(got, lease_duration=duration, renew_time=t)
            )
        else:
            assert got is not None
            self.previous = got.holder
            taken = replace(
                got,
                holder=self.identity,
                lease_duration=duration,
                acquire_time=t,
                renew_time=t,
                transitions=got.transitions + 1,
            )
            self.record = self.store.replace(self.namespace, self.name, taken)
        return True

    def release(self) -> bool:
        """Give the Lease up (on a clean stop), so that a standby takes it at its next try.

        Like client-go: the holder is emptied and the duration set to 1 s.
        Returns whether the Lease was ours to release.
        """
        self.stop.set()
        with self._lock:
            return self._release()

    def _release(self) -> bool:
        was = self.leading
        self.leading = False
        metric("headrace_operator_leader").set(0)
        try:
            got = self.store.get(self.namespace, self.name)
            if got is None or got.holder != self.identity:
                return False
            t = self.wall()
            self.record = self.store.replace(
                self.namespace, self.name, replace(got, holder="", lease_duration=1, renew_time=t)
            )
        except Exception as exc:  # the standby then waits for the lease to expire
            log.warning("leader election: could not release lease %s: %s", self.lease, exc)
            return False
        log.info("leader election: %s released lease %s", self.identity, self.lease)
        return was

    def wait_until_leading(self) -> bool:
        """Try every ``retry_period`` (with up to 20% jitter) until this candidate leads;
        False if `stop` was set first."""
        announced = None
        while not self.stop.is_set():
            t0 = self.clock()
            if self.round(t0) is Role.LEADING:
                metric("headrace_operator_leader").set(1)
                took = f", took over from {self.previous}" if self.previous else ""
                log.info("leader election: %s leads (lease %s%s)", self.identity, self.lease, took)
                return True
            metric("headrace_operator_leader").set(0)
            if self.holder() != announced:
                announced = self.holder()
                log.info(
                    "leader election: %s is standby; lease %s is held by %s",
                    self.identity,
                    self.lease,
                    announced or "nobody",
                )
            self.stop.wait(self.timing.retry_period * (1 + 0.2 * random.random()))
        return False

    def keep_leading(self, on_lost: Callable[[], None]) -> None:
        """Renew every ``retry_period`` until `stop` is set; call ``on_lost`` (once) if
        leading is lost. Runs in a thread of its own."""
        while not self.stop.wait(self.timing.retry_period):
            if self.round(self.clock()) is Role.LOST:
                metric("headrace_operator_leader").set(0)
                log.error(
                    "leader election: %s lost lease %s (held by %s): stopping",
                    self.identity,
                    self.lease,
                    self.holder() or "nobody",
                )
                on_lost()
                return


def _key(r: LeaseRecord) -> tuple[str, float | None, int, str]:
    return (r.holder, r.renew_time, r.transitions, r.resource_version)
