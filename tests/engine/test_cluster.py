"""Multi-process clusters on 127.0.0.1: real processes, real sockets, real kills."""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine._net import Mesh
from headrace._engine._net_protocol import PROTOCOL_VERSION, ClusterError, Hello, parse_address
from headrace.dataflow import Dataflow
from headrace.run import _ordinal_from_hostname, _parser, _resolve_addresses
from headrace.testing import TestingSink, TestingSource
from tests.support.servers import cluster_in_threads, free_ports

ROOT = Path(__file__).resolve().parents[2]
FLOW = "tests.support.flows.cluster_flows:wordcount()"


def _env(out: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HR_OUT": str(out), "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headrace.run", *args, "--metrics-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _expected(parts: int, items: int) -> dict[str, int]:
    c: collections.Counter[str] = collections.Counter()
    for p in range(parts):
        for i in range(items):
            c.update(f"p{p} w{i % 17} w{i % 5}".split())
    return dict(c)


def _read_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in sorted(out.glob("*.txt")):
        for line in f.read_text().splitlines():
            word, n = line.split()
            assert word not in counts, f"{word} counted twice"
            counts[word] = int(n)
    return counts


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("procs", "workers"), [(2, 1), (2, 2), (3, 1)])
def test_local_cluster_matches_expected(tmp_path: Path, procs: int, workers: int) -> None:
    env = _env(tmp_path, HR_PARTS="5", HR_ITEMS="400", HR_BATCH="37")
    p = _run([FLOW, "-p", str(procs), "-w", str(workers), "--epoch-interval", "0.01"], env)
    _, err = p.communicate(timeout=100)
    assert p.returncode == 0, err
    assert _read_counts(tmp_path) == _expected(5, 400)
    files = sorted(f.name for f in tmp_path.glob("*.txt"))
    assert len(files) == procs * workers
    assert all(f.endswith(f"-of-{procs * workers}.txt") for f in files)


def _manual(
    tmp_path: Path,
    n: int,
    flows: list[str] | None = None,
    extra: list[list[str]] | None = None,
    **env_extra: str,
) -> tuple[list[subprocess.Popen[str]], str]:
    ports = free_ports(n)
    addrs = ";".join(f"127.0.0.1:{p}" for p in ports)
    env = _env(tmp_path, **env_extra)
    procs = []
    for i in range(n):
        flow = flows[i] if flows else FLOW
        more = extra[i] if extra else []
        procs.append(_run([flow, "-i", str(i), "-a", addrs, *more], env))
    return procs, addrs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("secret", ["s3cret", ""], ids=["sealed", "no-secret"])
def test_kill_9_one_process_stops_the_others_naming_it(tmp_path: Path, secret: str) -> None:
    procs, addrs = _manual(
        tmp_path, 3, HR_DELAY="0.05", HR_ITEMS="100000", HR_BATCH="10", HEADRACE_CLUSTER_SECRET=secret
    )
    time.sleep(3)
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll()]
    victim = procs[1]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim_port = addrs.split(";")[1]
    for p in (procs[0], procs[2]):
        _, err = p.communicate(timeout=30)
        assert time.monotonic() - killed_at < 10, "survivor took too long to stop"
        assert p.returncode != 0
        assert f"process 1 at {victim_port}" in err, err


@pytest.mark.timeout(60)
def test_mismatched_dataflows_refuse_to_connect(tmp_path: Path) -> None:
    procs, _ = _manual(tmp_path, 2, flows=[FLOW, "tests.support.flows.cluster_flows:other()"], HR_DELAY="0.1")
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=50)
        assert p.returncode != 0
        errs.append(err)
    assert any("dataflows differ" in e for e in errs), errs
    # The message names both sides.
    joined = "\n".join(errs)
    assert "process 0" in joined and "process 1" in joined


