"""Event de-duplication: an identical Kubernetes Event at most once per half hour.

Placed in the flow: `reconcile.plan` says which events to post; the handlers
post them through one `EventDeduper` per operator process, so a condition
that lasts (a missing Secret, a crash loop) is not reported every 2 seconds.
"""

from __future__ import annotations

__all__ = ["EVENT_DEDUP_SECONDS", "EventDeduper"]

EVENT_DEDUP_SECONDS = 30 * 60.0


class EventDeduper:
    """Lets an identical event through at most once per ``window`` seconds (per object).

    >>> d = EventDeduper()
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=0.0)
    True
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=60.0)
    False
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=1900.0)
    True
    """

    def __init__(self, window: float = EVENT_DEDUP_SECONDS) -> None:
        self.window = window
        self._last: dict[tuple[str, str, str, str], float] = {}

    def allow(self, obj: str, etype: str, reason: str, message: str, now: float) -> bool:
        """Whether to post this event now (and remember that it was posted)."""
        key = (obj, etype, reason, message)
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            return False
        self._last[key] = now
        if len(self._last) > 10000:
            self._last = {k: t for k, t in self._last.items() if now - t < self.window}
        return True

    def forget(self, obj: str) -> None:
        """Drop what was remembered about ``obj`` (it was deleted)."""
        self._last = {k: t for k, t in self._last.items() if k[0] != obj}
