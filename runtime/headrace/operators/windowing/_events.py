"""What enters and leaves a window step's per-key logic, and the errors for bad timestamps.

A key's logic (`_engine._KeyWindows` or a fused one from `_fused`) turns a
batch of values into *events*: ``(window_id, value)`` down, ``(window_id,
metadata)`` and ``(window_id, value, _LATE)`` (and ``(0, failure,
_FAILED)`` for a value a folder raised on, under ``on_error="dead_letter"``). `window` splits them into its
three streams with `_unwrap_down`, `_unwrap_late` and `_unwrap_meta`. On a
multi-worker run a key's logic may instead receive `_Runs`: values another
worker pre-folded (`_combiner`), with timestamps as integer microseconds
(`_to_us`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from headrace.dataflow import f_repr
from headrace.errors import BytewaxRuntimeError
from headrace.operators.windowing._rules import UTC_MIN
from headrace.operators.windowing._windowers import WindowMetadata

# Event tags, compared by identity (events never leave this process).
_LATE: Any = object()
_META: Any = object()
_DOWN: Any = object()
_WM = WindowMetadata


def _down(wid: int, w: Any) -> tuple[Any, ...]:
    """A down event; tagged only when its value could pass for metadata."""
    return (wid, w) if w.__class__ is not _WM else (wid, w, _DOWN)


def _meta(wid: int, meta: Any) -> tuple[Any, ...]:
    return (wid, meta) if meta.__class__ is _WM else (wid, meta, _META)


# Down and metadata events are 2-tuples that the engine's ``(key, event)``
# can be passed on as is (no allocation per window); what tells them apart
# is whether the value is exactly a `WindowMetadata`. Late events, and the
# rare down value or custom metadata that would be ambiguous, carry a tag.


def _unwrap_down(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [
        kv if len(kv[1]) == 2 else (kv[0], kv[1][:2])
        for kv in batch
        if kv[1][-1] is _DOWN or (len(kv[1]) == 2 and kv[1][1].__class__ is not _WM)
    ]


def _unwrap_late(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [(kv[0], kv[1][:2]) for kv in batch if kv[1][-1] is _LATE]


def _unwrap_meta(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [
        kv if len(kv[1]) == 2 else (kv[0], kv[1][:2])
        for kv in batch
        if kv[1][-1] is _META or (len(kv[1]) == 2 and kv[1][1].__class__ is _WM)
    ]


# A value a guarded folder raised on (``on_error="dead_letter"``): ``(0, failure, _FAILED)``.
_FAILED: Any = object()


def _failed_event(failure: Any) -> tuple[Any, ...]:
    return (0, failure, _FAILED)


def _unwrap_failed(batch: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    return [(kv[0], kv[1][1]) for kv in batch if kv[1][-1] is _FAILED]


# Pure: the engine skips an unwrap step whose stream nothing reads.
for _unwrap in (_unwrap_down, _unwrap_late, _unwrap_meta):
    _unwrap._headrace_pure = True  # type: ignore[attr-defined]


class _Runs(list):
    """One key's values pre-folded by the worker that read them: ``(window_id, newest_us, acc)``.

    ``newest_us``: the run's newest timestamp, microseconds since the Unix epoch.
    """

    __slots__ = ()


# Runs carry their newest timestamp as integer microseconds since the Unix
# epoch: pickling a `datetime` costs several times folding it, and a run
# crosses to another process. The owner compares in microseconds too.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime.

    >>> _to_us(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)), _from_us(_to_us(UTC_MIN)) == UTC_MIN
    (1000000, True)
    """
    return (ts - _EPOCH) // _US


_UTC_MIN_US = _to_us(UTC_MIN)


def _from_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the Unix epoch.

    >>> _from_us(1_500_000)
    datetime.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=datetime.timezone.utc)
    """
    return _EPOCH + timedelta(microseconds=us)


def _getter_error(step_id: str, getter: Any, value: Any, exc: Exception) -> BytewaxRuntimeError:
    return BytewaxRuntimeError(
        f"step {step_id!r}: error calling `ts_getter` {f_repr(getter)} on value {value!r}: "
        f"{type(exc).__name__}: {exc}"
    )


def _is_aware(ts: Any) -> bool:
    return isinstance(ts, datetime) and ts.utcoffset() is not None


def _timestamp_error(step_id: str, getter: Any, value: Any, ts: Any) -> BytewaxRuntimeError:
    src = f"`ts_getter` {f_repr(getter)}" if getter is not None else "the clock's `on_item`"
    if isinstance(ts, datetime):
        msg = (
            f"step {step_id!r}: {src} returned a naive datetime {ts!r} for value {value!r}; "
            "window timestamps must be timezone-aware: return e.g. "
            "`ts.replace(tzinfo=timezone.utc)` or `ts.astimezone(timezone.utc)`"
        )
    else:
        msg = (
            f"step {step_id!r}: {src} must return a timezone-aware datetime; got "
            f"{type(ts).__name__} {ts!r} for value {value!r}"
        )
    err = BytewaxRuntimeError(msg)
    err.__cause__ = TypeError(msg)
    return err
