"""What happens inside windows: `WindowLogic` and the logics of the built-in operators.

`window` builds one `WindowLogic` per window of each key (see
`headrace.operators.windowing._engine` for the machinery that drives them);
`fold_window` hands it a `_FoldBuilder`, which the engine recognises so it
can keep plain accumulators instead of logic objects. `WindowOut` is what
every windowing operator returns.
"""

from __future__ import annotations

import copy
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from headrace.dataflow import Stream
from headrace.operators.windowing._windowers import WindowMetadata

__all__ = ["WindowLogic", "WindowOut", "partition"]

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")
X = TypeVar("X")
W_co = TypeVar("W_co", covariant=True)


def partition(it: Iterable[X], predicate: Callable[[X], bool]) -> tuple[list[X], list[X]]:
    """Split ``it`` into the items ``predicate`` accepts and the rest, keeping order.

    >>> partition(range(6), lambda x: x % 2 == 0)
    ([0, 2, 4], [1, 3, 5])
    """
    trues: list[X] = []
    falses: list[X] = []
    for x in it:
        (trues if predicate(x) else falses).append(x)
    return trues, falses


@dataclass(frozen=True)
class WindowOut(Generic[V, W_co]):
    """The three streams of a windowing operator.

    ``down``: ``(key, (window_id, output))``; ``late``: ``(key, (window_id,
    value))`` for values that arrived after their windows closed (ids of
    windows that never opened can appear here); ``meta``: ``(key,
    (window_id, WindowMetadata))`` once per closed window (not for windows
    merged into another).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> import headrace.operators.windowing as win
    >>> from headrace.testing import TestingSource
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> flow = Dataflow("wo")
    >>> clock = win.EventClock(lambda ts: ts, timedelta(0))
    >>> w = win.collect_window("c", op.input("i", flow, TestingSource([("k", t0)])), clock,
    ...                        win.TumblingWindower(timedelta(seconds=1), t0))
    >>> [name for name in ("down", "late", "meta") if isinstance(getattr(w, name), Stream)]
    ['down', 'late', 'meta']
    """

    down: Stream[tuple[str, tuple[int, W_co]]]
    late: Stream[tuple[str, tuple[int, V]]]
    meta: Stream[tuple[str, tuple[int, WindowMetadata]]]


class WindowLogic(ABC, Generic[V, W, S]):
    """What happens inside one window of one key; built per window by `window`'s builder.

    Outputs returned from these methods are emitted on the ``down`` stream
    as ``(key, (window_id, output))``.

    >>> class Count(WindowLogic):
    ...     def __init__(self, resume): self.n = resume or 0
    ...     def on_value(self, value): self.n += 1; return []
    ...     def on_merge(self, original): self.n += original.n; return []
    ...     def on_close(self): return [self.n]
    ...     def snapshot(self): return self.n
    >>> w = Count(None); w.on_value("a"); w.on_value("b"); w.on_close()
    []
    []
    [2]
    """

    @abstractmethod
    def on_value(self, value: V) -> Iterable[W]:
        """Called for each value in this window (in timestamp order if ``ordered``).

        >>> class Echo(WindowLogic):
        ...     def on_value(self, value): return [value]
        ...     def on_merge(self, original): return []
        ...     def on_close(self): return []
        ...     def snapshot(self): return None
        >>> Echo().on_value(1)
        [1]
        """

    @abstractmethod
    def on_merge(self, original: Any) -> Iterable[W]:
        """Absorb ``original``, a window merged into this one (session windows).

        >>> class Sum(WindowLogic):
        ...     def __init__(self, s): self.s = s
        ...     def on_value(self, value): self.s += value; return []
        ...     def on_merge(self, original): self.s += original.s; return []
        ...     def on_close(self): return [self.s]
        ...     def snapshot(self): return self.s
        >>> a = Sum(1); a.on_merge(Sum(2)); a.on_close()
        []
        [3]
        """

    @abstractmethod
    def on_close(self) -> Iterable[W]:
        """Called once when the window closes; the logic is then dropped.

        >>> class Done(WindowLogic):
        ...     def on_value(self, value): return []
        ...     def on_merge(self, original): return []
        ...     def on_close(self): return ["closed"]
        ...     def snapshot(self): return None
        >>> Done().on_close()
        ['closed']
        """

    @abstractmethod
    def snapshot(self) -> S:
        """This window's state for recovery (pickleable, not shared); passed back to the builder.

        >>> class Keep(WindowLogic):
        ...     def __init__(self, s=None): self.s = s or []
        ...     def on_value(self, value): self.s.append(value); return []
        ...     def on_merge(self, original): return []
        ...     def on_close(self): return [self.s]
        ...     def snapshot(self): return list(self.s)
        >>> k = Keep(); k.on_value(1); Keep(k.snapshot()).on_close()
        []
        [[1]]
        """


