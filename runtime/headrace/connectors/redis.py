"""Read from and write to Redis Streams.

`RedisStreamSource` reads a list of stream keys; each stream is a source
partition (assigned to a worker by index, like every partitioned source).
A partition's snapshot is the id of the last entry it emitted (and a count
used for lag), so a resumed or rescaled dataflow continues right after the
committed epoch's entries. Reads never block the worker: a partition with
nothing new asks again after a short, growing pause (at most 10 ms).

`RedisStreamSink` appends with ``XADD`` (optionally trimming with an
approximate ``MAXLEN``), one pipelined round trip per batch. It is
at-least-once across crashes: a resumed dataflow appends again what it
wrote after the last committed epoch.

Both take a Redis URL like the recovery store (``redis://host:port/db``,
``rediss://...``, ``unix://...``).

>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> flow = Dataflow("copy")
>>> entries = op.input("in", flow, RedisStreamSource("redis://localhost:6379/0", ["clicks"]))
>>> upper = op.map("upper", entries, lambda e: {"page": e.fields[b"page"].upper()})
>>> op.output("out", upper, RedisStreamSink("redis://localhost:6379/0", "pages"))
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.outputs import DynamicSink, StatelessSinkPartition

__all__ = ["RedisStreamEntry", "RedisStreamSink", "RedisStreamSource"]

_MIN_IDLE = 0.001
_MAX_IDLE = 0.010
_LAG_EVERY = 1.0
_CONNECT_TIMEOUT = 5.0
_UTC = UTC
_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def _safe_url(url: str) -> str:
    """The URL with any password hidden, for error messages.

    >>> _safe_url("redis://:secret@host:6379/0")
    'redis://:***@host:6379/0'
    """
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _client(url: str) -> Any:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=_CONNECT_TIMEOUT,
        socket_timeout=10,
        health_check_interval=10,
    )


def _unreachable(what: str, url: str, exc: BaseException) -> ConnectionError:
    return ConnectionError(
        f"{what}: Redis at {_safe_url(url)} is unreachable ({exc}); check the URL and that "
        "the server is running and reachable from here"
    )


def _parse_id(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``.

    >>> _parse_id("5-1"), _parse_id("7")
    ((5, 1), (7, 0))
    """
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass(frozen=True)
class RedisStreamEntry:
    """One stream entry: the stream's key, the entry id and its fields.

    Fields are ``bytes`` to ``bytes`` unless the source was made with
    ``decode=True`` (then ``str`` to ``str``).

    >>> e = RedisStreamEntry("clicks", "1700000000000-0", {b"page": b"/home"})
    >>> e.fields[b"page"]
    b'/home'
    """

    stream: str
    id: str
    fields: dict[Any, Any]


