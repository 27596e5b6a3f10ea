"""Run a dataflow: ``python -m headrace.run mod:flow [options]``.

Local: ``-w W`` worker threads, ``-p P`` local processes (real parallelism).
Manual cluster: every process gets the same ``-a "h:p;h:p"`` and its own
``-i``. Kubernetes: the process id comes from the pod name's ordinal
(``--process-id-from-hostname``) and the peers from a pattern
(``--peer-pattern 'df-{i}.df.ns.svc:2101' --replicas 3``), all also settable
through ``HEADRACE_*`` environment variables (``BYTEWAX_*`` work too).

SIGTERM or SIGINT stops the whole cluster cleanly at the next epoch
boundary; a second SIGINT aborts at once. A run stopped by SIGINT (Ctrl-C)
exits with status 130, as shells expect of an interrupted program; one
stopped by SIGTERM exits 0 (a Kubernetes pod asked to stop has done its job).

Size: ~950 lines, over the ~800 of the house rule: the option parser alone
is ~190 (every option with its help and its ``HEADRACE_*`` variable), and
the supervisor of ``-p`` local processes (`_spawn_local` and its helpers,
~140 lines) lives here too, as does the standby wait of a next
generation's process 0 (`_standby`); the supervisor is the part to move
into a module of its own.

>>> args = _parser().parse_args(["examples.wordcount:flow", "-w", "2"])
>>> args.workers_per_process, args.import_str
(2, 'examples.wordcount:flow')
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from headrace._stop_signals import guard_exit, guard_startup, install_stop_handlers, restore
from headrace.dataflow import Dataflow

__all__ = ["cli_main", "main"]

log = logging.getLogger("headrace.run")

DEFAULT_METRICS_PORT = 3030


def _env(name: str, default: Any = None) -> Any:
    for prefix in ("HEADRACE_", "BYTEWAX_"):
        val = os.environ.get(prefix + name)
        if val is not None and val != "":
            return val
    return default


def _flag(value: str | None) -> bool:
    """An on/off option from the environment: ``1``, ``true``, ``yes``, ``on`` are on.

    >>> _flag("1"), _flag("True"), _flag("0"), _flag(None)
    (True, True, False, False)
    """
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _seconds(text: str) -> timedelta:
    """A duration option: a number of seconds, 0 or more.

    >>> _seconds("1.5")
    datetime.timedelta(seconds=1, microseconds=500000)
    >>> _seconds("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a number of seconds >= 0; got '-1'
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        msg = f"expected a number of seconds >= 0; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return timedelta(seconds=seconds)


def _count(text: str) -> int:
    """A count option (processes, workers, key groups): a whole number, 1 or more.

    >>> _count("2")
    2
    >>> _count("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a whole number >= 1; got '0'
    """
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        msg = f"expected a whole number >= 1; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return n


def _nonneg_int(text: str) -> int:
    """A whole-number option that may be 0 (``--expect-epoch``).

    >>> _nonneg_int("0"), _nonneg_int("12")
    (0, 12)
    >>> _nonneg_int("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a whole number >= 0; got '-1'
    """
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        msg = f"expected a whole number >= 0; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return n


def _location(text: str) -> str:
    """The ``-r`` option: a Redis URL or a local path (see `headrace.recovery.RecoveryConfig`).

    >>> _location("redis://localhost:6379/0")
    'redis://localhost:6379/0'
    >>> _location("localhost:6379")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: recovery location 'localhost:6379' looks like HOST:PORT, ...
    """
    from headrace._engine import check_location

    try:
        return check_location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _millis(text: str) -> timedelta:
    try:
        ms = float(text)
    except ValueError:
        ms = -1.0
    if not ms >= 0:
        msg = f"expected a number of milliseconds >= 0; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return timedelta(milliseconds=ms)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m headrace.run",
        description="Run a Headrace dataflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "import_str", help="dataflow to run: 'mod', 'mod:attr', 'mod:factory(1)', or 'path/to/file.py:attr'"
    )
    p.add_argument(
        "--bytewax",
        action="store_true",
        default=_env("BYTEWAX_COMPAT", "").lower() in ("1", "true", "yes", "on"),
        help="run a Bytewax program unchanged: its `bytewax.*` imports are "
        "Headrace's modules (HEADRACE_BYTEWAX_COMPAT=1 does the same)",
    )
    g = p.add_argument_group("scaling")
    g.add_argument(
        "-w",
        "--workers-per-process",
        type=_count,
        default=_env("WORKERS_PER_PROCESS", "1"),
        help="worker threads per process",
    )
    g.add_argument(
        "-p",
        "--processes",
        type=_count,
        default=_env("PROCESSES", "1"),
        help="start this many local processes on 127.0.0.1",
    )
    g.add_argument(
        "-i",
        "--process-id",
        type=int,
        default=None if _env("PROCESS_ID") is None else int(_env("PROCESS_ID")),
        help="this process's index in the address list",
    )
    g.add_argument(
        "-a", "--addresses", default=_env("ADDRESSES"), help="every process's host:port, separated by ';'"
    )
    g.add_argument(
        "--addresses-file", default=_env("ADDRESSES_FILE"), help="file with one host:port per line"
    )
    g.add_argument(
        "--process-id-from-hostname",
        action="store_true",
        default=_env("PROCESS_ID_FROM_HOSTNAME", "") in ("1", "true", "yes"),
        help="take the process id from the hostname's trailing '-N' (pod ordinal)",
    )
    g.add_argument(
        "--peer-pattern",
        default=_env("PEER_PATTERN"),
        help="address pattern with '{i}' for the process index, e.g. 'df-{i}.df.ns.svc.cluster.local:2101'",
    )
    g.add_argument(
        "--replicas",
        type=int,
        default=None if _env("REPLICAS") is None else int(_env("REPLICAS")),
        help="number of processes, with --peer-pattern",
    )
    g.add_argument(
        "--bind-host",
        default=_env("BIND_HOST"),
        help="host to listen on (default: this process's address host)",
    )
    g.add_argument(
        "--startup-timeout",
        type=float,
        default=float(_env("STARTUP_TIMEOUT", 60)),
        help="seconds to wait for all peers at startup",
    )
    g.add_argument(
        "--key-groups",
        "--partitions",
        dest="key_groups",
        type=_count,
        default=_env("KEY_GROUPS", "256"),
        help="number of key groups (state placement unit; fixed per dataflow)",
    )
    g.add_argument(
        "--exchange-flush-ms",
        type=_millis,
        default=_env("EXCHANGE_FLUSH_MS", "20"),
        help="longest a busy worker holds items bound for another worker before "
        "sending them, in ms (0 sends after every batch)",
    )
    r = p.add_argument_group("epochs and recovery")
    r.add_argument(
        "-r",
        "--recovery",
        "--recovery-directory",
        dest="recovery",
        type=_location,
        default=_env("RECOVERY") or _env("RECOVERY_DIRECTORY"),
        help="recovery store: redis://[[user]:password@]host:port/db, rediss://..., "
        "unix://..., redis+cluster://host:port[,host:port...]/0 (a Redis Cluster), or a "
        "local directory (./name if its first name has a ':'). A "
        "URL with a password is better set as HEADRACE_RECOVERY than on the "
        "command line, where `ps` shows it",
    )
    r.add_argument(
        "--recovery-prefix",
        default=_env("RECOVERY_PREFIX"),
        help="key prefix in the store (default: the dataflow id)",
    )
    r.add_argument(
        "--recovery-retry",
        type=float,
        default=float(_env("RECOVERY_RETRY", 30)),
        help="seconds to keep retrying an unreachable store before stopping",
    )
    r.add_argument(
        "--allow-dropped-state",
        action="store_true",
        default=_flag(_env("ALLOW_DROPPED_STATE")),
        help="resume even if the store holds state of steps the dataflow no longer "
        "has (a renamed stateful step), or of another dataflow: that state is "
        "dropped (as Flink's allowNonRestoredState)",
    )
    r.add_argument(
        "--allow-evicting-redis",
        action="store_true",
        default=_flag(_env("ALLOW_EVICTING_REDIS")),
        help="accept a Redis whose maxmemory-policy may evict recovery state (evicted "
        "state then stops the run with an error)",
    )
    r.add_argument(
        "--expect-epoch",
        type=_nonneg_int,
        default=_env("EXPECT_EPOCH", "0"),
        metavar="N",
        help="the store must hold committed epoch N or a later one (a supervisor passes "
        "the last epoch it saw committed): a store that lost its data, or went back to "
        "an older copy, then stops the run instead of starting over (default 0: any)",
    )
    r.add_argument(
        "--standby-timeout",
        type=float,
        default=float(_env("STANDBY_TIMEOUT", 0)),
        metavar="SECONDS",
        help="standby: before taking the store over, wait until no other execution holds "
        "its lease (the previous pods stopped at their barrier), up to SECONDS, then fail "
        "(default 0: take over at once, fencing a running execution)",
    )
    r.add_argument(
        "-s",
        "--snapshot-interval",
        type=_seconds,
        default=_env("SNAPSHOT_INTERVAL"),
        help="seconds between snapshots (the epoch length with recovery)",
    )
    r.add_argument(
        "-b",
        "--backup-interval",
        type=_seconds,
        default=_env("BACKUP_INTERVAL"),
        help="seconds of snapshot history kept before compaction",
    )
    r.add_argument(
        "--epoch-interval",
        type=_seconds,
        default=_env("EPOCH_INTERVAL"),
        help="seconds per epoch (default 10, or the snapshot interval)",
    )
    o = p.add_argument_group("observability")
    o.add_argument(
        "--metrics-port",
        type=int,
        default=None if _env("METRICS_PORT") is None else int(_env("METRICS_PORT")),
        help="port for /metrics, /dataflow, /healthz, /readyz (0 disables). Not "
        f"given: {DEFAULT_METRICS_PORT} on 127.0.0.1, or a free port if that one is "
        "taken (said on stderr). Given (or HEADRACE_METRICS_PORT): on 0.0.0.0, and "
        "a port in use is an error",
    )
    o.add_argument(
        "--metrics-host",
        default=_env("METRICS_HOST"),
        help="host the metrics server binds (default: 127.0.0.1 without --metrics-port, 0.0.0.0 with it)",
    )
    # Set by a `-p` parent for its children when the user chose no port.
    o.add_argument("--metrics-port-fallback", action="store_true", help=argparse.SUPPRESS)
    o.add_argument("--log-level", default=_env("LOG_LEVEL", "WARNING"))
    o.add_argument("--log-format", choices=["text", "json"], default=_env("LOG_FORMAT", "text"))
    return p


