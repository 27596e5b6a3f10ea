"""Redis Streams connectors against a real redis-server on a free loopback port.

The crash test runs the real runner (``-p 2 -w 2``) with Redis recovery,
kills a worker process with SIGKILL, and resumes.
"""

from __future__ import annotations

import collections
import os
import pickle
import random
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import headrace.operators as op
from headrace._engine import execute, request_stop
from headrace._engine._store import PARTS, open_store
from headrace.connectors.redis import RedisStreamEntry, RedisStreamSink, RedisStreamSource
from headrace.dataflow import Dataflow
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.errors import causes_text
from tests.support.runs import check_output, launch, run_with_kills
from tests.support.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
ZERO = timedelta(0)


def _r(server: RedisServer) -> Any:
    return redis.Redis.from_url(server.url)


def _add(r: Any, key: str, n: int, field: str = "n", start: int = 0) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(key, {field: str(i)})
    return [x.decode() for x in pipe.execute()]


def _read(server: RedisServer, streams: list[str], **kw: Any) -> list[RedisStreamEntry]:
    flow = Dataflow("read")
    out: list[Any] = []
    op.output(
        "out",
        op.input("in", flow, RedisStreamSource(server.url, streams, tail=False, **kw)),
        TestingSink(out),
    )
    run_main(flow)
    return out


