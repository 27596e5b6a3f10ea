"""Leader election (`headrace_operator.election`) and what a takeover finds.

The API server is played by `LeaseServer`: one Lease per name, a
resourceVersion bumped on every write, and the two refusals the election
relies on (create of an existing Lease, replace at a stale resourceVersion:
409 Conflict). Candidates are driven round by round on explicit clocks, so
every time below is exact. The real API server, the chart's RBAC and a
leader killed mid-rescale are the end-to-end suite's step 8b.

The second half checks the claim a takeover rests on: `plan` is level-based,
so a new leader that finds a transition half done (the old one died after
applying some actions and before patching status) finishes it from what the
cluster and the status say.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from headrace_operator import manifests as mf
from headrace_operator.election import Conflict, Elector, LeaseRecord, Role, Timing, decide
from headrace_operator.reconcile import plan
from tests.support.kube_world import World

T = Timing(lease_duration=15, renew_deadline=10, retry_period=2)


class LeaseServer:
    """Leases as the API server keeps them (optimistic concurrency on resourceVersion)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], LeaseRecord] = {}
        self.version = 0
        self.down: set[str] = set()  # identities whose requests fail (a partition)
        self.caller = ""
        self.writes: list[tuple[str, str]] = []  # (caller, holder written)

    def _check(self) -> None:
        if self.caller in self.down:
            raise ConnectionError("API server unreachable")

    def get(self, namespace: str, name: str) -> LeaseRecord | None:
        self._check()
        return self.leases.get((namespace, name))

    def create(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        self._check()
        if (namespace, name) in self.leases:
            raise Conflict("leases.coordination.k8s.io already exists")
        return self._store(namespace, name, record)

    def replace(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        self._check()
        now = self.leases.get((namespace, name))
        if now is None or now.resource_version != record.resource_version:
            raise Conflict("the object has been modified")
        return self._store(namespace, name, record)

    def _store(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        stored = replace(record, resource_version=str(self.version))
        self.leases[(namespace, name)] = stored
        self.writes.append((self.caller, stored.holder))
        return stored


class As:
    """A candidate's view of the server: requests carry its identity (for partitions)."""

    def __init__(self, server: LeaseServer, me: str) -> None:
        self.server, self.me = server, me

    def get(self, namespace: str, name: str) -> LeaseRecord | None:
        self.server.caller = self.me
        return self.server.get(namespace, name)

    def create(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        self.server.caller = self.me
        return self.server.create(namespace, name, record)

    def replace(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        self.server.caller = self.me
        return self.server.replace(namespace, name, record)


def candidates(server: LeaseServer, *names: str) -> list[Elector]:
    # The wall clock only fills the record's times; 1000 s ahead of the monotonic one.
    return [
        Elector(As(server, n), "ops", "headrace-operator", n, T, wall=lambda: 1000.0, clock=lambda: 0.0)
        for n in names
    ]


# ------------------------------------------------------------------ the decision


def test_decide_covers_every_case() -> None:
    held = LeaseRecord(holder="a", lease_duration=15)
    assert decide("a", None, 0.0, 0.0, T) == "create"
    assert decide("a", held, 0.0, 100.0, T) == "renew"
    assert decide("b", held, 100.0, 114.9, T) == "wait"
    assert decide("b", held, 100.0, 115.0, T) == "take"
    assert decide("b", replace(held, holder=""), 100.0, 100.0, T) == "take"
    # The duration the holder wrote counts (a released Lease says 1 s).
    assert decide("b", replace(held, lease_duration=1), 100.0, 101.0, T) == "take"
    # A record without a duration falls back to the candidate's own.
    assert decide("b", replace(held, lease_duration=0), 100.0, 114.0, T) == "wait"


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        (Timing(15, 15, 2), "must be longer than the renew deadline"),
        (Timing(15, 2, 2), "1.2 x the retry period"),
        (Timing(15, 10, 0), "the retry period must be positive"),
    ],
)
def test_timings_that_could_give_two_leaders_are_refused(timing: Timing, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timing.check()


def test_the_lease_spec_is_what_kubectl_shows() -> None:
    r = LeaseRecord("op-7c9_1a2b3c4d", 15, acquire_time=1_765_000_000.25, renew_time=1_765_000_002.5)
    assert r.to_spec() == {
        "holderIdentity": "op-7c9_1a2b3c4d",
        "leaseDurationSeconds": 15,
        "acquireTime": "2025-12-06T05:46:40.250000Z",
        "renewTime": "2025-12-06T05:46:42.500000Z",
        "leaseTransitions": 0,
    }
    # As the API server (and the client's sanitizer) gives it back.
    back = LeaseRecord.from_spec(
        {**r.to_spec(), "renewTime": "2025-12-06T05:46:42.500000+00:00"}, resource_version="41"
    )
    assert back == replace(r, resource_version="41")
    assert LeaseRecord.from_spec(None) == LeaseRecord(lease_duration=0)


# ------------------------------------------------------------------ candidates over time


def test_first_candidate_leads_the_other_waits_and_never_takes_a_renewed_lease() -> None:
    server = LeaseServer()
    a, b = candidates(server, "a", "b")
    assert a.round(0.0) is Role.LEADING
    assert server.leases[("ops", "headrace-operator")].to_spec() | {"acquireTime": None} == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": None,
        "renewTime": "1970-01-01T00:16:40.000000Z",
        "leaseTransitions": 0,
    }
    roles = []
    for t in range(1, 120):
        if t % 2 == 0:
            roles.append(("a", a.round(float(t))))
        else:
            roles.append(("b", b.round(float(t))))
    assert {r for who, r in roles if who == "a"} == {Role.LEADING}
    assert {r for who, r in roles if who == "b"} == {Role.STANDBY}
    assert b.holder() == "a"


def test_a_killed_leader_is_replaced_once_its_lease_is_unchanged_for_the_lease_duration() -> None:
    server = LeaseServer()
    a, b = candidates(server, "a", "b")
    a.round(0.0)
    took = None
    for t in range(1, 60):
        if t % 2 == 0 and t <= 10:  # a renews at 2..10, then is killed (no release)
            a.round(float(t))
        elif t % 2 == 1 and b.round(float(t)) is Role.LEADING:
            took = t
            break
    # b last saw a change at t=11 (a's renew at 10): it waits 15 s of its own clock.
    assert took == 27
    lease = server.leases[("ops", "headrace-operator")]
    assert (lease.holder, lease.transitions) == ("b", 1)
    assert b.previous == "a"


def test_a_released_lease_is_taken_at_the_next_try() -> None:
    server = LeaseServer()
    a, b = candidates(server, "a", "b")
    a.round(0.0)
    assert b.round(1.0) is Role.STANDBY
    assert a.release() is True
    assert server.leases[("ops", "headrace-operator")].holder == ""
    assert b.round(3.0) is Role.LEADING
    assert server.leases[("ops", "headrace-operator")].transitions == 1
    # Releasing what is not yours changes nothing.
    assert a.release() is False
    assert server.leases[("ops", "headrace-operator")].holder == "b"


def test_of_two_candidates_racing_for_a_free_lease_exactly_one_wins() -> None:
    server = LeaseServer()
    a, b = candidates(server, "a", "b")
    # Both read "no Lease", then both create: the second create is refused.
    assert a.round(0.0) is Role.LEADING and b.round(0.0) is Role.STANDBY
    a.release()
    # Both read the released Lease at the same resourceVersion; b writes first.
    got = server.get("ops", "headrace-operator")
    server.leases[("ops", "headrace-operator")] = got  # unchanged
    b_store = b.store

    class Racing(As):
        def get(self, namespace: str, name: str) -> LeaseRecord | None:
            record = super().get(namespace, name)
            # b's round runs between a's read and a's write.
            assert b.round(5.0) is Role.LEADING
            b.store = b_store
            return record

    a.store = Racing(server, "a")
    a.leading = False
    a.stop.clear()
    assert a.round(5.0) is Role.STANDBY
    assert server.leases[("ops", "headrace-operator")].holder == "b"


def test_a_leader_cut_off_from_the_api_stops_before_anyone_may_take_over() -> None:
    server = LeaseServer()
    a, b = candidates(server, "a", "b")
    a.round(0.0)
    b.round(1.0)
    server.down.add("a")  # from t=0 on, a's renewals fail
    lost = took = None
    for t in range(2, 40):
        if t % 2 == 0 and lost is None and a.round(float(t)) is Role.LOST:
            lost = t
        elif t % 2 == 1 and took is None and b.round(float(t)) is Role.LEADING:
            took = t
    assert (lost, took) == (10, 17)
    assert lost < took


def test_a_leader_that_finds_the_lease_taken_stops_at_once() -> None:
    server = LeaseServer()
    (a,) = candidates(server, "a")
    a.round(0.0)
    key = ("ops", "headrace-operator")
    server.leases[key] = replace(server.leases[key], holder="intruder")
    assert a.round(2.0) is Role.LOST
    assert a.leading is False
    # It never writes the Lease back.
    assert server.writes == [("a", "a")]


def test_never_two_leaders_under_random_kills_partitions_and_restarts() -> None:
    """A seeded schedule of faults over 2000 s: at no instant do two candidates lead.

    A candidate counts as leading from the round that made it leader until the
    round that reports it lost (or its death): the time it would be running kopf.
    """
    rng = random.Random(26)
    server = LeaseServer()
    names = ["a", "b", "c"]
    els = dict(zip(names, candidates(server, *names), strict=True))
    phase = {n: rng.uniform(0, 2) for n in names}
    alive = dict.fromkeys(names, True)
    generation = dict.fromkeys(names, 0)
    overlaps, takeovers = [], 0
    t = 0.0
    while t < 2000:
        t = round(t + 0.25, 2)
        for n in names:
            if rng.random() < 0.0015:  # killed or restarted
                alive[n] = not alive[n]
                if alive[n]:
                    generation[n] += 1
                    ident = f"{n}{generation[n]}"
                    els[n] = Elector(As(server, ident), "ops", "headrace-operator", ident, T)
                else:
                    els[n].leading = False  # its process is gone
            if rng.random() < 0.002:
                server.down ^= {els[n].identity}
            if alive[n] and abs((t - phase[n]) % T.retry_period) < 0.125:
                was = els[n].leading
                els[n].round(t)
                takeovers += int(els[n].leading and not was)
        leaders = [n for n in names if alive[n] and els[n].leading]
        if len(leaders) > 1:
            overlaps.append((t, leaders))
    assert overlaps == []
    assert takeovers >= 5  # the schedule did exercise takeovers


# ------------------------------------------------------------------ a takeover mid-transition


def _die_after(w: World, cut: int) -> None:
    """The leader's last reconcile: it plans, applies the first ``cut`` actions and dies
    before patching status (the worst point: the cluster moved, status did not)."""
    w.now += 1.0
    p = plan(w.observe())
    for a in p.actions[:cut]:
        w.apply(a)


def _rescale_points() -> list[tuple[int, int]]:
    """(step, cut) for every step of a 2 -> 3 rescale and every cut of its actions."""
    w = _rescaling()
    points = []
    for step in range(6):
        n = len(plan(_advance(w, step).observe()).actions)
        points += [(step, cut) for cut in range(n + 1)]
    return points


def _rescaling() -> World:
    w = World(next_set=True)
    w.run_until_running()
    w.commit(7)
    w.edit(replicas=3)
    return w


def _advance(w: World, steps: int) -> World:
    """``w`` after ``steps`` reconciles of a healthy operator (a fresh copy)."""
    import copy

    w = copy.deepcopy(w)
    for i in range(steps):
        w.step()
        if i == 1:
            w.commit(8)  # the stop barrier's snapshot
        w.kubelet()
    return w


@pytest.mark.parametrize(("step", "cut"), _rescale_points())
def test_a_new_leader_finishes_a_rescale_its_predecessor_left_at_any_point(step: int, cut: int) -> None:
    w = _advance(_rescaling(), step)
    _die_after(w, cut)
    w.kubelet()
    # The new leader knows nothing but what it reads.
    for _ in range(8):
        w.step(dt=2)
        w.kubelet()
        if w.status.get("phase") == "Running" and "transition" not in w.status and len(w.sets) == 1:
            break
    assert w.status["phase"] == "Running", w.status
    assert w.sts is not None and w.sts["spec"]["replicas"] == 3
    # The new pods are the other set's (started while the old ones stopped), or the
    # same set's when the cut left the old set stopped with the new one unapplied.
    assert sorted(p.name for p in w.pods) == [f"{mf.sts_name(w.sts)}-{i}" for i in range(3)]
    assert list(w.sets) == [mf.sts_name(w.sts)], "the old set is deleted once its pods are gone"
    assert len(w.status["partitions"]["assignment"]) == 3
    assert w.store.exists and w.store.epoch >= 7, "state kept"
    assert not any(a.startswith("delete state") for a in w.applied), w.applied
    assert w.cond("Ready")["status"] == "True"


# ------------------------------------------------------------------ settings and the console script


def test_settings_of_leader_election() -> None:
    from headrace_operator.config import load

    s = load(
        {
            "HEADRACE_OPERATOR_LEADER_ELECTION": "true",
            "HEADRACE_OPERATOR_LEASE_DURATION": "30",
            "HEADRACE_OPERATOR_RENEW_DEADLINE": "20",
            "HEADRACE_OPERATOR_RETRY_PERIOD": "4",
            "HEADRACE_OPERATOR_POD_NAMESPACE": "ops",
            "HEADRACE_OPERATOR_POD_NAME": "headrace-operator-7c9-x2",
            "HOSTNAME": "ignored",
        }
    )
    assert (s.leader_election, s.lease_duration, s.renew_deadline, s.retry_period) == (True, 30.0, 20.0, 4.0)
    assert s.lease_location() == ("ops", "headrace-operator")
    assert s.pod_name == "headrace-operator-7c9-x2"
    off = load({"HOSTNAME": "laptop"})
    assert (off.leader_election, off.pod_name, off.lease_location()) == (
        False,
        "laptop",
        ("default", "headrace-operator"),
    )


def test_leader_election_and_kopf_peering_exclude_each_other() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "headrace_operator.main", "--leader-election", "--peering", "p"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--leader-election and --peering exclude each other" in proc.stderr