class _StreamPartition(StatefulSourcePartition[RedisStreamEntry, tuple[str, int]]):
    """Reads one stream after an entry id; snapshots ``(last id, entries counted)``."""

    def __init__(
        self,
        step_id: str,
        url: str,
        key: str,
        start_id: str,
        resume_state: tuple[str, int] | None,
        tail: bool,
        batch_size: int,
        decode: bool,
    ) -> None:
        self._what = f"step {step_id!r}: RedisStreamSource (stream {key!r})"
        self._key = key
        self._batch_size = batch_size
        self._decode = decode
        self._r = _client(url)
        self._url = url
        self._idle = 0.0
        self._awake: datetime | None = None
        self._lag_at = 0.0
        self._lag: int | None = None
        info = self._info()
        added = info.get("entries-added")
        last = _s(info.get("last-generated-id", "0-0"))
        if resume_state is not None:
            self._pos, self._count = str(resume_state[0]), int(resume_state[1])
        elif start_id == "$":
            # Absolute from the start: a snapshot before the first entry
            # still names the exact place to resume.
            self._pos, self._count = last, int(added or 0)
        elif start_id in ("0", "0-0"):
            self._pos = "0-0"
            self._count = int(added or 0) - int(info.get("length", 0))
        else:
            self._pos = start_id
            self._count = int(added or 0) - self._count_after(start_id)
        self._end: tuple[int, int] | None = None
        if not tail:
            # The last entry still there (not the last id ever generated:
            # trimmed or deleted entries will never be read).
            last_entry = info.get("last-entry")
            self._end = (0, 0) if not last_entry else _parse_id(_s(last_entry[0]))
        self._done = self._end is not None and _parse_id(self._pos) >= self._end

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _ERRORS as exc:
            raise _unreachable(self._what, self._url, exc) from exc

    def _info(self) -> dict[str, Any]:
        try:
            raw = self._call(self._r.xinfo_stream, self._key)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                raise _missing(self._key, self._url) from exc
            raise
        return {_s(k): v for k, v in raw.items()}

    def _count_after(self, entry_id: str) -> int:
        n = 0
        start = f"({entry_id}"
        while True:
            chunk = self._call(self._r.xrange, self._key, start, "+", count=10_000)
            n += len(chunk)
            if len(chunk) < 10_000:
                return n
            start = f"({_s(chunk[-1][0])}"

    def next_batch(self) -> list[RedisStreamEntry]:
        if self._done:
            raise StopIteration()
        resp = self._call(self._r.xread, {self._key: self._pos}, count=self._batch_size)
        if not resp and self._end is not None:
            # Nothing after the position at all: the entries up to the end
            # were deleted since the start.
            self._done = True
            return []
        if not resp:
            # Nothing new: ask again after a short pause that grows while idle.
            self._idle = min(_MAX_IDLE, max(_MIN_IDLE, self._idle * 2))
            self._awake = datetime.now(_UTC) + timedelta(seconds=self._idle)
            return []
        self._idle = 0.0
        self._awake = None
        entries = resp[0][1]
        out: list[RedisStreamEntry] = []
        key = self._key
        end = self._end
        decode = self._decode
        for raw_id, fields in entries:
            entry_id = _s(raw_id)
            if end is not None and _parse_id(entry_id) > end:
                self._done = True
                break
            if decode:
                fields = {_s(k): _s(v) for k, v in fields.items()}
            out.append(RedisStreamEntry(key, entry_id, fields))
            self._pos = entry_id
        self._count += len(out)
        if end is not None and _parse_id(self._pos) >= end:
            self._done = True
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[str, int]:
        return (self._pos, self._count)

    def lag(self) -> int | None:
        """Entries added to the stream after the position (from XINFO STREAM; cached 1 s)."""
        now = time.monotonic()
        if now - self._lag_at >= _LAG_EVERY:
            self._lag_at = now
            try:
                info = {_s(k): v for k, v in self._r.xinfo_stream(self._key).items()}
            except (redis.RedisError, OSError):
                return self._lag
            added = info.get("entries-added")
            if added is None:  # Redis < 7 does not count entries
                self._lag = 0 if _s(info.get("last-generated-id")) == self._pos else None
            else:
                self._lag = max(0, int(added) - self._count)
        return self._lag

    def close(self) -> None:
        self._r.close()


def _missing(key: str, url: str) -> LookupError:
    return LookupError(
        f"Redis stream {key!r} does not exist at {_safe_url(url)}; create it (XADD, or "
        "XGROUP CREATE ... MKSTREAM) or fix the stream name"
    )


class RedisStreamSource(FixedPartitionedSource[RedisStreamEntry, tuple[str, int]]):
    """Read Redis streams; every stream key is a source partition.

    - ``url``: the Redis URL; ``streams``: the stream keys (each must exist).
    - ``start_id``: where to start without a snapshot: ``"0"`` (the oldest
      entry), ``"$"`` (only entries added from now on) or an entry id (read
      the entries after it).
    - ``tail``: keep waiting for new entries, or end each stream at the last
      entry it had when the dataflow started.
    - ``batch_size``: most entries per read; ``decode``: fields as ``str``.

    Each partition reports its lag (entries added after its position) to
    the ``headrace_source_lag`` metric.

    >>> RedisStreamSource("redis://localhost:6379/0", ["a", "b"]).batch_size
    1000
    """

    def __init__(
        self,
        url: str,
        streams: Iterable[str],
        start_id: str = "0",
        tail: bool = True,
        batch_size: int = 1000,
        decode: bool = False,
    ) -> None:
        if isinstance(streams, str | bytes):
            msg = f"RedisStreamSource: streams must be a list of keys; write [{streams!r}]"
            raise TypeError(msg)
        self._streams = list(streams)
        if not self._streams:
            msg = "RedisStreamSource: streams is empty; name at least one stream key"
            raise ValueError(msg)
        if not isinstance(batch_size, int) or batch_size < 1:
            msg = f"RedisStreamSource: batch_size must be an int >= 1; got {batch_size!r}"
            raise ValueError(msg)
        if start_id not in ("0", "$"):
            try:
                _parse_id(start_id)
            except ValueError:
                msg = (
                    "RedisStreamSource: start_id must be '0', '$' or an entry id like "
                    f"'1700000000000-0'; got {start_id!r}"
                )
                raise ValueError(msg) from None
        self._url = url
        self._start_id = start_id
        self._tail = tail
        self.batch_size = batch_size
        self._decode = decode

    def list_parts(self) -> list[str]:
        """The stream keys; checks that Redis answers and every stream exists.

        >>> RedisStreamSource("redis://127.0.0.1:1/0", ["s"]).list_parts()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ConnectionError: RedisStreamSource: Redis at redis://127.0.0.1:1/0 is unreachable ...
        """
        r = _client(self._url)
        try:
            for key in self._streams:
                try:
                    kind = _s(r.type(key))
                except _ERRORS as exc:
                    raise _unreachable("RedisStreamSource", self._url, exc) from exc
                if kind == "none":
                    raise _missing(key, self._url)
                if kind != "stream":
                    msg = (
                        f"RedisStreamSource: key {key!r} at {_safe_url(self._url)} is a {kind}, not a stream"
                    )
                    raise TypeError(msg)
        finally:
            r.close()
        return list(self._streams)

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[str, int] | None
    ) -> _StreamPartition:
        """Start reading stream ``for_part`` after its snapshot's entry (or ``start_id``).

        >>> RedisStreamSource("redis://127.0.0.1:6379/0", ["s"]).build_part("f.in", "t", None)
        Traceback (most recent call last):
        ...
        ValueError: step 'f.in': stream 't' is not one of this source's streams ['s']; ...
        """
        if for_part not in self._streams:
            msg = (
                f"step {step_id!r}: stream {for_part!r} is not one of this source's streams "
                f"{self._streams!r}; did the streams change since the recovery snapshot?"
            )
            raise ValueError(msg)
        return _StreamPartition(
            step_id,
            self._url,
            for_part,
            self._start_id,
            resume_state,
            self._tail,
            self.batch_size,
            self._decode,
        )