def test_source_to_sink_round_trip(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    ids_a = _add(r, "a", 250)
    ids_b = _add(r, "b", 40)
    r.xadd("a", {"bin": b"\xff\x00", "n": "x"})
    flow = Dataflow("rt")
    seen: list[Any] = []
    src = RedisStreamSource(redis_server.url, ["a", "b"], tail=False, batch_size=32)
    entries = op.input("in", flow, src)
    op.output("tap", entries, TestingSink(seen))
    op.output(
        "out",
        op.map("pair", entries, lambda e: (f"copy-{e.stream}", e.fields)),
        RedisStreamSink(redis_server.url, None),
    )
    run_main(flow)
    assert [e.id for e in seen if e.stream == "a"][:250] == ids_a
    assert [e.id for e in seen if e.stream == "b"] == ids_b
    assert seen[-1].fields == {b"bin": b"\xff\x00", b"n": b"x"} or any(
        e.fields == {b"bin": b"\xff\x00", b"n": b"x"} for e in seen
    )
    copied = [f for _id, f in r.xrange("copy-a")]
    assert copied[:250] == [{b"n": str(i).encode()} for i in range(250)]
    assert copied[250] == {b"bin": b"\xff\x00", b"n": b"x"}
    assert r.xlen("copy-b") == 40


def test_decode_gives_str_fields(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    r.xadd("d", {"name": "ann", "city": "Oslo"})
    [e] = _read(redis_server, ["d"], decode=True)
    assert e.stream == "d" and e.fields == {"name": "ann", "city": "Oslo"}


def test_tail_false_ends_at_the_last_entry_seen_at_start(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    _add(r, "grow", 50)
    flow = Dataflow("tailfalse")
    out: list[Any] = []
    done = threading.Event()

    def more_once(batch: list[Any]) -> list[Any]:
        if not done.is_set():
            done.set()
            _add(r, "grow", 20, start=50)
        return batch

    src = RedisStreamSource(redis_server.url, ["grow"], tail=False, batch_size=5)
    s = op.flat_map_batch("more", op.input("in", flow, src), more_once)
    op.output("out", op.map("n", s, lambda e: int(e.fields[b"n"])), TestingSink(out))
    run_main(flow)
    assert done.is_set() and out == list(range(50)) and r.xlen("grow") == 70


def test_start_id_latest_and_explicit(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    ids = _add(r, "s", 10)
    assert [int(e.fields[b"n"]) for e in _read(redis_server, ["s"], start_id=ids[6])] == [7, 8, 9]
    assert _read(redis_server, ["s"], start_id="$") == []
    r.xadd("empty", {"x": "1"})
    r.xtrim("empty", maxlen=0)
    assert _read(redis_server, ["empty"]) == []


def test_idle_reads_wait_instead_of_spinning(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    _add(r, "idle", 3)
    part = RedisStreamSource(redis_server.url, ["idle"]).build_part("f.in", "idle", None)
    assert len(part.next_batch()) == 3 and part.next_awake() is None
    pauses = []
    for _ in range(6):
        before = datetime.now(UTC)
        assert part.next_batch() == []
        awake = part.next_awake()
        assert awake is not None
        pauses.append(awake - before)
    # Each empty read schedules the next one later, backing off while idle.
    assert pauses[0] >= timedelta(milliseconds=1) and pauses[-1] >= timedelta(milliseconds=8)
    part.close()


@pytest.mark.slow
def test_tail_true_with_latest_reads_only_new_entries(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    _add(r, "live", 5)
    flow = Dataflow("live")
    out: list[Any] = []
    src = RedisStreamSource(redis_server.url, ["live"], start_id="$")
    op.output("out", op.map("n", op.input("in", flow, src), lambda e: int(e.fields[b"n"])), TestingSink(out))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            execute(flow, epoch_interval=timedelta(milliseconds=50))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        # The partition is built (and has read the stream's last id) once
        # an epoch has passed; then add entries.
        time.sleep(1.0)
        _add(r, "live", 20, start=100)
        deadline = time.monotonic() + 30
        while len(out) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        request_stop()
        t.join(30)
    assert not errors, errors
    assert out == list(range(100, 120))


def test_sink_trims_with_maxlen(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    for key, approximate in (("approx", True), ("exact", False)):
        flow = Dataflow("trim")
        items = [{"i": str(i)} for i in range(1000)]
        op.output(
            "out",
            op.input("in", flow, TestingSource(items, batch_size=100)),
            RedisStreamSink(redis_server.url, key, maxlen=100, approximate=approximate),
        )
        run_main(flow)
        assert r.xrevrange(key, count=1)[0][1] == {b"i": b"999"}
        if approximate:
            assert 100 <= r.xlen(key) < 1000
        else:
            assert r.xlen(key) == 100


def test_sink_rejects_bad_items(redis_server: RedisServer) -> None:
    flow = Dataflow("badsink")
    op.output(
        "out", op.input("in", flow, TestingSource(["not a dict"])), RedisStreamSink(redis_server.url, "x")
    )
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert "dict of fields" in causes_text(info.value) and "badsink.out" in causes_text(info.value)


def test_missing_stream_and_wrong_type_are_named(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    r.set("plain", "1")
    with pytest.raises(Exception) as info:
        _read(redis_server, ["no-such-stream"])
    assert "'no-such-stream' does not exist" in causes_text(info.value)
    with pytest.raises(Exception) as info:
        _read(redis_server, ["plain"])
    assert "'plain'" in causes_text(info.value) and "not a stream" in causes_text(info.value)


def test_unreachable_redis_fails_fast_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    flow = Dataflow("nosrv")
    op.output("out", op.input("in", flow, RedisStreamSource(url, ["s"])), TestingSink([]))
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert time.monotonic() - t0 < 20
    assert url in causes_text(info.value) and "unreachable" in causes_text(info.value)

    flow = Dataflow("nosrv_sink")
    op.output("out", op.input("in", flow, TestingSource([{"a": "1"}])), RedisStreamSink(url, "s"))
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert url in causes_text(info.value) and "nosrv_sink.out" in causes_text(info.value)


def _lag(port: int, step_id: str, part: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for fam in text_string_to_metric_families(text):
        if fam.name == "headrace_source_lag":
            for s in fam.samples:
                if s.labels["step_id"] == step_id and s.labels["partition"] == part:
                    return s.value
    return None


def _wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_lag_metric_follows_a_producer_that_outruns_the_dataflow(
    redis_server: RedisServer,
) -> None:
    r = _r(redis_server)
    _add(r, "lagged", 500)  # the producer is far ahead of the dataflow
    gate = threading.Semaphore(0)
    out: list[Any] = []

    def gated(batch: list[Any]) -> list[Any]:
        assert gate.acquire(timeout=60)
        return batch

    flow = Dataflow("slag")
    src = RedisStreamSource(redis_server.url, ["lagged"], batch_size=50)
    op.output("out", op.flat_map_batch("gate", op.input("in", flow, src), gated), TestingSink(out))
    port = free_port()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            execute(flow, epoch_interval=ZERO, metrics_port=port, metrics_host="127.0.0.1")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def step() -> None:
        n = len(out)
        gate.release()
        _wait_for(lambda: len(out) == n + 50, "a batch")

    try:
        step()
        # Cached for a second: the first report is exact, later ones follow.
        _wait_for(lambda: _lag(port, "slag.in", "lagged") == 450, "lag 450")
        _add(r, "lagged", 300, start=500)  # ...and it adds more meanwhile
        seen = []
        for _ in range(15):
            step()
            seen.append(_lag(port, "slag.in", "lagged") or 0.0)
        assert len(out) == 800
        assert max(seen) > 0 and all(0 <= lag <= 750 for lag in seen), seen
        for _ in range(5):
            gate.release()
        _wait_for(lambda: _lag(port, "slag.in", "lagged") == 0, "lag back to 0")
    finally:
        request_stop()
        for _ in range(100):
            gate.release()
        t.join(30)
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_mid_run_resumes_at_committed_entries(redis_server: RedisServer, tmp_path: Path) -> None:
    r = _r(redis_server)
    rng = random.Random(5)
    counts: collections.Counter[str] = collections.Counter()
    streams = ["in-0", "in-1", "in-2"]
    for key in streams:
        pipe = r.pipeline(transaction=False)
        for _ in range(400):
            words = [f"w{rng.randrange(40)}" for _ in range(rng.randrange(1, 5))]
            counts.update(words)
            pipe.xadd(key, {"text": " ".join(words)})
        pipe.execute()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HR_REDIS=redis_server.url,
        HR_STREAMS=",".join(streams),
        HR_OUT="counted",
        HR_OUT_DIR=str(out_dir),
        HR_SLOW="0.1",
    )
    args = ["-p", "2", "-w", "2", "-r", redis_server.url, "--epoch-interval", "0.1"]
    flow = "tests.support.flows.redis_stream_flows:running_counts()"
    # A kill that lands as the run finishes leaves nothing to report (-9, 247).
    assert run_with_kills(lambda: launch(args, env, flow), out_dir, rng, (20, 120), ok_codes=(-9, 247)) >= 1
    check_output(out_dir, counts)
    lines = {f[b"line"].decode() for _id, f in r.xrange("counted")}
    assert lines == {f"{w} {n}" for w, c in counts.items() for n in range(1, c + 1)}
    store = open_store(redis_server.url, "stream_counts")
    parts = {
        name: pickle.loads(blob)
        for name, blob in store.load("stream_counts.in", [PARTS]).get(PARTS, {}).items()
    }
    assert {k: v[0] for k, v in parts.items()} == {
        k: r.xinfo_stream(k)["last-generated-id"].decode() for k in streams
    }


@pytest.mark.slow
def test_redis_streams_example(redis_server: RedisServer) -> None:
    r = _r(redis_server)
    for i in range(6):
        r.xadd("sensors", {"sensor": f"s{i % 2}", "celsius": str(20 + i)})
    env = dict(os.environ, REDIS_URL=redis_server.url, HEADRACE_METRICS_PORT="0")
    proc = subprocess.run(
        [sys.executable, "-m", "headrace.run", "examples/redis_streams.py:flow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [{k.decode(): v.decode() for k, v in f.items()} for _id, f in r.xrange("alerts")]
    assert got == [{"sensor": "s0", "fahrenheit": "75.2"}, {"sensor": "s1", "fahrenheit": "77.0"}]
