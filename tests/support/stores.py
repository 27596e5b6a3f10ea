"""Open a recovery store at a test's ``location`` (see `tests.support.fixtures.location`)."""

from __future__ import annotations

from headrace._engine._store import Store, open_store


def store_at(location: str, prefix: str = "flow") -> Store:
    """The store of flow ``prefix`` at ``location``, retrying a connection for 2 s."""
    return open_store(location, prefix, retry_for=2.0)
