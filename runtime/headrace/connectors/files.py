"""File connectors: read lines and CSV rows, write lines, resumably.

Sources remember a **byte offset** per file: a resumed run continues at the
first line it had not yet emitted. Sinks remember the **file length** after
their last snapshot: a resumed run truncates the file back to it before
writing again, so a crash never leaves duplicate or half-written output
(exactly-once file output).

Every file is one partition named ``"{fs_id}::{path}"``, where ``fs_id``
comes from ``get_fs_id(directory)`` (by default the id of the device the
directory is on), so that files on different machines' disks are different
partitions.

>>> import tempfile, pathlib
>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import run_main
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> _ = (tmp / "in.txt").write_text("hello\\nworld\\n")
>>> flow = Dataflow("copy")
>>> s = op.input("inp", flow, FileSource(tmp / "in.txt"))
>>> s = op.map("up", s, lambda line: ("", line.upper()))
>>> op.output("out", s, FileSink(tmp / "out.txt"))
>>> run_main(flow)
>>> (tmp / "out.txt").read_text()
'HELLO\\nWORLD\\n'
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition, batch
from headrace.outputs import FixedPartitionedSink, StatefulSinkPartition

__all__ = [
    "CSVSource",
    "DirSink",
    "DirSource",
    "FileSink",
    "FileSource",
    "FixedPartitionedSink",
    "FixedPartitionedSource",
    "StatefulSinkPartition",
    "StatefulSourcePartition",
    "batch",
]


def _get_path_dev(path: Path) -> str:
    """The id of the device holding ``path``, in hex: the default ``get_fs_id``.

    A missing directory raises the operating system's `FileNotFoundError`
    (``[Errno 2] No such file or directory: 'dir'``), as in Bytewax.

    >>> _get_path_dev(Path("/no/such/dir"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: [Errno 2] No such file or directory: '/no/such/dir'
    directory '/no/such/dir' does not exist; check the path you gave the source
    """
    try:
        return hex(path.stat().st_dev)
    except FileNotFoundError as exc:
        exc.add_note(f"directory {str(path)!r} does not exist; check the path you gave the source")
        raise


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size must be an int >= 1; got {batch_size!r}"
        raise ValueError(msg)


def _check_offset(step_id: str, path: Path, resume_state: Any, size: int, what: str) -> int:
    """Validate a byte-offset resume state against the file's current size."""
    if resume_state is None:
        return 0
    if not isinstance(resume_state, int) or isinstance(resume_state, bool) or resume_state < 0:
        msg = (
            f"step {step_id!r}: resume state for {str(path)!r} must be a byte offset "
            f"(an int >= 0); got {resume_state!r}"
        )
        raise TypeError(msg)
    if resume_state > size:
        msg = (
            f"step {step_id!r}: cannot resume {what} {str(path)!r} at byte offset "
            f"{resume_state}: the file is only {size} bytes long, so it was truncated or "
            "replaced since the snapshot; restore the file or start without recovery state"
        )
        raise ValueError(msg)
    return resume_state


def _open_for_reading(step_id: str, path: Path) -> io.BufferedReader:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        msg = (
            f"step {step_id!r}: input file {str(path)!r} does not exist "
            f"(relative paths are resolved against {os.getcwd()!r}); check the path"
        )
        raise FileNotFoundError(msg) from None
    except IsADirectoryError:
        msg = f"step {step_id!r}: {str(path)!r} is a directory; use DirSource to read a directory"
        raise IsADirectoryError(msg) from None


def _decode_error(path: Path, offset: int, exc: UnicodeDecodeError) -> ValueError:
    msg = (
        f"{str(path)!r} is not valid UTF-8: byte {exc.object[exc.start : exc.start + 1]!r} at "
        f"byte offset {offset + exc.start} ({exc.reason}); convert the file to UTF-8 "
        "(e.g. `iconv -t UTF-8`)"
    )
    return ValueError(msg)


def _strip_eol(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        return raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    return raw


class _FileSourcePartition(StatefulSourcePartition[str, int]):
    """Reads one file line by line from a byte offset; snapshots the offset."""

    def __init__(self, step_id: str, path: Path, batch_size: int, resume_state: int | None):
        self._path = path
        self._batch_size = batch_size
        self._f = _open_for_reading(step_id, path)
        try:
            size = os.fstat(self._f.fileno()).st_size
            self._pos = _check_offset(step_id, path, resume_state, size, "reading")
            self._f.seek(self._pos)
        except BaseException:
            self._f.close()
            raise

    def next_batch(self) -> list[str]:
        raws = list(islice(self._f, self._batch_size))
        if not raws:
            raise StopIteration()
        out: list[str] = []
        pos = self._pos
        for raw in raws:
            try:
                out.append(_strip_eol(raw).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise _decode_error(self._path, pos, exc) from None
            pos += len(raw)
        self._pos = pos
        return out

    def snapshot(self) -> int:
        return self._pos

    def close(self) -> None:
        self._f.close()


class FileSource(FixedPartitionedSource[str, int]):
    """Read a text file (UTF-8) line by line; each item is a line without its newline.

    A last line without a trailing newline is still emitted; ``\\r\\n`` line
    ends are stripped too. Resumes from the byte offset after the last line
    emitted before the snapshot.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "lines.txt"
    >>> _ = path.write_text("one\\ntwo\\nthree")
    >>> src = FileSource(path, batch_size=2)
    >>> part = src.build_part("flow.inp", src.list_parts()[0], None)
    >>> part.next_batch(), part.snapshot()
    (['one', 'two'], 8)
    >>> src.build_part("flow.inp", src.list_parts()[0], 8).next_batch()
    ['three']
    """

    def __init__(
        self,
        path: Path | str,
        batch_size: int = 1000,
        get_fs_id: Callable[[Path], str] = _get_path_dev,
    ) -> None:
        _check_batch_size(batch_size)
        self._path = Path(path)
        self._batch_size = batch_size
        # As in Bytewax: the file's directory must exist when the source is made.
        self._fs_id = get_fs_id(self._path.parent)

    def list_parts(self) -> list[str]:
        """One partition, ``"{fs_id}::{path}"``.

        >>> FileSource("data/in.txt", get_fs_id=lambda d: "disk0").list_parts()
        ['disk0::data/in.txt']
        """
        return [f"{self._fs_id}::{self._path}"]

    def _check_part(self, step_id: str, for_part: str) -> None:
        if not for_part.endswith(f"::{self._path}"):
            msg = (
                f"step {step_id!r}: partition {for_part!r} is not this source's file "
                f"{str(self._path)!r}; was the path changed since the recovery snapshot?"
            )
            raise ValueError(msg)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FileSourcePartition:
        """Open the file, seeking to ``resume_state`` (a byte offset) if given.

        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "lines.txt"
        >>> _ = path.write_text("a\\nb\\n")
        >>> src = FileSource(path)
        >>> src.build_part("flow.inp", src.list_parts()[0], 2).next_batch()
        ['b']
        """
        self._check_part(step_id, for_part)
        return _FileSourcePartition(step_id, self._path, self._batch_size, resume_state)


def _rel_from_part(for_part: str, prefix: str) -> str:
    if for_part.startswith(prefix):
        return for_part[len(prefix) :]
    # The fs id can differ from the snapshot's (e.g. a volume moved to
    # another device); the relative path still names the same file.
    return for_part.partition("::")[2]


class DirSource(FixedPartitionedSource[str, int]):
    """Read every file in a directory matching ``glob_pat``; one partition per file.

    Lines are read as in `FileSource`. Partition names are
    ``"{fs_id}::{path relative to dir_path}"``; only regular files are listed
    (``"**/*.txt"`` descends into subdirectories).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.txt").write_text("a1\\na2\\n")
    >>> _ = (d / "b.txt").write_text("b1\\n")
    >>> src = DirSource(d, glob_pat="*.txt", get_fs_id=lambda p: "disk0")
    >>> src.list_parts()
    ['disk0::a.txt', 'disk0::b.txt']
    >>> src.build_part("flow.inp", "disk0::b.txt", None).next_batch()
    ['b1']
    """

    def __init__(
        self,
        dir_path: Path,
        glob_pat: str = "*",
        batch_size: int = 1000,
        get_fs_id: Callable[[Path], str] = _get_path_dev,
    ) -> None:
        _check_batch_size(batch_size)
        self._dir_path = Path(dir_path)
        # Bytewax's checks and words.
        if not self._dir_path.exists():
            msg = f"input directory `{self._dir_path}` does not exist"
            raise ValueError(msg)
        if not self._dir_path.is_dir():
            msg = f"input directory `{self._dir_path}` is not a directory"
            raise ValueError(msg)
        self._glob_pat = glob_pat
        self._batch_size = batch_size
        self._get_fs_id = get_fs_id

    def list_parts(self) -> list[str]:
        """One partition per matching file, sorted.

        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> (d / "sub").mkdir(); _ = (d / "sub" / "x.log").write_text("")
        >>> DirSource(d, "**/*.log", get_fs_id=lambda p: "id").list_parts()
        ['id::sub/x.log']
        """
        if not self._dir_path.is_dir():
            msg = (
                f"DirSource directory {str(self._dir_path)!r} does not exist or is not a "
                "directory; check the path"
            )
            raise FileNotFoundError(msg)
        fs_id = self._get_fs_id(self._dir_path)
        return sorted(
            f"{fs_id}::{p.relative_to(self._dir_path).as_posix()}"
            for p in self._dir_path.glob(self._glob_pat)
            if p.is_file()
        )

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FileSourcePartition:
        """Open the partition's file, seeking to ``resume_state`` if given.

        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "x.txt").write_text("x1\\nx2\\n")
        >>> DirSource(d).build_part("flow.inp", "any::x.txt", 3).next_batch()
        ['x2']
        """
        prefix = f"{self._get_fs_id(self._dir_path)}::"
        path = self._dir_path / _rel_from_part(for_part, prefix)
        return _FileSourcePartition(step_id, path, self._batch_size, resume_state)


class _CountingLines:
    """Decoded lines of a binary file, counting the bytes consumed.

    `csv.reader` pulls lines one at a time, and only as many as a row needs,
    so after each row ``pos`` is the byte offset of the next row.
    """

    def __init__(self, f: io.BufferedReader, path: Path, pos: int) -> None:
        self._f = f
        self._path = path
        self.pos = pos

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._f.readline()
        if not raw:
            raise StopIteration
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _decode_error(self._path, self.pos, exc) from None
        self.pos += len(raw)
        return line


class _CSVSourcePartition(StatefulSourcePartition[dict[str, Any], int]):
    """Reads CSV rows as dicts keyed by the header row; snapshots the byte offset."""

    def __init__(
        self,
        step_id: str,
        path: Path,
        batch_size: int,
        fmtparams: dict[str, Any],
        resume_state: int | None,
    ) -> None:
        self._batch_size = batch_size
        self._f = _open_for_reading(step_id, path)
        try:
            size = os.fstat(self._f.fileno()).st_size
            start = _check_offset(step_id, path, resume_state, size, "reading")
            self._lines = _CountingLines(self._f, path, 0)
            header = next(csv.reader(self._lines, **fmtparams), None)
            self._done = header is None
            if start > self._lines.pos:
                self._f.seek(start)
                self._lines.pos = start
            self._reader = csv.DictReader(self._lines, fieldnames=header, **fmtparams)
            self._pos = self._lines.pos
        except BaseException:
            self._f.close()
            raise

    def next_batch(self) -> list[dict[str, Any]]:
        if self._done:
            raise StopIteration()
        rows = list(islice(self._reader, self._batch_size))
        self._pos = self._lines.pos
        if not rows:
            self._done = True
            raise StopIteration()
        return rows

    def snapshot(self) -> int:
        return self._pos

    def close(self) -> None:
        self._f.close()


class CSVSource(FileSource):
    """Read a CSV file (UTF-8); each item is a ``dict`` of one row keyed by the header.

    ``fmtparams`` are passed to `csv.reader` (``delimiter``, ``quotechar``...).
    Rows may span lines (quoted newlines). Resumes by byte offset, re-reading
    the header first.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = path.write_text("name;age\\nann;31\\nbob;27\\n")
    >>> src = CSVSource(path, delimiter=";")
    >>> part = src.build_part("flow.inp", src.list_parts()[0], None)
    >>> part.next_batch()
    [{'name': 'ann', 'age': '31'}, {'name': 'bob', 'age': '27'}]
    """

    def __init__(
        self,
        path: Path,
        batch_size: int = 1000,
        get_fs_id: Callable[[Path], str] = _get_path_dev,
        **fmtparams: Any,
    ) -> None:
        super().__init__(path, batch_size, get_fs_id)
        # Fail at build time on a bad dialect option, not in the middle of a run.
        csv.reader([], **fmtparams)
        self._fmtparams = fmtparams

    def list_parts(self) -> list[str]:
        """One partition, ``"{fs_id}::{path}"``.

        >>> CSVSource("t.csv", get_fs_id=lambda d: "disk0").list_parts()
        ['disk0::t.csv']
        """
        return super().list_parts()

    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _CSVSourcePartition:
        """Open the file and read its header, then seek to ``resume_state`` if given.

        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = path.write_text("k,v\\na,1\\nb,2\\n")
        >>> src = CSVSource(path)
        >>> src.build_part("flow.inp", src.list_parts()[0], 8).next_batch()
        [{'k': 'b', 'v': '2'}]
        """
        self._check_part(step_id, for_part)
        return _CSVSourcePartition(step_id, self._path, self._batch_size, self._fmtparams, resume_state)


def _not_str_error(path: Path, values: list[Any]) -> TypeError:
    bad = next(v for v in values if not isinstance(v, str))
    shown = repr(bad)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = (
        f"file sink for {str(path)!r} can only write str values; got "
        f"{type(bad).__name__}: {shown}; format the values first, e.g. "
        "op.map_value('fmt', stream, str)"
    )
    return TypeError(msg)


class _FileSinkPartition(StatefulSinkPartition[str, int]):
    """Appends lines to one file; the snapshot is the durable file length."""

    def __init__(self, step_id: str, path: Path, end: str, resume_state: int | None) -> None:
        self._path = path
        self._end = end
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        self._f = open(fd, "r+b")
        try:
            size = os.fstat(fd).st_size
            self._pos = _check_offset(step_id, path, resume_state, size, "writing")
            # Anything past the snapshot was written after it and will be
            # written again by the resumed run: drop it.
            self._f.truncate(self._pos)
            self._f.seek(self._pos)
        except BaseException:
            self._f.close()
            raise

    def write_batch(self, values: list[str]) -> None:
        if not values:
            return
        end = self._end
        try:
            text = end.join(values) + end
        except TypeError:
            raise _not_str_error(self._path, values) from None
        data = text.encode("utf-8")
        self._f.write(data)
        # Flushed per batch so readers (tail -f) see output promptly;
        # fsync waits for the snapshot.
        self._f.flush()
        self._pos += len(data)

    def snapshot(self) -> int:
        # The position is committed with the epoch; make sure the bytes
        # before it survive a machine crash first.
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._pos

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


class FileSink(FixedPartitionedSink[str, int]):
    """Write each value (a ``str``) followed by ``end`` to one file.

    Items must be ``(key, value)`` 2-tuples (the key is ignored). On a fresh
    run the file is emptied; on a resumed run it is truncated to the length
    recorded at the snapshot, then appended to, so the output is exactly-once.
    A missing parent directory is created.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> part = FileSink(path).build_part("flow.out", str(path), None)
    >>> part.write_batch(["a", "b"]); part.snapshot()
    4
    >>> part.close(); path.read_text()
    'a\\nb\\n'
    """

    def __init__(self, path: Path, end: str = "\n") -> None:
        self._path = Path(path)
        self._end = end

    def list_parts(self) -> list[str]:
        """One partition named by the path.

        >>> FileSink("out/result.txt").list_parts()
        ['out/result.txt']
        """
        return [str(self._path)]

    def part_fn(self, item_key: str) -> int:
        """Every key goes to the only partition.

        >>> FileSink("out.txt").part_fn("any-key")
        0
        """
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FileSinkPartition:
        """Open the file, truncated to ``resume_state`` bytes (0 on a fresh run).

        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> _ = path.write_text("kept\\nlost\\n")
        >>> part = FileSink(path).build_part("flow.out", str(path), 5)
        >>> part.write_batch(["new"]); part.close(); path.read_text()
        'kept\\nnew\\n'
        """
        if for_part != str(self._path):
            msg = (
                f"step {step_id!r}: partition {for_part!r} is not this sink's file "
                f"{str(self._path)!r}; was the path changed since the recovery snapshot?"
            )
            raise ValueError(msg)
        return _FileSinkPartition(step_id, self._path, self._end, resume_state)


def _default_file_namer(index: int, count: int) -> str:
    return f"part_{index}"


def _default_assign_file(key: str) -> int:
    return zlib.adler32(key.encode("utf-8"))


class DirSink(FixedPartitionedSink[str, int]):
    """Write values to ``file_count`` files in a directory, chosen by item key.

    Files are named ``file_namer(index, file_count)`` (default ``part_{index}``);
    an item goes to file ``assign_file(key) % file_count`` (default: Adler-32
    of the key). Each file behaves like a `FileSink` (exactly-once on resume).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> sink = DirSink(d, 2)
    >>> sink.list_parts()
    ['part_0', 'part_1']
    >>> part = sink.build_part("flow.out", "part_1", None)
    >>> part.write_batch(["x"]); part.close(); (d / "part_1").read_text()
    'x\\n'
    """

    def __init__(
        self,
        dir_path: Path,
        file_count: int,
        file_namer: Callable[[int, int], str] = _default_file_namer,
        assign_file: Callable[[str], int] = _default_assign_file,
        end: str = "\n",
    ) -> None:
        if not isinstance(file_count, int) or file_count < 1:
            msg = f"DirSink file_count must be an int >= 1; got {file_count!r}"
            raise ValueError(msg)
        self._dir_path = Path(dir_path)
        self._file_count = file_count
        self._file_namer = file_namer
        self._assign_file = assign_file
        self._end = end

    def list_parts(self) -> list[str]:
        """The ``file_count`` file names.

        >>> DirSink("out", 3, file_namer=lambda i, n: f"{i}-of-{n}.txt").list_parts()
        ['0-of-3.txt', '1-of-3.txt', '2-of-3.txt']
        """
        names = [self._file_namer(i, self._file_count) for i in range(self._file_count)]
        if len(set(names)) != len(names):
            msg = f"DirSink file_namer must give {self._file_count} distinct names; got {names!r}"
            raise ValueError(msg)
        return names

    def part_fn(self, item_key: str) -> int:
        """The file index for an item key: ``assign_file(key) % file_count``.

        >>> DirSink("out", 4, assign_file=lambda k: len(k)).part_fn("hello")
        1
        """
        return self._assign_file(item_key) % self._file_count

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FileSinkPartition:
        """Open ``dir_path / for_part``, truncated to ``resume_state`` bytes.

        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> part = DirSink(d, 1).build_part("flow.out", "part_0", None)
        >>> part.snapshot()
        0
        """
        return _FileSinkPartition(step_id, self._dir_path / for_part, self._end, resume_state)