def _is_loopback(address: str) -> bool:
    """Whether ``host:port`` names this machine's loopback interface.

    >>> _is_loopback("127.0.0.1:2101"), _is_loopback("localhost:1"), _is_loopback("[::1]:1")
    (True, True, True)
    >>> _is_loopback("df-0.df.ns.svc:2101")
    False
    """
    host = address.rpartition(":")[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _metrics_endpoint(
    port: int | None, host: str | None, fallback: bool, addresses: list[str] | None
) -> tuple[int, str, bool]:
    """Where to serve the endpoint: ``(port, host, fall back to a free port if taken)``.

    A run whose port nobody chose and whose processes are all on this machine
    serves on 127.0.0.1 and moves out of the way of another run; a chosen
    port (the flag, or HEADRACE_METRICS_PORT as the operator's pods set it)
    or a cluster spanning machines binds 0.0.0.0 and fails loudly if taken.

    >>> _metrics_endpoint(None, None, False, None)
    (3030, '127.0.0.1', True)
    >>> _metrics_endpoint(3030, None, False, None)
    (3030, '0.0.0.0', False)
    >>> _metrics_endpoint(None, None, False, ["a:1", "b:1"])
    (3030, '0.0.0.0', False)
    >>> _metrics_endpoint(3031, None, True, ["127.0.0.1:1", "127.0.0.1:2"])
    (3031, '127.0.0.1', True)
    """
    if port is None:
        if addresses is None or all(_is_loopback(a) for a in addresses):
            return DEFAULT_METRICS_PORT, host or "127.0.0.1", True
        return DEFAULT_METRICS_PORT, host or "0.0.0.0", False
    if fallback:
        return port, host or "127.0.0.1", True
    return port, host or "0.0.0.0", False


def _resolve_addresses(args: argparse.Namespace) -> list[str] | None:
    if args.addresses_file:
        lines = Path(args.addresses_file).read_text().split()
        return [ln.strip() for ln in lines if ln.strip()]
    if args.addresses:
        return [a.strip() for a in args.addresses.split(";") if a.strip()]
    if args.peer_pattern:
        if args.replicas is None or args.replicas < 1:
            msg = "--peer-pattern needs --replicas N (or HEADRACE_REPLICAS)"
            raise SystemExit(msg)
        if "{i}" not in args.peer_pattern:
            msg = f"--peer-pattern {args.peer_pattern!r} must contain '{{i}}'"
            raise SystemExit(msg)
        return [args.peer_pattern.replace("{i}", str(i)) for i in range(args.replicas)]
    return None


def _ordinal_from_hostname(hostname: str) -> int:
    """The trailing ``-N`` of a StatefulSet pod name.

    >>> _ordinal_from_hostname("wordcount-3")
    3
    """
    m = re.search(r"-(\d+)$", hostname.split(".")[0])
    if m is None:
        msg = (
            f"can't take a process id from hostname {hostname!r}: it has no trailing '-N'; "
            "pass -i/--process-id instead"
        )
        raise SystemExit(msg)
    return int(m.group(1))


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _local_cluster_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a ``-p`` cluster's processes: a fresh cluster secret unless one is set.

    No other program on the machine can then join the cluster's ports.

    >>> len(_local_cluster_env({})["HEADRACE_CLUSTER_SECRET"])
    64
    >>> _local_cluster_env({"HEADRACE_CLUSTER_SECRET": "s"})["HEADRACE_CLUSTER_SECRET"]
    's'
    """
    from headrace._engine import SECRET_ENV

    env = dict(environ)
    if not env.get(SECRET_ENV):
        env[SECRET_ENV] = secrets.token_hex(32)
    return env


def _spawn_local(argv: list[str], processes: int) -> int:
    """Start ``processes`` copies of this command as a local cluster; wait."""
    addrs = ";".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    parsed = _parser().parse_args(argv)
    # The recovery location (a Redis URL may hold a password) goes through the
    # environment, like the cluster secret: a command line is visible in `ps`.
    base = _strip_options(argv, {"processes", "metrics_port", "recovery"})
    chosen = parsed.metrics_port
    metrics_base = DEFAULT_METRICS_PORT if chosen is None else chosen
    # Nobody chose the port: each child moves to a free one if its own is taken.
    fallback = ["--metrics-port-fallback"] if chosen is None and metrics_base else []
    env = _local_cluster_env(os.environ)
    if parsed.recovery:
        env["HEADRACE_RECOVERY"] = parsed.recovery
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headrace.run",
                *base,
                "-i",
                str(i),
                "-a",
                addrs,
                # Each local process serves on its own port: base, base + 1, ...
                "--metrics-port",
                str(metrics_base + i if metrics_base else 0),
                *fallback,
            ],
            env=env,
            preexec_fn=functools.partial(_detach_child, os.getpid()),
        )
        for i in range(processes)
    ]
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        for pr in procs:
            if pr.poll() is None:
                pr.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    remaining = set(range(processes))
    while remaining:
        for i in list(remaining):
            rc = procs[i].poll()
            if rc is None:
                continue
            remaining.discard(i)
            if rc == INTERRUPTED and signal.SIGINT in received:
                continue  # stopped by the Ctrl-C we forwarded: not a failure
            if rc != 0 and code == 0:
                code = rc if rc > 0 else 128 - rc
                how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
                if rc != STDOUT_CLOSED:  # that process said why in one line
                    print(
                        f"headrace: process {i} (pid {procs[i].pid}) failed ({how}); stopping the others",
                        file=sys.stderr,
                        flush=True,
                    )
                # Peers notice the loss within seconds; ask, then make sure none lingers.
                for pr in procs:
                    if pr.poll() is None:
                        pr.terminate()
                deadline = time.monotonic() + 15
                for pr in procs:
                    while pr.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if pr.poll() is None:
                        pr.kill()
        time.sleep(0.05)
    if code == 0 and signal.SIGINT in received:
        return INTERRUPTED
    return code


def _detach_child(parent: int) -> None:
    """Run in a ``-p`` child before exec: its own process group, and SIGTERM if we die.

    A terminal's Ctrl-C signals the whole foreground process group; the
    children would get it twice (once from the terminal, once forwarded), and
    a second SIGINT aborts a run instead of stopping it at an epoch boundary.
    In their own group they get it once, from the parent. A parent that died
    between the fork and the ``prctl`` sends no signal: the child then sees
    another parent (``parent`` is the pid before the fork) and exits at once.
    """
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _strip_options(argv: list[str], dests: set[str]) -> list[str]:
    """``argv`` without the options stored in ``dests``, in any spelling argparse accepts.

    ``-r X``, ``-rX``, ``--recovery X``, ``--recovery=X`` and abbreviations
    such as ``--recovery-d X`` all go, with their values.

    >>> _strip_options(["m:f", "-rredis://:pw@h/0", "--recovery-d=x", "-w", "2", "-p", "3"],
    ...                {"recovery", "processes"})
    ['m:f', '-w', '2']
    """
    by_string = {s: a for a in _parser()._actions for s in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        action, attached = None, False
        if token.startswith("--"):
            name, eq, _ = token.partition("=")
            found = {id(a): a for s, a in by_string.items() if s.startswith(name)}
            if name in by_string:
                action, attached = by_string[name], bool(eq)
            elif len(found) == 1:
                action, attached = next(iter(found.values())), bool(eq)
        elif token.startswith("-") and token[:2] in by_string:
            action, attached = by_string[token[:2]], len(token) > 2
        if action is not None and action.dest in dests:
            i += 1 if attached or action.nargs == 0 else 2
            continue
        out.append(token)
        i += 1
    return out


def cli_main(
    flow: Dataflow,
    *,
    workers_per_process: int = 1,
    process_id: int | None = None,
    addresses: list[str] | None = None,
    epoch_interval: timedelta | None = None,
    recovery_config: Any = None,
) -> None:
    """Run ``flow`` as the CLI would, from Python (Bytewax-compatible signature).

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink
    >>> flow = Dataflow("cli"); out = []
    >>> op.output("o", op.input("i", flow, TestingSource([1])), TestingSink(out))
    >>> cli_main(flow); out
    [1]
    """
    from headrace._engine import execute, execute_cluster

    if addresses and len(addresses) > 1:
        if process_id is None:
            msg = "a multi-process run needs process_id (this process's index in addresses)"
            raise ValueError(msg)
        execute_cluster(
            flow,
            addresses=addresses,
            proc_id=process_id,
            workers_per_process=workers_per_process,
            epoch_interval=epoch_interval,
            recovery=recovery_config,
        )
    else:
        execute(
            flow,
            workers_per_process=workers_per_process,
            epoch_interval=epoch_interval,
            recovery=recovery_config,
        )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run; return the process exit code.

    >>> main(["headrace.no_such_module:flow"])
    1
    """
    startup = guard_startup()  # first: SIGTERM while the flow imports must end us, even as PID 1
    from headrace._engine import mark

    mark("process")  # the start of a run's output gap's phases (`_engine._marks`)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        restore(startup)


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from headrace.tracing import setup_logging

    setup_logging(args.log_level, json=args.log_format == "json")
    from headrace._imports import locate_dataflow
    from headrace.errors import ImportStringError

    if args.bytewax:
        from headrace._bytewax_alias import install

        try:
            install(quiet=args.processes > 1)  # a -p parent's children say it
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.processes > 1:
        if args.addresses or args.process_id is not None:
            print(
                "error: -p/--processes starts its own local cluster; don't combine it with -a/-i",
                file=sys.stderr,
            )
            return 2
        return _spawn_local(argv, args.processes)
    try:
        flow = locate_dataflow(args.import_str)
    except ImportStringError as exc:
        # Bytewax's exception type and words (its CLI exits 1 with a traceback
        # ending in them), on one line.
        print(f"{exc.kind}: {exc}", file=sys.stderr)
        return 1
    from headrace._engine import execute, mark  # noqa: F401 - the engine's imports count as imports

    mark("imported")
    recovery = None
    if args.recovery:
        from headrace.recovery import RecoveryConfig

        recovery = RecoveryConfig(
            args.recovery,
            args.backup_interval,
            prefix=args.recovery_prefix,
            retry_for=args.recovery_retry,
            allow_dropped_state=args.allow_dropped_state,
            allow_evicting_redis=args.allow_evicting_redis,
            expect_epoch=args.expect_epoch,
        )
    addresses = _resolve_addresses(args)
    proc_id = args.process_id
    if proc_id is None and args.process_id_from_hostname:
        proc_id = _ordinal_from_hostname(socket.gethostname())
    if recovery is not None and args.standby_timeout > 0 and not proc_id:
        try:
            _standby(recovery, flow.flow_id, args.standby_timeout)
        except TimeoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    epoch = args.epoch_interval or args.snapshot_interval
    received: list[int] = []
    previous = install_stop_handlers(received)
    try:
        code = _run(args, flow, addresses, proc_id, epoch, recovery)
        if code == 0 and not received:
            _report_finished(_env("TERMINATION_LOG"))
        if code == 0 and signal.SIGINT in received:
            # Stopped cleanly, but because of Ctrl-C: say so, as shells expect.
            return INTERRUPTED
        return code
    finally:
        restore(previous)


def _standby(recovery: Any, flow_id: str, timeout: float, poll: float = 0.05) -> None:
    """Wait until no execution holds the store's lease, up to ``timeout`` seconds.

    A pod started while the previous generation's pods still run (the
    operator starts the next ones early, so that Python and the flow's
    imports are done when the old ones stop) waits here, in process 0,
    before it takes the store over. It says so in the store
    (``Store.note_standby``: the operator stops the old pods then), and the
    old execution releases the lease once its workers stopped at their
    barrier and committed. Only then does this one fence it and resume
    from that commit, so the old one's last epoch is never cut off. Still
    held after ``timeout``: `TimeoutError` (the old pods did not stop). A
    store that can't be read is left to the start itself, which reports it.

    >>> import tempfile
    >>> from headrace.recovery import RecoveryConfig, init_db_dir
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> old = RecoveryConfig(d).open("f"); _ = old.start_execution(1, 8)
    >>> _standby(RecoveryConfig(d), "f", 0.2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TimeoutError: standby: execution ... still holds the lease of SQLite store ... after 0.2s: ...
    >>> old.release(); _standby(RecoveryConfig(d), "f", 0.2)
    """
    from headrace.recovery import RecoveryStoreError

    try:
        store = recovery.open(flow_id)
    except (RecoveryStoreError, OSError) as exc:
        log.warning("standby: can't read the recovery store (%s); starting", exc)
        return
    try:
        deadline = time.monotonic() + timeout
        holder = store.lease_holder()
        if holder:
            store.note_standby(os.environ.get("HEADRACE_POD_NAME") or socket.gethostname())
            log.info(
                "standby: execution %s holds %s; waiting up to %.0fs for it to stop",
                holder,
                store.description,
                timeout,
            )
        while holder:
            if time.monotonic() >= deadline:
                msg = (
                    f"standby: execution {holder} still holds the lease of {store.description} "
                    f"after {timeout:g}s: the previous pods did not stop. This process starts "
                    "only once they stopped (or their lease ran out); it will be restarted"
                )
                raise TimeoutError(msg)
            time.sleep(poll)
            holder = store.lease_holder()
    except RecoveryStoreError as exc:
        log.warning("standby: can't read the recovery store's lease (%s); starting", exc)
    finally:
        store.close()


def _report_finished(path: str | None) -> None:
    """Every input ended: say so in ``path`` (a pod's termination message).

    Written when the run ended with exit 0 and no signal reached this
    process. The Kubernetes operator sets ``HEADRACE_TERMINATION_LOG`` to the
    container's termination message file, and calls a dataflow finished
    when every pod says so (a pod asked to stop, by SIGTERM, never does).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("r") as f:
    ...     _report_finished(f.name)
    ...     f.read().strip()
    'finished: every input ended'
    """
    if not path:
        return
    try:
        Path(path).write_text("finished: every input ended\n")
    except OSError as exc:
        log.warning("can't write the termination message to %s: %s", path, exc)


def _run(
    args: argparse.Namespace,
    flow: Dataflow,
    addresses: list[str] | None,
    proc_id: int | None,
    epoch: timedelta | None,
    recovery: Any,
) -> int:
    from headrace._engine import execute, execute_cluster

    metrics_port, metrics_host, fallback = _metrics_endpoint(
        args.metrics_port, args.metrics_host, args.metrics_port_fallback, addresses
    )
    try:
        if addresses and len(addresses) > 1:
            if proc_id is None:
                print(
                    "error: a cluster run needs -i/--process-id (or --process-id-from-hostname)",
                    file=sys.stderr,
                )
                return 2
            execute_cluster(
                flow,
                addresses=addresses,
                proc_id=proc_id,
                workers_per_process=args.workers_per_process,
                epoch_interval=epoch,
                bind_host=args.bind_host,
                startup_timeout=args.startup_timeout,
                recovery=recovery,
                key_groups=args.key_groups,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                metrics_port_fallback=fallback,
                exchange_flush=args.exchange_flush_ms,
            )
        else:
            execute(
                flow,
                workers_per_process=args.workers_per_process,
                epoch_interval=epoch,
                recovery=recovery,
                key_groups=args.key_groups,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                metrics_port_fallback=fallback,
                exchange_flush=args.exchange_flush_ms,
            )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        if _stdout_broken():
            # `... | head`: whoever read the output has gone, as for any Unix
            # tool. One line instead of a traceback per process.
            _silence_stdout()
            print(
                "headrace: standard output was closed (broken pipe); stopped "
                f"({str(exc) or type(exc).__name__})",
                file=sys.stderr,
            )
            return STDOUT_CLOSED
        traceback.print_exc()
        print("\n" + _error_summary(exc), file=sys.stderr)
        return 1
    return 0


# What a shell reports for a program killed by SIGPIPE (128 + 13).
STDOUT_CLOSED = 141
# ... and for one interrupted by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


def _stdout_broken() -> bool:
    """Whether standard output is a pipe or socket that no one reads any more.

    >>> _stdout_broken()
    False
    """
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _fd, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor
        return False


def _silence_stdout() -> None:
    # Whatever is still buffered would fail again at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _error_summary(exc: BaseException) -> str:
    """The last lines the CLI prints for a failed run: the error, then its causes.

    A cause is shown when its message is not already part of the lines
    above it (an engine error that wraps a user error usually quotes it),
    so the reason and what to do are on screen without reading the
    traceback. Kubernetes keeps these lines as the pod's termination
    message, and the operator reports them in ``status.lastError``.

    >>> try:
    ...     try:
    ...         raise ConnectionError("Redis at redis:6379 refused the connection")
    ...     except ConnectionError as inner:
    ...         raise RuntimeError("error building sink in step 'f.out'") from inner
    ... except RuntimeError as exc:
    ...     print(_error_summary(exc))
    error: error building sink in step 'f.out'
    caused by: ConnectionError: Redis at redis:6379 refused the connection
    >>> print(_error_summary(RuntimeError("x: ValueError: bad")))
    error: x: ValueError: bad
    >>> print(_error_summary(KeyError()))
    error: KeyError
    """

    def cause_of(e: BaseException) -> BaseException | None:
        return e.__cause__ or (None if e.__suppress_context__ else e.__context__)

    lines = [f"error: {str(exc) or type(exc).__name__}"]
    seen = {id(exc)}
    cause = cause_of(exc)
    while cause is not None and id(cause) not in seen and len(lines) < 6:
        seen.add(id(cause))
        text = str(cause)
        if text and not any(text in line for line in lines):
            lines.append(f"caused by: {type(cause).__name__}: {text}")
        cause = cause_of(cause)
    return "\n".join(lines)


def _console_main() -> None:
    """Entry point of the ``headrace`` console script (``headrace run ...``)."""
    argv = sys.argv[1:]
    if argv and argv[0] == "run":
        argv = argv[1:]
    elif argv and argv[0] == "visualize":
        from headrace.visualize import main as viz_main

        sys.argv = ["headrace visualize", *argv[1:]]
        viz_main()
        return
    code = main(argv)
    guard_exit()
    sys.exit(code)


if __name__ == "__main__":
    _code = main()
    guard_exit()
    sys.exit(_code)
