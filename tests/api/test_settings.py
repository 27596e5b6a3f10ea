"""Settings a user can get wrong, Redis errors in words, and secrets kept off command lines.

Issue 19, items 5 and 6. Every test runs the real CLI in a subprocess or a
real dataflow against a real redis-server (with ``requirepass`` where a
password matters); the secrets test reads ``/proc/<pid>/cmdline`` of the
worker processes of a running ``-p 2`` cluster.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

import headrace.operators as op
from headrace._engine._store import RecoveryStoreError, RedisStore, open_store
from headrace.dataflow import Dataflow
from headrace.recovery import RecoveryConfig, init_db_dir
from headrace.run import _strip_options
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.procs import children, wait_for_output
from tests.support.runs import check_output
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["headrace.run", "headrace.testing"]


def _cli(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in (
        "PROCESSES",
        "WORKERS_PER_PROCESS",
        "RECOVERY",
        "RECOVERY_DIRECTORY",
        "SNAPSHOT_INTERVAL",
        "BACKUP_INTERVAL",
        "EPOCH_INTERVAL",
    ):
        env.pop(f"HEADRACE_{name}", None)
        env.pop(f"BYTEWAX_{name}", None)
    return subprocess.run(
        [sys.executable, "-m", module, "examples.wordcount:flow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------ numbers out of range


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["-p", "0"], "-p/--processes"),
        (["-p", "-1"], "-p/--processes"),
        (["-w", "0"], "-w/--workers-per-process"),
        (["-s", "-1"], "-s/--snapshot-interval"),
        (["-b", "-1"], "-b/--backup-interval"),
    ],
)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_out_of_range_numbers_are_usage_errors(module: str, args: list[str], option: str) -> None:
    res = _cli(module, *args)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("usage: python -m " + module), res.stderr
    assert f"error: argument {option}: expected a " in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_out_of_range_numbers_from_the_environment_name_the_option() -> None:
    env = {**os.environ, "HEADRACE_WORKERS_PER_PROCESS": "0"}
    res = subprocess.run(
        [sys.executable, "-m", "headrace.run", "examples.wordcount:flow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "argument -w/--workers-per-process: expected a whole number >= 1; got '0'" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------ recovery locations

MISTYPED = [
    "redis:/127.0.0.1:6379/0",
    "127.0.0.1:6379",
    "localhost:6379",
    "redis:6379/0",
    "redis//127.0.0.1:6379",
    "http://127.0.0.1:6379",
    "[::1]:6379",
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("location", MISTYPED)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_a_mistyped_recovery_location_is_refused_not_made_a_directory(
    module: str, location: str, tmp_path: Path
) -> None:
    res = _cli(module, "-r", location, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith("usage: "), res.stderr
    assert "error: argument -r/--recovery" in res.stderr
    assert f"recovery location {location!r}" in res.stderr
    assert "Accepted: redis://" in res.stderr and "or a local directory" in res.stderr
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []  # no directory of that name


@pytest.mark.parametrize("location", MISTYPED)
def test_recovery_config_refuses_a_mistyped_location(location: str) -> None:
    with pytest.raises(ValueError, match="Accepted: redis://"):
        RecoveryConfig(location)
    with pytest.raises(ValueError, match="Accepted: redis://"):
        init_db_dir(location, 1)


def test_the_hint_names_the_url_meant() -> None:
    with pytest.raises(ValueError, match=re.escape("write redis://127.0.0.1:6379/0")):
        RecoveryConfig("127.0.0.1:6379")


def _sum_flow(out: list[Any]) -> Dataflow:
    flow = Dataflow("settings_sum")
    s = op.input("i", flow, TestingSource([("a", 1), ("a", 2), TestingSource.EOF(), ("a", 3)]))
    op.output("o", op.stateful_map("sum", s, lambda s, v: ((s or 0) + v,) * 2), TestingSink(out))
    return flow


def test_real_paths_with_a_colon_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = tmp_path / "state:1"
    init_db_dir(absolute, 1)
    out: list[Any] = []
    run_main(_sum_flow(out), recovery_config=RecoveryConfig(absolute))
    out2: list[Any] = []
    run_main(_sum_flow(out2), recovery_config=RecoveryConfig(str(absolute)))
    assert (out, out2) == ([("a", 1), ("a", 3)], [("a", 6)])
    monkeypatch.chdir(tmp_path)
    init_db_dir("./rel:2", 1)
    out3: list[Any] = []
    run_main(_sum_flow(out3), recovery_config=RecoveryConfig("./rel:2"))
    assert out3 == [("a", 1), ("a", 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel:2", "state:1"]


# ------------------------------------------------------------ Redis errors


@pytest.fixture
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password="pw-Zq81xK")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("given", ["wrong-password", None])
def test_refused_credentials_fail_at_once_and_say_so(
    redis_with_password: RedisServer, given: str | None
) -> None:
    auth = f":{given}@" if given else ""
    url = f"redis://{auth}127.0.0.1:{redis_with_password.port}/0"
    store = open_store(url, "settings_sum", retry_for=60.0)
    assert isinstance(store, RedisStore)
    with pytest.raises(RecoveryStoreError) as info:
        store.load_meta()
    assert store.errors == 1  # one attempt: not retried for 60 s
    msg = str(info.value)
    assert msg.startswith(
        f"Redis at redis://{':***@' if given else ''}127.0.0.1:"
        f"{redis_with_password.port}/0 (prefix 'settings_sum') refused the "
        "credentials while reading meta: "
    )
    # Redis's words (WRONGPASS / NOAUTH replies, without their code).
    assert ("invalid username-password pair" if given else "Authentication required") in msg
    assert "Not retried" in msg and "redis://USER:PASSWORD@HOST:PORT/DB" in msg
    assert "unreachable" not in msg and (given is None or given not in msg)
    # The same through a run.
    with pytest.raises(RecoveryStoreError, match="refused the credentials"):
        run_main(_sum_flow([]), recovery_config=RecoveryConfig(url, retry_for=60.0))


def test_a_full_redis_names_the_recovery_store_the_setting_and_the_fix(
    redis_server: RedisServer,
) -> None:
    out: list[Any] = []
    run_main(_sum_flow(out), recovery_config=RecoveryConfig(redis_server.url))
    assert out == [("a", 1), ("a", 3)]
    r = redis.Redis.from_url(redis_server.url)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)  # below what it uses: every write is refused
    try:
        with pytest.raises(RecoveryStoreError) as info:
            run_main(_sum_flow([]), recovery_config=RecoveryConfig(redis_server.url))
    finally:
        r.config_set("maxmemory", 0)
    msg = str(info.value)
    assert msg.startswith(f"Redis at {redis_server.url} (prefix 'settings_sum') refused a command while "), (
        msg
    )
    assert "command not allowed when used memory > 'maxmemory'" in msg
    assert "maxmemory" in msg and "noeviction" in msg and "CONFIG SET maxmemory" in msg
    assert "resumes from there" in msg
    # Once there is room, the run resumes where it stopped.
    out = []
    run_main(_sum_flow(out), recovery_config=RecoveryConfig(redis_server.url))
    assert out == [("a", 6)]


@pytest.mark.slow
def test_a_full_redis_ends_the_cli_with_the_reason(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.config_set("maxmemory", 1)
    res = _cli("headrace.run", "-r", redis_server.url, "--metrics-port", "0")
    assert res.returncode == 1
    summary = res.stderr.rpartition("\nerror: ")[2].splitlines()
    assert summary[0].startswith(f"Redis at {redis_server.url} (prefix "), res.stderr[-3000:]
    assert "maxmemory" in summary[0] and "noeviction" in summary[0]
    assert len(summary) == 1, summary  # no "caused by" line of redis-py's internals


# ------------------------------------------------------------ secrets off command lines


def test_the_recovery_option_is_stripped_in_every_spelling() -> None:
    url = "redis://:pw@h:6379/0"
    for spelled in (
        ["-r", url],
        [f"-r{url}"],
        ["--recovery", url],
        [f"--recovery={url}"],
        ["--recovery-directory", url],
        ["--recovery-d", url],
        [f"--recovery-dir={url}"],
    ):
        argv = ["m:f", "-w", "2", *spelled, "--recovery-prefix", "x", "-p", "3"]
        assert _strip_options(argv, {"recovery", "processes"}) == [
            "m:f",
            "-w",
            "2",
            "--recovery-prefix",
            "x",
        ], spelled


def _write_input(d: Path) -> dict[str, int]:
    d.mkdir(parents=True)
    counts: collections.Counter[str] = collections.Counter()
    for f in range(3):
        rows = [" ".join(f"w{(f * 7 + i * j) % 40}" for j in range(1, 4)) for i in range(300)]
        for row in rows:
            counts.update(row.split())
        (d / f"in-{f}.txt").write_text("\n".join(rows) + "\n")
    return dict(counts)


def _proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(300)
def test_workers_of_a_local_cluster_get_secrets_through_the_environment(
    tmp_path: Path, redis_with_password: RedisServer
) -> None:
    counts = _write_input(tmp_path / "in")
    password = redis_with_password.password
    assert password is not None and password in redis_with_password.url
    mesh_secret = "mesh-secret-7Hq2"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HR_IN": str(tmp_path / "in"),
        "HR_OUT": str(tmp_path / "out"),
        "HR_SLOW": "0.05",
        "HEADRACE_CLUSTER_SECRET": mesh_secret,
    }
    env.pop("HEADRACE_RECOVERY", None)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace.run",
            "tests.support.flows.recovery_flows:running_counts()",
            "-p",
            "2",
            "-r",
            redis_with_password.url,
            "--epoch-interval",
            "0.1",
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Both workers are running the dataflow once output appears.
        wait_for_output(p, tmp_path / "out", 50)
        kids = children(p)
        assert p.poll() is None and len(kids) == 2, "the run ended before it could be inspected"
        for pid in kids:
            argv = _proc_file(pid, "cmdline").split(b"\0")
            assert b"headrace.run" in argv and b"-a" in argv  # a worker of this cluster
            joined = b" ".join(argv)
            assert password.encode() not in joined, joined
            assert mesh_secret.encode() not in joined, joined
            assert b"-r" not in argv and b"redis://" not in joined, joined
            environ = _proc_file(pid, "environ").split(b"\0")
            assert f"HEADRACE_RECOVERY={redis_with_password.url}".encode() in environ
            assert f"HEADRACE_CLUSTER_SECRET={mesh_secret}".encode() in environ
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err[-3000:]
    assert password not in err
    check_output(tmp_path / "out", counts)
    # ... and the state went to the password-protected Redis.
    meta = open_store(redis_with_password.url, "recovery_wc").load_meta()
    assert meta is not None and meta.committed_epoch > 0 and meta.worker_count == 2


def test_the_operator_puts_no_secret_on_the_command_line() -> None:
    from headrace_operator import manifests as mf
    from headrace_operator.spec import parse_spec

    owner = mf.Owner(name="wc", namespace="prod", uid="u", generation=1)
    url = "redis://:op-pw-91@redis:6379/0"
    for recovery in ({"url": url}, {"secretRef": {"name": "creds", "key": "url"}}):
        spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "recovery": recovery})
        c = mf.build_statefulset(spec, owner)["spec"]["template"]["spec"]["containers"][0]
        line = " ".join([*c["command"], *c["args"]])
        assert "op-pw-91" not in line and "redis://" not in line and " -r" not in line
        env = {e["name"]: e for e in c["env"]}
        assert env["HEADRACE_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == mf.mesh_secret_name(
            "wc"
        )
        if "secretRef" in recovery:
            assert env["HEADRACE_RECOVERY"]["valueFrom"] == {"secretKeyRef": {"name": "creds", "key": "url"}}
        else:
            assert env["HEADRACE_RECOVERY"]["value"] == url