class _StreamSinkPartition(StatelessSinkPartition[Any]):
    def __init__(
        self, step_id: str, url: str, stream: str | None, maxlen: int | None, approximate: bool
    ) -> None:
        self._step_id = step_id
        self._url = url
        self._stream = stream
        self._maxlen = maxlen
        self._approximate = approximate
        self._r = _client(url)

    def write_batch(self, items: list[Any]) -> None:
        pipe = self._r.pipeline(transaction=False)
        for item in items:
            if self._stream is None:
                if not (isinstance(item, tuple) and len(item) == 2):
                    msg = (
                        f"step {self._step_id!r}: RedisStreamSink(stream=None) takes "
                        f"(stream key, fields dict) pairs; got {item!r}"
                    )
                    raise TypeError(msg)
                key, fields = item
            else:
                key, fields = self._stream, item
            if not isinstance(fields, dict) or not fields:
                msg = (
                    f"step {self._step_id!r}: RedisStreamSink takes a non-empty dict of "
                    f"fields per entry; got {fields!r}"
                )
                raise TypeError(msg)
            pipe.xadd(key, fields, maxlen=self._maxlen, approximate=self._approximate)
        try:
            pipe.execute()
        except _ERRORS as exc:
            raise _unreachable(f"step {self._step_id!r}: RedisStreamSink", self._url, exc) from exc

    def close(self) -> None:
        self._r.close()


class RedisStreamSink(DynamicSink[Any]):
    """Append entries to a Redis stream with ``XADD``; at-least-once.

    Items are dicts of fields. With ``stream=None`` each item is a
    ``(stream key, fields)`` pair. ``maxlen`` trims the stream to about that
    many entries (exactly, with ``approximate=False``, which costs more).

    >>> RedisStreamSink("redis://localhost:6379/0", "out", maxlen=10_000).maxlen
    10000
    """

    def __init__(
        self, url: str, stream: str | None, maxlen: int | None = None, approximate: bool = True
    ) -> None:
        if maxlen is not None and (not isinstance(maxlen, int) or maxlen < 1):
            msg = f"RedisStreamSink: maxlen must be None or an int >= 1; got {maxlen!r}"
            raise ValueError(msg)
        self._url = url
        self.stream = stream
        self.maxlen = maxlen
        self._approximate = approximate

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StreamSinkPartition:
        """Connect this worker; checks that Redis answers.

        >>> RedisStreamSink("redis://127.0.0.1:1/0", "s").build("f.out", 0, 1
        ...                                                  )  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ConnectionError: step 'f.out': RedisStreamSink: Redis at redis://127.0.0.1:1/0 is ...
        """
        part = _StreamSinkPartition(step_id, self._url, self.stream, self.maxlen, self._approximate)
        try:
            part._r.ping()
        except _ERRORS as exc:
            part.close()
            raise _unreachable(f"step {step_id!r}: RedisStreamSink", self._url, exc) from exc
        return part