class _FoldWindowLogic(WindowLogic[V, S, S]):
    """`fold_window`'s logic as a `WindowLogic`, for windowers without a fast path."""

    __slots__ = ("folder", "merger", "state")

    def __init__(self, folder: Callable[[S, V], S], merger: Callable[[S, S], S], state: S) -> None:
        self.folder = folder
        self.merger = merger
        self.state = state

    def on_value(self, value: V) -> Iterable[S]:
        self.state = self.folder(self.state, value)
        return ()

    def on_merge(self, original: _FoldWindowLogic[V, S]) -> Iterable[S]:
        self.state = self.merger(self.state, original.state)
        return ()

    def on_close(self) -> Iterable[S]:
        return (self.state,)

    def snapshot(self) -> S:
        return copy.deepcopy(self.state)


class _FoldBuilder(Generic[V, S]):
    """A `window` builder for folds, which `window` recognises to fold without logic objects."""

    __slots__ = ("builder", "folder", "merger")

    def __init__(
        self, builder: Callable[[], S], folder: Callable[[S, V], S], merger: Callable[[S, S], S]
    ) -> None:
        self.builder = builder
        self.folder = folder
        self.merger = merger

    def __call__(self, resume_state: S | None) -> _FoldWindowLogic[V, S]:
        state = self.builder() if resume_state is None else resume_state
        return _FoldWindowLogic(self.folder, self.merger, state)


class _JoinWindowLogic(WindowLogic[tuple[int, Any], tuple[Any, ...], list[list[Any]]]):
    """Per-window join slots: one list of values per side."""

    __slots__ = ("emit_mode", "insert_mode", "seen")

    def __init__(self, insert_mode: str, emit_mode: str, seen: list[list[Any]]) -> None:
        self.insert_mode = insert_mode
        self.emit_mode = emit_mode
        self.seen = seen

    def _rows(self) -> list[tuple[Any, ...]]:
        return list(itertools.product(*(vals if vals else (None,) for vals in self.seen)))

    def _emit(self) -> list[tuple[Any, ...]]:
        if self.emit_mode == "complete":
            if all(self.seen):
                rows = self._rows()
                for vals in self.seen:
                    vals.clear()
                return rows
            return []
        if self.emit_mode == "running":
            return self._rows()
        return []

    def on_value(self, value: tuple[int, Any]) -> Iterable[tuple[Any, ...]]:
        side, v = value
        mode = self.insert_mode
        if mode == "last":
            self.seen[side] = [v]
        elif mode == "first":
            if not self.seen[side]:
                self.seen[side] = [v]
        else:
            self.seen[side].append(v)
        return self._emit()

    def on_merge(self, original: _JoinWindowLogic) -> Iterable[tuple[Any, ...]]:
        mine, theirs = self.seen, original.seen
        mode = self.insert_mode
        # Which side wins a slot on merge matches Bytewax 0.21 exactly.
        if mode == "first":
            self.seen = [t if t else m for m, t in zip(mine, theirs, strict=True)]
        elif mode == "last":
            self.seen = [m if m else t for m, t in zip(mine, theirs, strict=True)]
        else:
            self.seen = [m + t for m, t in zip(mine, theirs, strict=True)]
        return self._emit()

    def on_close(self) -> Iterable[tuple[Any, ...]]:
        if self.emit_mode == "final":
            return self._rows()
        return ()

    def snapshot(self) -> list[list[Any]]:
        return copy.deepcopy(self.seen)


class _JoinBuilder:
    __slots__ = ("emit_mode", "insert_mode", "sides")

    def __init__(self, sides: int, insert_mode: str, emit_mode: str) -> None:
        self.sides = sides
        self.insert_mode = insert_mode
        self.emit_mode = emit_mode

    def __call__(self, resume_state: list[list[Any]] | None) -> _JoinWindowLogic:
        seen = [[] for _ in range(self.sides)] if resume_state is None else resume_state
        return _JoinWindowLogic(self.insert_mode, self.emit_mode, seen)


class _SideTs:
    """`join_window`'s ts_getter: the user's getter applied to a labelled ``(side, value)``."""

    __slots__ = ("getter",)

    def __init__(self, getter: Callable[[Any], datetime]) -> None:
        self.getter = getter

    def __call__(self, side_value: tuple[int, Any]) -> datetime:
        return self.getter(side_value[1])