@pytest.mark.timeout(60)
def test_mismatched_worker_counts_refuse_to_connect(tmp_path: Path) -> None:
    procs, _ = _manual(tmp_path, 2, extra=[["-w", "1"], ["-w", "2"]], HR_DELAY="0.1")
    errs = [p.communicate(timeout=50)[1] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert any("workers per process differ" in e for e in errs), errs


@pytest.mark.timeout(60)
def test_missing_peer_times_out_naming_it(tmp_path: Path) -> None:
    ports = free_ports(2)
    addrs = f"127.0.0.1:{ports[0]};127.0.0.1:{ports[1]}"
    p = _run([FLOW, "-i", "1", "-a", addrs, "--startup-timeout", "2"], _env(tmp_path))
    _, err = p.communicate(timeout=50)
    assert p.returncode != 0
    assert f"could not reach process 0 at 127.0.0.1:{ports[0]}" in err, err


@pytest.mark.timeout(120)
def test_sigterm_stops_the_whole_cluster_cleanly(tmp_path: Path) -> None:
    procs, _ = _manual(
        tmp_path,
        2,
        HR_DELAY="0.05",
        HR_ITEMS="100000",
        HR_BATCH="10",
        extra=[["--epoch-interval", "0.2"]] * 2,
    )
    time.sleep(3)
    assert all(p.poll() is None for p in procs)
    procs[0].send_signal(signal.SIGTERM)
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        errs.append(err)
    assert "stopping at the next epoch boundary" in errs[0]
    # Stopped before the end of input, so the final counts were never emitted.
    assert _read_counts(tmp_path) == {}


@pytest.mark.timeout(120)
def test_sigterm_while_a_connected_process_builds_its_workers_stops_cleanly(tmp_path: Path) -> None:
    """Connected but still building (restoring state): SIGTERM is a clean stop, not a crash.

    Exiting at once there looked like a crash to the peers, which had
    started, so the whole cluster failed (seen in CI on a rescale restart).
    """
    marks = tmp_path / "marks"
    procs, _ = _manual(
        tmp_path,
        2,
        HR_DELAY="0.05",
        HR_ITEMS="100000",
        HR_BATCH="10",
        HR_BUILD_DELAY="3",
        HR_BUILD_MARK=str(marks),
    )
    mark = marks / f"building-{procs[1].pid}"
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert time.monotonic() < deadline, "process 1 never started building its workers"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        errs.append(err)
    assert "stopping at the next epoch boundary" in errs[1]
    assert "before the dataflow started" not in errs[1]
    assert _read_counts(tmp_path) == {}


def test_cluster_main_two_processes_in_threads() -> None:
    outs: list[list[tuple[str, int]]] = [[], []]

    def build(out: list[tuple[str, int]]) -> Dataflow:
        flow = Dataflow("threads")
        s = op.input("i", flow, TestingSource([f"k{i % 10}" for i in range(1000)], batch_size=7))
        op.output("o", op.count_final("c", s, lambda x: x), TestingSink(out))
        return flow

    cluster_in_threads(lambda i: build(outs[i]), worker_count_per_proc=2)
    assert sorted(outs[0] + outs[1]) == [(f"k{i}", 100) for i in range(10)]


def test_ordinal_and_peer_pattern() -> None:
    assert _ordinal_from_hostname("wordcount-12") == 12
    assert _ordinal_from_hostname("wc-0.wc.ns.svc.cluster.local") == 0
    with pytest.raises(SystemExit, match="no trailing"):
        _ordinal_from_hostname("nohyphen")
    args = _parser().parse_args(["m:f", "--peer-pattern", "wc-{i}.wc:2101", "--replicas", "3"])
    assert _resolve_addresses(args) == ["wc-0.wc:2101", "wc-1.wc:2101", "wc-2.wc:2101"]
    args = _parser().parse_args(["m:f", "-a", "a:1;b:2"])
    assert _resolve_addresses(args) == ["a:1", "b:2"]


def test_hello_mismatch_names_both_sides() -> None:
    a = Hello(1, 0, 2, 1, "f", "aaa", "h0:1")
    b = Hello(1, 1, 2, 1, "f", "bbb", "h1:1")
    msg = a.mismatch(b)
    assert msg is not None
    assert "process 0 (h0:1)" in msg and "process 1 (h1:1)" in msg and "aaa" in msg
    assert a.mismatch(Hello(1, 1, 2, 1, "f", "aaa", "h1:1")) is None
    assert "protocol versions differ" in (a.mismatch(Hello(2, 1, 2, 1, "f", "aaa", "x")) or "")
    assert parse_address("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError, match="host:port"):
        parse_address("nohost")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("proc_id", [0, 1, 2])
def test_sigterm_while_waiting_for_peers_exits_promptly(tmp_path: Path, proc_id: int) -> None:
    """Alone in a 3-process cluster, any process exits on SIGTERM within seconds.

    Process 0 only accepts, process 2 only dials, process 1 does both: a pod
    that the kubelet restarts just before it is deleted is in this state, and
    must not sit out its termination grace period.
    """
    ports = free_ports(3)
    addrs = ";".join(f"127.0.0.1:{port}" for port in ports)
    p = _run([FLOW, "-i", str(proc_id), "-a", addrs, "--startup-timeout", "60"], _env(tmp_path))
    time.sleep(2)
    assert p.poll() is None, "still waiting for its peers"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "before the dataflow started" in err


def _connect_when_listening(port: int, proc: subprocess.Popen[str]) -> socket.socket:
    """A connection to ``proc``'s cluster port on 127.0.0.1, once it listens."""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the process never listened"
        assert proc.poll() is None, proc.communicate()
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.05)


@pytest.mark.timeout(90)
def test_stray_connections_do_not_keep_peers_out(tmp_path: Path) -> None:
    """Connections that are not a peer's are dropped, and slow ones delay nobody.

    Process 0 is waiting for process 1 when three strangers connect to its
    port: an HTTP request (whose first four bytes read as a 1.2 GB frame), a
    client that connects and says nothing, and one that connects and closes
    at once (as a TCP probe does). Process 1 then joins, and the cluster
    must form at once and count every word.
    """
    ports = free_ports(2)
    addrs = ";".join(f"127.0.0.1:{port}" for port in ports)
    env = _env(tmp_path, HR_PARTS="3", HR_ITEMS="300")
    first = _run([FLOW, "-i", "0", "-a", addrs, "--startup-timeout", "60"], env)
    strangers = [_connect_when_listening(ports[0], first) for _ in range(3)]
    strangers[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: worker-0\r\n\r\n")
    strangers[2].close()
    joined_at = time.monotonic()
    second = _run([FLOW, "-i", "1", "-a", addrs, "--startup-timeout", "60"], env)
    try:
        errs = []
        for p in (first, second):
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            errs.append(err)
    finally:
        for sock in strangers:
            sock.close()
    # The silent stranger was still connected when the cluster finished.
    assert time.monotonic() - joined_at < 30
    assert _read_counts(tmp_path) == _expected(3, 300)
    assert "not a Headrace peer" in errs[0], errs[0]


@pytest.mark.timeout(60)
def test_dialing_something_that_never_answers_names_it(tmp_path: Path) -> None:
    """A peer address where something accepts but never answers fails the handshake by name."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes connections; nobody reads them
    try:
        addrs = f"127.0.0.1:{silent.getsockname()[1]};127.0.0.1:{free_ports(1)[0]}"
        p = _run([FLOW, "-i", "1", "-a", addrs, "--startup-timeout", "30"], _env(tmp_path))
        _, err = p.communicate(timeout=50)
    finally:
        silent.close()
    assert p.returncode != 0
    assert f"process 0 at {addrs.split(';')[0]} accepted the connection but the handshake " in err
    assert "TimeoutError" in err, err


def _pair(tmp_path: Path, secrets: tuple[str, str], timeout: str = "60") -> list[str]:
    """Run a 2-process cluster whose processes have these cluster secrets; their stderr."""
    ports = free_ports(2)
    addrs = ";".join(f"127.0.0.1:{port}" for port in ports)
    procs = [
        _run(
            [FLOW, "-i", str(i), "-a", addrs, "--startup-timeout", timeout],
            _env(tmp_path, HR_PARTS="3", HR_ITEMS="300", HEADRACE_CLUSTER_SECRET=secret),
        )
        for i, secret in enumerate(secrets)
    ]
    return [p.communicate(timeout=60)[1] + f"\nexit {p.returncode}" for p in procs]


@pytest.mark.timeout(90)
def test_processes_with_the_same_secret_form_a_cluster(tmp_path: Path) -> None:
    errs = _pair(tmp_path, ("s3cret", "s3cret"))
    assert all(e.endswith("exit 0") for e in errs), errs
    assert _read_counts(tmp_path) == _expected(3, 300)


@pytest.mark.timeout(90)
def test_a_wrong_secret_is_turned_away_and_stops_no_one_else(tmp_path: Path) -> None:
    """The dialer with the wrong secret fails at once; process 0 is not stopped by it.

    Process 0 keeps waiting for a process 1 that can prove it holds the
    secret, and its startup timeout then says whom it turned away.
    """
    errs = _pair(tmp_path, ("right", "wrong"), timeout="6")
    assert "refused this process: wrong or missing cluster secret" in errs[1], errs[1]
    assert errs[1].endswith("exit 1")
    assert "got no connection from process 1" in errs[0], errs[0]
    assert "turned away: 127.0.0.1:" in errs[0]
    assert "did not prove it holds the cluster secret" in errs[0]
    assert errs[0].endswith("exit 1")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("which", [0, 1])
def test_a_secret_on_one_side_only_names_both(tmp_path: Path, which: int) -> None:
    secrets = ("s", "") if which == 0 else ("", "s")
    errs = _pair(tmp_path, secrets, timeout="6")
    has, lacks = (0, 1) if which == 0 else (1, 0)
    assert all(e.endswith("exit 1") for e in errs), errs
    said = re.compile(
        rf"process {has}\b[^\n]* has a cluster secret and process {lacks}\b[^\n]* "
        r"has none: set the same \$HEADRACE_CLUSTER_SECRET on every process"
    )
    # The process that found out says so; the other one hears it (or, holding
    # the secret, is told nothing it could trust and names whom it turned away).
    assert said.search(errs[1]), errs[1]
    if which == 0:
        assert "turned away" in errs[0] and said.search(errs[0]), errs[0]
    else:
        assert said.search(errs[0]), errs[0]


@pytest.mark.timeout(90)
def test_a_forged_hello_without_the_secret_stops_nothing(tmp_path: Path) -> None:
    """A client that speaks the handshake but lacks the secret can't join or stop the cluster.

    It answers process 0's challenge with the hello process 1 would send, but
    with a wrong dataflow fingerprint and no proof of the secret: without a
    secret such a hello would stop process 0 as a mismatch. Process 0 turns
    it away, and the real process 1 then joins.
    """
    ports = free_ports(2)
    addrs = ";".join(f"127.0.0.1:{port}" for port in ports)
    env = _env(tmp_path, HR_PARTS="3", HR_ITEMS="300", HEADRACE_CLUSTER_SECRET="k3y")
    first = _run([FLOW, "-i", "0", "-a", addrs, "--startup-timeout", "60"], env)
    forger = _connect_when_listening(ports[0], first)

    def recv() -> dict[str, object]:
        (n,) = struct.unpack(">I", forger.recv(4, socket.MSG_WAITALL))
        return json.loads(forger.recv(n, socket.MSG_WAITALL))

    challenge = recv()
    assert challenge["mesh"] == "headrace-mesh" and challenge["secret"] is True
    hello = {
        "version": challenge["version"],
        "proc_id": 1,
        "process_count": 2,
        "workers_per_process": 1,
        "flow_id": "forged",
        "fingerprint": "0" * 16,
        "address": addrs.split(";")[1],
    }
    body = json.dumps({"hello": hello, "nonce": "00", "mac": "0" * 64}).encode()
    forger.sendall(struct.pack(">I", len(body)) + body)
    assert "wrong or missing cluster secret" in str(recv()["refused"])
    forger.close()
    second = _run([FLOW, "-i", "1", "-a", addrs, "--startup-timeout", "60"], env)
    errs = [p.communicate(timeout=60)[1] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], errs
    assert _read_counts(tmp_path) == _expected(3, 300)
    assert "did not prove it holds the cluster secret" in errs[0], errs[0]


def _start_meshes(
    hellos: list[Hello],
    addrs: list[str],
    secret: bytes | None = None,
    deliver: Callable[[int, Any], None] = lambda dst, msg: None,
    on_lost: Callable[[BaseException], None] = lambda exc: None,
) -> tuple[list[Mesh], list[object]]:
    """Start one `Mesh` per hello, each in a thread, with an hour's startup timeout.

    Returns the meshes and what each `start()` gave: None, or the exception
    it raised. A mesh that only noticed its peers (or a failure) on its
    startup timeout would hang here, caught by the join's guard.
    """
    meshes = [Mesh(addrs, i, h, deliver, on_lost, None, 3600.0, secret) for i, h in enumerate(hellos)]
    results: list[object] = [Ellipsis] * len(meshes)

    def start(i: int) -> None:
        try:
            meshes[i].start()
            results[i] = None
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(len(meshes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # a guard against a hang, not a speed limit
    assert Ellipsis not in results, f"a mesh is still starting: {results}"
    return meshes, results


@pytest.mark.timeout(120)
def test_the_acceptor_starts_when_its_last_peer_is_in_not_on_a_timeout() -> None:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    hellos = [Hello(PROTOCOL_VERSION, i, 3, 1, "f", "fp", addrs[i]) for i in range(3)]
    meshes, results = _start_meshes(hellos, addrs)
    try:
        assert results == [None, None, None]
        assert [sorted(m.peers) for m in meshes] == [[1, 2], [0, 2], [0, 1]]
    finally:
        _close_meshes(meshes)


def _close_meshes(meshes: list[Mesh]) -> None:
    # Together: each waits for the others' goodbyes.
    closers = [threading.Thread(target=m.close) for m in meshes]
    for t in closers:
        t.start()
    for t in closers:
        t.join(30)


@pytest.mark.timeout(120)
def test_a_mismatch_seen_while_greeting_stops_the_acceptor_at_once() -> None:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(2)]
    hellos = [Hello(PROTOCOL_VERSION, i, 2, 1, "f", f"fp{i}", addrs[i]) for i in range(2)]
    _, results = _start_meshes(hellos, addrs)
    assert all(isinstance(res, ClusterError) for res in results), results
    assert "cluster mismatch: dataflows differ" in str(results[0]), results[0]
    assert "process 0 at " in str(results[1]), results[1]
    assert "refused this process: dataflows differ" in str(results[1]), results[1]


TRIPPED: list[str] = []


def _trip() -> str:
    TRIPPED.append("ran")
    return "tripped"


class _Tripwire:
    """Unpickling this runs `_trip`: what a pickle injected by an attacker could do."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_trip, ())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("secret", [b"s3cret", None], ids=["secret", "no-secret"])
def test_a_frame_injected_into_a_connection_is_not_run_with_a_secret(secret: bytes | None) -> None:
    """Bytes on process 1's connection to process 0 that process 1 did not send.

    That is what someone on the network path between two workers can do
    once the handshake is over. With a cluster secret the frame fails its
    seal and stops the cluster, naming the connection, before anything in
    it is unpickled; without one it runs (the network must be trusted),
    which is what shows this test can see an injection at all.
    """
    TRIPPED.clear()
    addrs = [f"127.0.0.1:{p}" for p in free_ports(2)]
    hellos = [Hello(PROTOCOL_VERSION, i, 2, 1, "f", "fp", addrs[i]) for i in range(2)]
    delivered: list[tuple[int, Any]] = []
    lost: list[BaseException] = []
    meshes, results = _start_meshes(
        hellos, addrs, secret, lambda dst, msg: delivered.append((dst, msg)), lost.append
    )
    try:
        assert results == [None, None]
        forged = pickle.dumps([(0, _Tripwire())])
        meshes[1].peers[0].sock.sendall(struct.pack(">I", len(forged)) + forged)
        deadline = time.monotonic() + 30
        while not (lost or delivered) and time.monotonic() < deadline:
            time.sleep(0.01)
        if secret is None:
            assert TRIPPED == ["ran"] and delivered == [(0, "tripped")], (delivered, lost)
        else:
            assert TRIPPED == [] and delivered == [], delivered
            assert len(lost) == 1, lost
            assert str(lost[0]).startswith(
                f"lost process 1 at {addrs[1]}: frame 0 failed authentication on its connection"
            ), lost[0]
            assert "nothing in it was run" in str(lost[0])
    finally:
        _close_meshes(meshes)


@pytest.mark.timeout(120)
def test_sealed_frames_carry_a_cluster_run_end_to_end(tmp_path: Path) -> None:
    """With a secret every frame is sealed: a real 3-process run gives the right counts."""
    procs, _ = _manual(tmp_path, 3, HR_PARTS="5", HR_ITEMS="3000", HEADRACE_CLUSTER_SECRET="s3cret")
    for p in procs:
        _, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
    assert _read_counts(tmp_path) == _expected(5, 3000)
