"""What goes over a connection of the cluster mesh: the handshake and the frames.

The handshake is JSON, one length-prefixed object per message, at most
``_MAX_HELLO_BYTES`` (`_send_json`, `_recv_json`): nothing a stranger
sends is unpickled. Each side's `Hello` says who it is and what it runs;
`Hello.mismatch` names what two sides disagree on. With a shared secret,
`_mac` proves it over the other side's nonce, and `_frame_keys` derives
the two directions' keys that `_Seal` uses to sign every later frame.

A frame after the handshake is a 4-byte big-endian length and a pickle
(`_send_frame`, `_recv_frame`), sealed when there is a secret and checked
before it is unpickled. `_net.Mesh` keeps the connections and threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

from headrace.errors import HeadraceRuntimeError

PROTOCOL_VERSION = 4
# The environment variable holding the shared cluster secret.
SECRET_ENV = "HEADRACE_CLUSTER_SECRET"
_MAGIC = "headrace-mesh"
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_TAG_BYTES = 32
_BYE = "bye"
_FAIL = "fail"
_MAX_FRAME_MSGS = 4096
# Handshake frames are small JSON objects (never pickles: nothing a
# stranger sends is unpickled); anything longer is not a peer (an HTTP
# request's "GET " reads as a 1.2 GB frame).
_MAX_HELLO_BYTES = 64 * 1024
# How long a connection may take to send its handshake, and a dialer to
# get the answer (each connection is greeted in a thread of its own).
_HANDSHAKE_TIMEOUT_S = 5.0


class ClusterError(HeadraceRuntimeError):
    """The cluster could not form or lost a member.

    >>> issubclass(ClusterError, RuntimeError)
    True
    """


@dataclass(frozen=True)
class Hello:
    """What each side tells the other when connecting."""

    version: int
    proc_id: int
    process_count: int
    workers_per_process: int
    flow_id: str
    fingerprint: str
    address: str
    # Decided by process 0 for the whole cluster (others send the defaults).
    execution_id: str = ""
    resume_epoch: int = 0
    key_groups: int = 0

    def describe(self) -> str:
        return (
            f"process {self.proc_id} ({self.address}): protocol v{self.version}, dataflow "
            f"{self.flow_id!r} fingerprint {self.fingerprint}, {self.process_count} processes x "
            f"{self.workers_per_process} workers"
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object.

        >>> Hello(2, 0, 2, 1, "f", "ab", "h:1").to_json()["fingerprint"]
        'ab'
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Hello:
        """Parse `to_json`'s output; raise `_NotAPeer` if a field is missing or mistyped.

        >>> h = Hello(2, 0, 2, 1, "f", "ab", "h:1"); Hello.from_json(h.to_json()) == h
        True
        """
        if not isinstance(obj, dict):
            raise _NotAPeer("its handshake holds no hello")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            want = int if f.type == "int" else str
            if f.name not in obj and f.default is not dataclasses.MISSING:
                continue  # what only process 0 says
            v = obj.get(f.name)
            if not isinstance(v, want) or isinstance(v, bool):
                raise _NotAPeer(f"its hello has no valid {f.name!r}")
            values[f.name] = v
        return cls(**values)

    def mismatch(self, other: Hello) -> str | None:
        if self.version != other.version:
            what = "protocol versions differ (upgrade every process to the same Headrace)"
        elif (self.flow_id, self.fingerprint) != (other.flow_id, other.fingerprint):
            what = "dataflows differ (deploy the same code and import string everywhere)"
        elif self.process_count != other.process_count:
            what = "process counts differ (pass the same address list everywhere)"
        elif self.workers_per_process != other.workers_per_process:
            what = "workers per process differ (pass the same -w everywhere)"
        else:
            return None
        return f"{what}: {self.describe()}; {other.describe()}"


def parse_address(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 as ``[::1]:port``).

    >>> parse_address("127.0.0.1:2101"), parse_address("[::1]:80")
    (('127.0.0.1', 2101), ('::1', 80))
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        msg = f"bad address {addr!r}: expected host:port"
        raise ValueError(msg)
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _Forged(Exception):
    """A frame whose seal does not check: not sent by the peer, or changed on the way."""


class _Seal:
    """One direction of a connection's frame authentication (with a cluster secret).

    Each frame carries HMAC-SHA256 over its number in this direction and
    its bytes, under a key only this connection's two ends can derive
    (`_frame_keys`). A frame is checked before it is unpickled, so bytes
    injected into an established connection, or a frame replayed, dropped
    or reordered, stop the cluster instead of running.

    >>> send, recv = _Seal(b"k" * 32), _Seal(b"k" * 32)
    >>> recv.open(send.seal(b"frame 0")) == b"frame 0"
    True
    >>> first = send.seal(b"frame 1"); _ = send.seal(b"frame 2")
    >>> recv.open(first) == b"frame 1"
    True
    >>> recv.open(first)  # replayed: frame 2 was due
    Traceback (most recent call last):
    ...
    headrace._engine._net_protocol._Forged: frame 2 failed authentication
    """

    __slots__ = ("key", "seq")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.seq = 0

    def _tag(self, data: bytes | memoryview) -> bytes:
        mac = hmac.new(self.key, _SEQ.pack(self.seq), hashlib.sha256)
        mac.update(data)
        self.seq += 1
        return mac.digest()

    def seal(self, data: bytes) -> bytes:
        """``data`` followed by its tag."""
        return data + self._tag(data)

    def open(self, body: bytes) -> memoryview:
        """The data of a sealed frame; raise `_Forged` if its tag does not check."""
        seq = self.seq
        view = memoryview(body)
        data, tag = view[:-_TAG_BYTES], view[-_TAG_BYTES:]
        if len(body) < _TAG_BYTES or not hmac.compare_digest(self._tag(data), tag):
            raise _Forged(f"frame {seq} failed authentication")
        return data


def _frame_keys(secret: bytes, accept_nonce: str, dial_nonce: str) -> tuple[bytes, bytes]:
    """The keys of a connection's two directions: (acceptor to dialer, dialer to acceptor).

    Bound to both ends' handshake nonces, so a frame of one connection (or
    direction) is worthless on any other.

    >>> a, b = _frame_keys(b"s", "n1", "n2")
    >>> a != b and (a, b) == _frame_keys(b"s", "n1", "n2") and a not in _frame_keys(b"s", "n1", "n3")
    True
    """
    base = f"{_MAGIC}|frames|{accept_nonce}|{dial_nonce}|"
    return (
        hmac.digest(secret, (base + "accept->dial").encode(), "sha256"),
        hmac.digest(secret, (base + "dial->accept").encode(), "sha256"),
    )


def _send_frame(sock: socket.socket, obj: Any, seal: _Seal | None = None) -> int:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if seal is not None:
        data = seal.seal(data)
    sock.sendall(_LEN.pack(len(data)) + data)
    return len(data) + 4


class _NotAPeer(Exception):
    """A connection's first bytes are not a Headrace handshake."""


