"""Event de-duplication: by key (reason + what it is about), with a resend interval.

Placed in the flow: `reconcile.plan` says which events to post; the handlers
post them through one `EventDeduper` per operator process, so a condition
that lasts (a missing Secret, a crash loop, a recommendation) is not
reported every 2 seconds, and what happens again (a second upgrade, a new
crash, a changed recommendation) is.

- The completion of a transition and other one-off facts (`ALWAYS`) are
  always posted: each is a new occurrence.
- Other events are keyed by object, reason and subject (`subject`: the
  message, or for a ``ScalingReport`` the recommendation itself), and the
  same key is posted again only after its resend interval (`RESEND`, else
  `DEFAULT_RESEND`): a scaling report at most every 30 minutes unless the
  recommendation changes.
"""

from __future__ import annotations

__all__ = ["ALWAYS", "DEFAULT_RESEND", "EVENT_DEDUP_SECONDS", "RESEND", "EventDeduper", "subject"]

DEFAULT_RESEND = 10 * 60.0
"""Seconds before an event with the same key is posted again."""
EVENT_DEDUP_SECONDS = 30 * 60.0
"""The resend interval of scaling reports."""
RESEND = {"ScalingReport": EVENT_DEDUP_SECONDS}
ALWAYS = frozenset(
    {
        "Created",
        "Running",
        "Scaled",
        "Resumed",
        "Upgraded",
        "Restarted",
        "Suspended",
        "Finished",
        "StateDeleted",
        "SnapshotCompleted",
    }
)
"""Reasons posted every time: a transition's completion, a one-off fact."""


def subject(reason: str, message: str) -> str:
    """What an event is about, for its key: the message, or a scaling report's recommendation.

    >>> subject("ScalingReport", "scale-up 2 -> 3 (not applied: recommend mode): busy 97%")
    'scale-up 2 -> 3'
    >>> subject("WorkerCrashed", "pod wc-1 exited with code 1 (restart 3): boom")
    'pod wc-1 exited with code 1 (restart 3): boom'
    """
    if reason == "ScalingReport":
        return message.split(" (", 1)[0]
    return message


class EventDeduper:
    """Lets an event through unless the same key was posted within its resend interval.

    >>> d = EventDeduper()
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=0.0)
    True
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=60.0)
    False
    >>> d.allow("ns/df", "Warning", "ValidationError", "bad", now=601.0)
    True
    >>> d.allow("ns/df", "Normal", "Upgraded", "upgraded: all 2 pod(s) Ready in 5.0s", now=602.0)
    True
    """

    def __init__(self, window: float | None = None) -> None:
        self.window = window  # one interval for every reason (tests); None: RESEND/DEFAULT_RESEND
        self._last: dict[tuple[str, str, str, str], float] = {}

    def interval(self, reason: str) -> float:
        """The resend interval of ``reason`` (0: always posted).

        >>> EventDeduper().interval("ScalingReport"), EventDeduper().interval("Scaled")
        (1800.0, 0.0)
        """
        if reason in ALWAYS:
            return 0.0
        if self.window is not None:
            return self.window
        return RESEND.get(reason, DEFAULT_RESEND)

    def allow(self, obj: str, etype: str, reason: str, message: str, now: float) -> bool:
        """Whether to post this event now (and remember that it was posted)."""
        window = self.interval(reason)
        if window <= 0:
            return True
        key = (obj, etype, reason, subject(reason, message))
        last = self._last.get(key)
        if last is not None and now - last < window:
            return False
        self._last[key] = now
        if len(self._last) > 10000:
            self._last = {k: t for k, t in self._last.items() if now - t < EVENT_DEDUP_SECONDS}
        return True

    def forget(self, obj: str) -> None:
        """Drop what was remembered about ``obj`` (it was deleted)."""
        self._last = {k: t for k, t in self._last.items() if k[0] != obj}
