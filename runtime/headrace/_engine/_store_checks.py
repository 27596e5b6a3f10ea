"""Recovery settings and Redis errors in words: where state may live, and what to do.

`check_location` refuses a recovery location that is neither a Redis URL
nor a local path (a mistyped URL must not silently become a local SQLite
directory of that name). `auth_failed` and `redis_refusal` word the Redis
errors that retrying can't fix, naming the store and the fix; `RedisStore`
raises them as `RecoveryStoreError` at once instead of retrying.
"""

from __future__ import annotations

import re
from typing import Any

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)

ACCEPTED_LOCATIONS = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS), "
    "unix:///path/to/redis.sock[?db=DB], redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...][/0] "
    "(a Redis Cluster; rediss+cluster:// with TLS), or a local directory (a relative one whose first "
    "name has a ':' is written ./NAME)"
)


def check_location(location: str) -> str:
    """Return ``location`` if it is a Redis URL or a local path; else raise `ValueError`.

    A mistyped URL must not become a local directory of that name: a
    relative path whose first name holds a ``:`` (``redis:/h:6379/0``,
    ``127.0.0.1:6379``, ``localhost:6379``), a URL of another scheme
    (``http://...``) and a Redis scheme missing its colon (``redis//h``) are
    refused, with the accepted forms. Absolute paths and ``./`` paths are
    always accepted.

    >>> check_location("redis://:pw@localhost:6379/0"), check_location("./state:1")
    ('redis://:pw@localhost:6379/0', './state:1')
    >>> check_location("127.0.0.1:6379")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: recovery location '127.0.0.1:6379' looks like HOST:PORT...
    >>> check_location("redis:/127.0.0.1:6379/0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: recovery location 'redis:/127.0.0.1:6379/0' is not a URL Headrace knows...
    """
    if location.startswith(CLUSTER_SCHEMES):
        cluster_nodes(location)
        return location
    if location.startswith(REDIS_SCHEMES):
        return location
    if not location.strip():
        msg = f"the recovery location is empty; use {ACCEPTED_LOCATIONS}"
        raise ValueError(msg)
    first = location.split("/", 1)[0]
    if re.fullmatch(r"[^:\[\]]+:\d+", first) or re.fullmatch(r"\[[0-9a-fA-F:.]+\]:\d+", first):
        msg = (
            f"recovery location {location!r} looks like HOST:PORT, not a directory; for Redis "
            f"write redis://{first}/0 (redis://:PASSWORD@{first}/0 if it needs a password). "
            f"Accepted: {ACCEPTED_LOCATIONS}"
        )
        raise ValueError(msg)
    if ":" in first or re.match(r"(rediss?|unix)//", location, re.IGNORECASE):
        scheme = re.split(r"[:/]", location, maxsplit=1)[0].lower()
        hint = f"For Redis write {scheme}://HOST:PORT/DB. " if scheme in ("redis", "rediss") else ""
        msg = (
            f"recovery location {location!r} is not a URL Headrace knows, and is not taken for "
            f"a directory either. {hint}Accepted: {ACCEPTED_LOCATIONS}"
        )
        raise ValueError(msg)
    return location


def cluster_nodes(url: str) -> dict[str, Any]:
    """Parse a Redis Cluster URL into the seed nodes and settings of redis-py's ``RedisCluster``.

    ``redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...][/0]``
    (``rediss+cluster://`` for TLS): one or more nodes of the cluster (the
    client discovers the others), database 0 only (a Redis Cluster has no
    other), no query options. Anything else is a `ValueError` naming the
    form.

    >>> cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/0")["nodes"]
    [('10.0.0.1', 7000), ('10.0.0.2', 7001)]
    >>> cluster_nodes("redis+cluster://h:7000/1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Redis Cluster URL 'redis+cluster://h:7000/1': a Redis Cluster has database 0 only...
    """
    from urllib.parse import unquote

    scheme, _, rest = url.partition("://")
    form = (
        f"{scheme}://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...][/0], e.g. "
        f"{scheme}://redis-cluster.default.svc:6379/0"
    )
    safe = url if "@" not in rest else f"{scheme}://***@{rest.rpartition('@')[2]}"
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    creds, _, hosts = netloc.rpartition("@")
    if query:
        msg = f"Redis Cluster URL {safe!r}: no query options are accepted ({query!r}); write {form}"
        raise ValueError(msg)
    if path not in ("", "0"):
        msg = f"Redis Cluster URL {safe!r}: a Redis Cluster has database 0 only, not {path!r}; write {form}"
        raise ValueError(msg)
    nodes: list[tuple[str, int]] = []
    for node in hosts.split(","):
        m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]/]+):(\d{1,5})", node.strip())
        if m is None or not 0 < int(m.group(2)) < 65536:
            msg = f"Redis Cluster URL {safe!r}: {node!r} is not HOST:PORT (a port is required); write {form}"
            raise ValueError(msg)
        nodes.append((m.group(1).strip("[]"), int(m.group(2))))
    user, _, password = creds.partition(":") if creds else ("", "", "")
    return {
        "nodes": nodes,
        "username": unquote(user) or None,
        "password": unquote(password) or None,
        "ssl": scheme == "rediss+cluster",
    }


