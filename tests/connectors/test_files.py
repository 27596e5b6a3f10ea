"""File connectors: reading, writing, resuming from snapshots, and bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace.connectors.files import CSVSource, DirSink, DirSource, FileSink, FileSource
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.support.errors import causes_text


def _fs_id(_path: Path) -> str:
    return "disk"


def _read_all(part: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out


def _run_source(source: Any, workers: int = 1) -> list[Any]:
    flow = Dataflow("read")
    out: list[Any] = []
    op.output("out", op.input("inp", flow, source), TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


# ---------------------------------------------------------------- FileSource


def test_file_round_trip_through_a_dataflow(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    lines = ["first line", "ünïcödé ✓", "", "  spaced  ", "last"]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dst = tmp_path / "out" / "copy.txt"

    flow = Dataflow("copy")
    s = op.input("inp", flow, FileSource(src, batch_size=2))
    s = op.key_on("key", s, lambda _line: "all")
    op.output("out", s, FileSink(dst))
    run_main(flow)

    assert dst.read_text(encoding="utf-8") == src.read_text(encoding="utf-8")


def test_file_source_line_endings_and_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"dos\r\nunix\n\nno newline at end")
    assert _run_source(FileSource(path)) == ["dos", "unix", "", "no newline at end"]


def test_file_source_empty_file_emits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert _run_source(FileSource(path)) == []


def test_file_source_part_name_uses_fs_id_of_the_directory(tmp_path: Path) -> None:
    seen: list[Path] = []

    def fs_id(p: Path) -> str:
        seen.append(p)
        return "dev7"

    path = tmp_path / "in.txt"
    assert FileSource(path, get_fs_id=fs_id).list_parts() == [f"dev7::{path}"]
    assert seen == [tmp_path]
    # The default is the directory's device id, the same for files side by side.
    a, b = FileSource(tmp_path / "a"), FileSource(tmp_path / "b")
    assert a.list_parts()[0].split("::")[0] == b.list_parts()[0].split("::")[0]


def test_file_source_resumes_from_a_mid_file_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    lines = [f"line {i} ✓" for i in range(10)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = FileSource(path, batch_size=3, get_fs_id=_fs_id)
    (part_name,) = source.list_parts()

    first = source.build_part("flow.inp", part_name, None)
    got = list(first.next_batch()) + list(first.next_batch())
    assert got == lines[:6]
    offset = first.snapshot()
    # The offset is in bytes (multi-byte characters count for their bytes).
    assert offset == len(("\n".join(lines[:6]) + "\n").encode("utf-8"))
    first.close()

    resumed = source.build_part("flow.inp", part_name, offset)
    assert _read_all(resumed) == lines[6:]
    assert resumed.snapshot() == path.stat().st_size
    resumed.close()


def test_file_source_snapshot_before_any_read_is_zero(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("a\nb\n")
    source = FileSource(path)
    part = source.build_part("flow.inp", source.list_parts()[0], None)
    assert part.snapshot() == 0
    assert _read_all(source.build_part("flow.inp", source.list_parts()[0], 0)) == ["a", "b"]


def test_file_source_resume_past_end_of_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("short\n")
    source = FileSource(path)
    with pytest.raises(ValueError, match=r"byte offset 100.*only 6 bytes"):
        source.build_part("flow.inp", source.list_parts()[0], 100)


def test_file_source_missing_file_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(BytewaxRuntimeError) as info:
        _run_source(FileSource(path))
    msg = causes_text(info.value)
    assert "read.inp" in msg
    assert str(path) in msg
    assert "does not exist" in msg


def test_file_source_missing_directory_fails_when_made(tmp_path: Path) -> None:
    # As in Bytewax 0.21.1: the OS error for the directory, at construction.
    path = tmp_path / "nodir" / "in.txt"
    with pytest.raises(FileNotFoundError) as info:
        FileSource(path)
    assert str(info.value) == f"[Errno 2] No such file or directory: '{tmp_path / 'nodir'}'"
    with pytest.raises(FileNotFoundError, match="No such file or directory: 'nodir'"):
        CSVSource(Path("nodir/in.csv"))


def test_file_source_non_utf8_error_names_path_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(BytewaxRuntimeError) as info:
        _run_source(FileSource(path))
    msg = causes_text(info.value)
    assert str(path) in msg
    assert "not valid UTF-8" in msg
    assert "byte offset 8" in msg


def test_file_source_rejects_bad_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        FileSource(tmp_path / "x", batch_size=0)


def test_file_source_rejects_a_part_of_another_file(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x\n")
    with pytest.raises(ValueError, match="not this source's file"):
        FileSource(path).build_part("flow.inp", "disk::other.txt", None)


# ----------------------------------------------------------------- DirSource


def _make_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("a1\na2\na3\n")
    (d / "b.txt").write_text("b1\n")
    (d / "c.log").write_text("c1\nc2")
    (d / "sub" / "d.txt").write_text("d1\n")
    return d


def test_dir_source_lists_one_part_per_file(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    assert DirSource(d, get_fs_id=_fs_id).list_parts() == [
        "disk::a.txt",
        "disk::b.txt",
        "disk::c.log",
    ]
    assert DirSource(d, "**/*.txt", get_fs_id=_fs_id).list_parts() == [
        "disk::a.txt",
        "disk::b.txt",
        "disk::sub/d.txt",
    ]


def test_dir_source_reads_every_file_across_workers(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    got = _run_source(DirSource(d, "**/*", batch_size=2), workers=2)
    assert sorted(got) == ["a1", "a2", "a3", "b1", "c1", "c2", "d1"]


def test_dir_source_part_resumes_from_offset(tmp_path: Path) -> None:
    d = _make_dir(tmp_path)
    source = DirSource(d, get_fs_id=_fs_id)
    part = source.build_part("flow.inp", "disk::a.txt", 3)
    assert _read_all(part) == ["a2", "a3"]


def test_dir_source_missing_directory(tmp_path: Path) -> None:
    # Bytewax 0.21.1's type and words, at construction.
    with pytest.raises(ValueError) as info:
        DirSource(tmp_path / "missing")
    assert str(info.value) == f"input directory `{tmp_path / 'missing'}` does not exist"
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(ValueError) as info:
        DirSource(tmp_path / "f.txt")
    assert str(info.value) == f"input directory `{tmp_path / 'f.txt'}` is not a directory"


def test_dir_source_directory_removed_before_the_run(tmp_path: Path) -> None:
    d = tmp_path / "gone"
    d.mkdir()
    source = DirSource(d)
    d.rmdir()
    with pytest.raises(BytewaxRuntimeError) as info:
        _run_source(source)
    assert str(d) in causes_text(info.value)


# ----------------------------------------------------------------- CSVSource


def test_csv_source_yields_dicts_through_a_dataflow(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('name,note\nann,"likes, commas"\nbob,"two\nlines"\n\ncy,plain\n')
    assert _run_source(CSVSource(path, batch_size=2)) == [
        {"name": "ann", "note": "likes, commas"},
        {"name": "bob", "note": "two\nlines"},
        {"name": "cy", "note": "plain"},
    ]


def test_csv_source_passes_fmtparams(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n1\t2\n")
    assert _run_source(CSVSource(path, delimiter="\t")) == [{"a": "1", "b": "2"}]


def test_csv_source_resumes_by_byte_offset_rereading_the_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = [{"k": f"key{i}", "v": f"välue {i}"} for i in range(7)]
    path.write_text("k,v\n" + "".join(f"{r['k']},{r['v']}\n" for r in rows), encoding="utf-8")
    source = CSVSource(path, batch_size=3, get_fs_id=_fs_id)
    (part_name,) = source.list_parts()

    first = source.build_part("flow.inp", part_name, None)
    assert first.snapshot() > 0  # past the header
    assert first.next_batch() == rows[:3]
    offset = first.snapshot()
    first.close()

    resumed = source.build_part("flow.inp", part_name, offset)
    assert _read_all(resumed) == rows[3:]
    assert resumed.snapshot() == path.stat().st_size


def test_csv_source_empty_and_header_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    assert _run_source(CSVSource(empty)) == []
    assert _run_source(CSVSource(header_only)) == []


def test_csv_source_bad_fmtparams_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        CSVSource(tmp_path / "t.csv", delimiter="too long")


def test_csv_source_non_utf8_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,\xff\n")
    with pytest.raises(BytewaxRuntimeError) as info:
        _run_source(CSVSource(path))
    msg = causes_text(info.value)
    assert str(path) in msg
    assert "byte offset 6" in msg


# ------------------------------------------------------------------ FileSink


def test_file_sink_fresh_run_empties_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("left over from an earlier run\n")
    flow = Dataflow("w")
    s = op.input("inp", flow, TestingSource([("k", "a"), ("k", "b")]))
    op.output("out", s, FileSink(path))
    run_main(flow)
    assert path.read_text() == "a\nb\n"


def test_file_sink_custom_end(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    part = FileSink(path, end=",").build_part("flow.out", str(path), None)
    part.write_batch(["1", "2"])
    part.close()
    assert path.read_text() == "1,2,"


def test_file_sink_truncates_to_snapshot_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    sink = FileSink(path)
    (part_name,) = sink.list_parts()

    part = sink.build_part("flow.out", part_name, None)
    part.write_batch(["one", "two"])
    snap = part.snapshot()
    at_snapshot = path.read_bytes()
    part.write_batch(["three (after the snapshot)"])
    # Crash: the partition is abandoned without close().
    del part

    resumed = sink.build_part("flow.out", part_name, snap)
    resumed.write_batch(["three", "four"])
    assert resumed.snapshot() == len(at_snapshot) + len(b"three\nfour\n")
    resumed.close()
    assert path.read_bytes() == at_snapshot + b"three\nfour\n"


def test_file_sink_truncation_after_a_killed_process(tmp_path: Path) -> None:
    """A process that really dies mid-epoch: the file has bytes past the snapshot."""
    path = tmp_path / "out.txt"
    script = textwrap.dedent(
        f"""
        import os
        from headrace.connectors.files import FileSink
        sink = FileSink({str(path)!r})
        part = sink.build_part("flow.out", {str(path)!r}, None)
        part.write_batch(["committed 1", "committed 2"])
        print(part.snapshot(), flush=True)
        part.write_batch(["lost 3"])
        os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    snap = int(proc.stdout)
    assert path.read_text() == "committed 1\ncommitted 2\nlost 3\n"

    part = FileSink(path).build_part("flow.out", str(path), snap)
    part.write_batch(["redone 3"])
    part.close()
    assert path.read_text() == "committed 1\ncommitted 2\nredone 3\n"


