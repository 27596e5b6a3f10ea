"""The suite's shared fixtures, registered by ``tests/conftest.py`` (``pytest_plugins``).

Stateful helpers (servers, store locations) are handed out here as
fixtures; plain functions are imported from their `tests.support` modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace.recovery import init_db_dir
from tests.support.redis_cluster import own_redis_cluster, redis_cluster
from tests.support.servers import redis_server

__all__ = ["location", "own_redis_cluster", "redis_cluster", "redis_server"]


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh recovery location: a directory of 3 SQLite parts, then a real redis-server's URL.

    A test taking it runs twice, once on each store.
    """
    if request.param == "sqlite":
        init_db_dir(tmp_path / "state", 3)
        return str(tmp_path / "state")
    return str(request.getfixturevalue("redis_server").url)