def reply(exc: BaseException) -> str:
    """What Redis said, without the command a pipeline wraps around it.

    >>> reply(RuntimeError("Command # 1 (HSET k v) of pipeline caused error: OOM no"))
    'OOM no'
    """
    return str(exc).rpartition(" of pipeline caused error: ")[2]


def auth_failed(description: str, what: str, exc: BaseException) -> str:
    """The message for credentials Redis refused (never retried: they stay wrong).

    >>> print(auth_failed("Redis at redis://:***@h:1/0", "reading meta", RuntimeError("WRONGPASS x")))
    ... # doctest: +NORMALIZE_WHITESPACE
    Redis at redis://:***@h:1/0 refused the credentials while reading meta: WRONGPASS x. Not
    retried (a wrong password stays wrong): check the user and password in the recovery URL,
    redis://USER:PASSWORD@HOST:PORT/DB (or redis://:PASSWORD@... for a server's requirepass),
    e.g. in the Secret that sets HEADRACE_RECOVERY
    """
    return (
        f"{description} refused the credentials while {what}: {reply(exc)}. Not retried (a "
        "wrong password stays wrong): check the user and password in the recovery URL, "
        "redis://USER:PASSWORD@HOST:PORT/DB (or redis://:PASSWORD@... for a server's "
        "requirepass), e.g. in the Secret that sets HEADRACE_RECOVERY"
    )


def redis_refusal(description: str, what: str, exc: BaseException) -> str | None:
    """Why Redis refused a command and what to do, for errors retrying won't fix; else ``None``.

    >>> import redis
    >>> oom = redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
    >>> print(redis_refusal("Redis at r (prefix 'f')", "committing epoch 3", oom))
    ... # doctest: +ELLIPSIS
    Redis at r (prefix 'f') refused a command while committing epoch 3: OOM command not allowed ...
    >>> redis_refusal("Redis at r", "x", ValueError("OOM")) is None
    True
    """
    try:
        import redis
    except ImportError:  # pragma: no cover - only RedisStore calls this
        return None
    if not isinstance(exc, redis.exceptions.ResponseError):
        return None
    text = reply(exc).rstrip(". ")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        hint = (
            "Redis is at its memory limit (maxmemory) and, with maxmemory-policy noeviction, "
            "refuses writes: give the recovery store room (raise maxmemory, e.g. `CONFIG SET "
            "maxmemory 4gb` and in redis.conf, or free what other data uses); keep "
            "maxmemory-policy noeviction, as an evicting policy silently deletes recovery state"
        )
    elif isinstance(exc, redis.exceptions.ReadOnlyError) or text.startswith("READONLY"):
        hint = "this Redis is a read-only replica: point the recovery URL at the primary"
    elif isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith("NOPERM"):
        hint = (
            "the Redis user of the recovery URL lacks a permission (ACL): let it read and write "
            "the recovery keys (`ACL SETUSER USER ~hr{* +@all`), or use another user"
        )
    elif text.startswith("MISCONF"):
        hint = (
            "Redis stopped accepting writes because it can't save to disk: fix its disk or its "
            "`dir`/`save` settings (see the Redis log)"
        )
    elif text.startswith("WRONGTYPE"):
        hint = (
            "a key under the recovery prefix holds another kind of data, so another program "
            "uses this prefix: choose another --recovery-prefix, or delete those keys"
        )
    else:
        return None
    return (
        f"{description} refused a command while {what}: {text}. {hint}. Nothing past the "
        "last committed epoch was committed; once that is fixed, restart the dataflow and it "
        "resumes from there"
    )


def refusal(description: str, what: str, exc: BaseException) -> str | None:
    """The message for a Redis error that retrying won't fix (credentials, a refused write).

    ``None`` for anything else: a connection error is retried; other
    errors propagate unchanged.

    >>> import redis
    >>> refusal("Redis at r", "reading meta", redis.AuthenticationError("WRONGPASS no"))[:46]
    'Redis at r refused the credentials while readi'
    >>> refusal("Redis at r", "reading meta", redis.ConnectionError("refused")) is None
    True
    """
    try:
        import redis
    except ImportError:  # pragma: no cover - only RedisStore calls this
        return None
    if isinstance(
        exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError)
    ):
        return auth_failed(description, what, exc)
    return redis_refusal(description, what, exc)