def test_file_sink_resume_longer_than_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("abc")
    with pytest.raises(ValueError, match="only 3 bytes"):
        FileSink(path).build_part("flow.out", str(path), 10)
    assert path.read_text() == "abc"


def test_file_sink_non_str_value_error_names_the_type(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    flow = Dataflow("w")
    s = op.input("inp", flow, TestingSource([("k", "fine"), ("k", 42)], batch_size=2))
    op.output("out", s, FileSink(path))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    msg = causes_text(info.value)
    assert "w.out" in msg
    assert "TypeError" in msg
    assert "int: 42" in msg
    assert str(path) in msg


def test_file_sink_lists_its_path_and_routes_every_key_to_it(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out.txt")
    assert sink.list_parts() == [str(tmp_path / "out.txt")]
    assert {sink.part_fn(k) for k in ["a", "b", "zz"]} == {0}


# ------------------------------------------------------------------- DirSink


def test_dir_sink_default_names_and_assignment(tmp_path: Path) -> None:
    sink = DirSink(tmp_path, 3)
    assert sink.list_parts() == ["part_0", "part_1", "part_2"]
    # Default assignment: Adler-32 of the key, modulo the file count.
    assert sink.part_fn("a") == 0x00620062 % 3


def test_dir_sink_spreads_items_by_key_through_a_dataflow(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    items = [(f"k{i}", f"v{i}") for i in range(20)]
    flow = Dataflow("w")
    s = op.input("inp", flow, TestingSource(items, batch_size=5))
    op.output(
        "out",
        s,
        DirSink(out_dir, 2, file_namer=lambda i, n: f"{i}-of-{n}.txt", assign_file=lambda k: int(k[1:])),
    )
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert (out_dir / "0-of-2.txt").read_text().split() == [f"v{i}" for i in range(0, 20, 2)]
    assert (out_dir / "1-of-2.txt").read_text().split() == [f"v{i}" for i in range(1, 20, 2)]


def test_dir_sink_rejects_duplicate_file_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        DirSink(tmp_path, 2, file_namer=lambda i, n: "same").list_parts()


# ------------------------------------------------- exactly-once with recovery


def test_file_to_file_is_exactly_once_across_a_crash(tmp_path: Path) -> None:
    """Crash mid-run, then resume: the output file equals the input, no line twice."""
    recovery = pytest.importorskip("headrace.recovery")
    inp = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    lines = [f"line {i}" for i in range(30)]
    inp.write_text("".join(f"{line}\n" for line in lines))
    source_resumes: list[Any] = []
    sink_resumes: list[Any] = []
    crashed: list[bool] = []

    class SpySource(FileSource):
        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
            source_resumes.append(resume_state)
            return super().build_part(step_id, for_part, resume_state)

    class SpySink(FileSink):
        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
            sink_resumes.append(resume_state)
            return super().build_part(step_id, for_part, resume_state)

    def crash_once(line: str) -> tuple[str, str]:
        if line == "line 20" and not crashed:
            crashed.append(True)
            msg = "simulated crash"
            raise RuntimeError(msg)
        return ("k", line)

    def build() -> Dataflow:
        flow = Dataflow("exactly_once")
        s = op.input("inp", flow, SpySource(inp, batch_size=3))
        op.output("out", op.map("crash", s, crash_once), SpySink(out))
        return flow

    recovery.init_db_dir(tmp_path / "recovery", 1)
    config = recovery.RecoveryConfig(str(tmp_path / "recovery"))
    with pytest.raises(BytewaxRuntimeError):
        run_main(build(), epoch_interval=timedelta(0), recovery_config=config)
    assert source_resumes == [None] and sink_resumes == [None]
    # Output written after the last snapshot, as a crash mid-epoch leaves it.
    with out.open("a") as f:
        f.write("written after the snapshot\n")

    run_main(build(), epoch_interval=timedelta(0), recovery_config=config)
    source_offset, sink_offset = source_resumes[1], sink_resumes[1]
    assert isinstance(source_offset, int) and 0 < source_offset < inp.stat().st_size
    assert isinstance(sink_offset, int) and sink_offset > 0
    assert out.read_text() == inp.read_text()