def _send_json(sock: socket.socket, obj: dict[str, Any]) -> None:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_json(sock: socket.socket) -> dict[str, Any] | None:
    """One handshake frame: a JSON object of at most `_MAX_HELLO_BYTES`; None if closed first."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > _MAX_HELLO_BYTES:
        raise _NotAPeer(f"its first frame claims {n} bytes (first bytes {head!r})")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        raise _NotAPeer(f"its handshake is not JSON (first bytes {(head + body)[:16]!r})") from None
    if not isinstance(obj, dict):
        raise _NotAPeer("its handshake is not a JSON object")
    return obj


def _refuse(sock: socket.socket, why: str) -> None:
    """Tell the other side of a handshake why it is refused, if it still listens; close."""
    try:
        _send_json(sock, {"refused": why})
    except OSError:
        pass
    sock.close()


def _mac(secret: bytes, role: str, nonce: str, hello: Hello) -> str:
    """HMAC-SHA256 proving the sender holds ``secret``, bound to the other side's nonce.

    >>> h = Hello(2, 0, 2, 1, "f", "ab", "h:1")
    >>> _mac(b"s", "dial", "n1", h) == _mac(b"s", "dial", "n1", h) != _mac(b"s", "dial", "n2", h)
    True
    """
    msg = json.dumps([_MAGIC, role, nonce, hello.to_json()], sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, msg.encode(), hashlib.sha256).hexdigest()


def _secret_mismatch(has: str, lacks: str) -> str:
    """Say which side of a handshake has a cluster secret and which has none.

    >>> _secret_mismatch("process 0 at h:1", "process 1")[:60]
    'process 0 at h:1 has a cluster secret and process 1 has none'
    """
    return f"{has} has a cluster secret and {lacks} has none: set the same ${SECRET_ENV} on every process"


def _recv_frame(sock: socket.socket, seal: _Seal | None = None) -> tuple[Any, int] | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    body = _recv_exact(sock, n)
    if body is None:
        return None
    # Checked before anything is unpickled.
    data = body if seal is None else seal.open(body)
    return pickle.loads(data), n + 4


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
