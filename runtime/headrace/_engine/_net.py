"""The TCP mesh between the processes of a cluster.

One connection per process pair (process ``i`` dials every ``j < i`` and
accepts every ``j > i``). Frames are a 4-byte big-endian length followed by
a pickled list of ``(destination worker, message)`` pairs; a writer thread
per peer packs whatever is queued into one frame, so many small messages
cost one syscall. Flow control is end-to-end in the workers (credits, see
``_basics.INFLIGHT_LIMIT``); the sockets only carry bytes.

The handshake is JSON (nothing a stranger sends is unpickled): the
acceptor sends a challenge with a random nonce, the dialer its `Hello`, the
acceptor its own. With a shared secret (``$HEADRACE_CLUSTER_SECRET``) each
side adds an HMAC-SHA256 over the other side's nonce and its hello, and a
connection that can't prove the secret is turned away without stopping
anything. Then the hellos are compared: protocol version, dataflow
fingerprint, process count and workers per process; a mismatch stops both
sides with an error naming both. Process 0's hello also carries what it
decided for the whole cluster when it opened the recovery store: the
execution id, the epoch to resume from and the key-group count; every
other process takes them from there (`Mesh.leader`) instead of reading
the store on its own, so the processes of one cluster never disagree. Each accepted connection is greeted in a
thread of its own, so a client that is not a peer (dropped with a log line)
keeps no peer waiting.

A peer whose connection ends without a goodbye frame is reported as lost,
which stops this process within the time the kernel takes to notice
(immediately for a killed local process; TCP keepalive bounds it otherwise).

Frames after the handshake are pickles, as in Bytewax. With a secret each
frame is sealed (`_Seal`: HMAC-SHA256 over its sequence number and bytes,
under keys bound to the connection's two handshake nonces) and checked
before it is unpickled, so nobody on the network path can inject, replay
or change a frame. Without a secret, the network must be trusted.

The handshake's messages and the frames themselves are `_net_protocol`;
this module keeps the connections, their threads and the failure rules.
"""

from __future__ import annotations

import hmac
import logging
import pickle
import queue
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from headrace._engine._net_protocol import (
    _BYE,
    _FAIL,
    _HANDSHAKE_TIMEOUT_S,
    _MAGIC,
    _MAX_FRAME_MSGS,
    PROTOCOL_VERSION,
    SECRET_ENV,
    ClusterError,
    Hello,
    _Forged,
    _frame_keys,
    _keepalive,
    _mac,
    _NotAPeer,
    _recv_frame,
    _recv_json,
    _refuse,
    _Seal,
    _secret_mismatch,
    _send_frame,
    _send_json,
    parse_address,
)
from headrace._metrics import M

# The longest wait between two dials of a peer that is not listening yet.
_DIAL_RETRY_MAX_S = 0.2

log = logging.getLogger("headrace.net")


_BYTES_OUT = M["headrace_exchange_bytes_total"].labels("out")
_BYTES_IN = M["headrace_exchange_bytes_total"].labels("in")


class _Peer:
    def __init__(
        self,
        proc_id: int,
        address: str,
        sock: socket.socket,
        keys: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.proc_id = proc_id
        self.address = address
        self.sock = sock
        # With a cluster secret: (sending, receiving) keys of this connection.
        self.send_seal = None if keys is None else _Seal(keys[0])
        self.recv_seal = None if keys is None else _Seal(keys[1])
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.said_bye = False
        self.failed_with: str | None = None
        self.bytes_out = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.writer: threading.Thread | None = None
        self.reader: threading.Thread | None = None


class Mesh:
    """Connections from this process to every other process of the cluster."""

    def __init__(
        self,
        addresses: list[str],
        proc_id: int,
        hello: Hello,
        deliver: Callable[[int, Any], None],
        on_lost: Callable[[BaseException], None],
        bind_host: str | None = None,
        startup_timeout: float = 30.0,
        secret: bytes | None = None,
    ) -> None:
        if not 0 <= proc_id < len(addresses):
            msg = f"process id {proc_id} is not an index into the {len(addresses)} addresses"
            raise ValueError(msg)
        self.addresses = addresses
        self.proc_id = proc_id
        self.hello = hello
        self.deliver = deliver
        self.on_lost = on_lost
        self.bind_host = bind_host
        self.startup_timeout = startup_timeout
        # Shared by every process of the cluster: a connection that can't
        # prove it holds the secret is dropped before anything is unpickled.
        self.secret = secret or None
        # Why recent connections were turned away (for the startup timeout's error).
        self._refused: list[str] = []
        self.workers_per_process = hello.workers_per_process
        self.peers: dict[int, _Peer] = {}
        # Process 0's hello (what it decided for the cluster), once connected.
        self._leader: Hello | None = hello if proc_id == 0 else None
        self._closing = False
        # Handshakes of accepted connections run in threads (`_greet`); this
        # guards `peers` and `expected` there, and `_greeting_over` turns
        # away handshakes that finish after startup.
        self._greet_lock = threading.Lock()
        self._greeting_over = False
        # Written to when the acceptor must look again (the last peer was
        # greeted, or startup failed), so it notices at once, not on a poll.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # -- startup -------------------------------------------------------------

    def start(self) -> None:
        """Listen, dial lower ids, accept higher ids, handshake; raise on failure."""
        host, port = parse_address(self.addresses[self.proc_id])
        bind = self.bind_host if self.bind_host is not None else host
        listener = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((bind, port))
        except OSError as exc:
            msg = (
                f"process {self.proc_id} can't listen on {bind}:{port}: {exc}; is another "
                "process using the port, or is the address not this machine's?"
            )
            raise ClusterError(msg) from exc
        listener.listen(len(self.addresses))
        deadline = time.monotonic() + self.startup_timeout
        errors: list[BaseException] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        acceptor = threading.Thread(target=self._accept_all, args=(listener, deadline, errors), daemon=True)
        acceptor.start()
        try:
            for j in range(self.proc_id):
                self._dial(j, deadline)
        except BaseException as exc:
            # Dialing failed or was interrupted (SIGTERM raises SystemExit
            # here): an error in the list stops the acceptor at once instead
            # of letting it wait out the startup timeout; it goes first, as
            # the one to raise.
            errors.insert(0, exc)
            self._wake()
        finally:
            acceptor.join()
            listener.close()
            with self._greet_lock:
                self._greeting_over = True
            self._wake_r.close()
            self._wake_w.close()
        if errors:
            self._abort_peers()
            raise errors[0]
        for peer in self.peers.values():
            peer.writer = threading.Thread(
                target=self._write_loop,
                args=(peer,),
                daemon=True,
                name=f"headrace-net-w{peer.proc_id}",
            )
            peer.reader = threading.Thread(
                target=self._read_loop,
                args=(peer,),
                daemon=True,
                name=f"headrace-net-r{peer.proc_id}",
            )
            peer.writer.start()
            peer.reader.start()

    def _dial(self, j: int, deadline: float) -> None:
        addr = self.addresses[j]
        host, port = parse_address(addr)
        delay = 0.05
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                sock = socket.create_connection((host, port), timeout=5)
            except OSError as exc:  # refused, unresolvable yet, unreachable
                last = exc
                time.sleep(delay)
                # Retried often: a peer that starts listening is a transition's output gap.
                delay = min(delay * 2, _DIAL_RETRY_MAX_S)
                continue
            _keepalive(sock)
            try:
                other, keys = self._handshake_as_dialer(sock, j, addr)
            except BaseException:
                sock.close()
                raise
            if j == 0:
                self._leader = other
            sock.settimeout(None)
            self.peers[j] = _Peer(j, addr, sock, keys)
            return
        msg = (
            f"process {self.proc_id} could not reach process {j} at {addr} within "
            f"{self.startup_timeout:.0f}s ({last}); is it running, and is the address right?"
        )
        raise ClusterError(msg)

    def _handshake_as_dialer(
        self, sock: socket.socket, j: int, addr: str
    ) -> tuple[Hello, tuple[bytes, bytes] | None]:
        """Answer process ``j``'s challenge with our hello; check its reply.

        Returns its hello, and with a secret this end's (sending, receiving)
        frame keys.
        """
        where = f"process {j} at {addr}"
        try:
            sock.settimeout(_HANDSHAKE_TIMEOUT_S)
            challenge = _recv_json(sock)
            if challenge is None:
                raise ClusterError(f"{where} closed the connection during the handshake")
            if challenge.get("mesh") != _MAGIC:
                raise _NotAPeer("its first frame is not a Headrace challenge")
            theirs = challenge.get("version")
            if theirs != PROTOCOL_VERSION:
                raise ClusterError(
                    f"cluster mismatch: {where} speaks protocol v{theirs} and process "
                    f"{self.proc_id} v{PROTOCOL_VERSION} (upgrade every process to the same "
                    "Headrace)"
                )
            wants_secret = bool(challenge.get("secret"))
            me = f"process {self.proc_id}"
            lacking = None
            if wants_secret and self.secret is None:
                lacking = _secret_mismatch(where, me)
            elif self.secret is not None and not wants_secret:
                lacking = _secret_mismatch(me, where)
            if lacking is not None:
                # Tell the other side too, so that it need not wait out its timeout.
                _send_json(sock, {"refused": lacking})
                raise ClusterError(f"cluster mismatch: {lacking}")
            their_nonce = str(challenge.get("nonce"))
            nonce = secrets.token_hex(16)
            mac = None
            if self.secret is not None:
                mac = _mac(self.secret, "dial", their_nonce, self.hello)
            _send_json(sock, {"hello": self.hello.to_json(), "nonce": nonce, "mac": mac})
            reply = _recv_json(sock)
            if reply is None:
                raise ClusterError(f"{where} closed the connection during the handshake")
            if "refused" in reply:
                raise ClusterError(f"{where} refused this process: {reply['refused']}")
            other = Hello.from_json(reply.get("hello"))
            if self.secret is not None and not hmac.compare_digest(
                str(reply.get("mac")), _mac(self.secret, "accept", nonce, other)
            ):
                raise ClusterError(
                    f"{where} answered without proof that it holds the cluster secret "
                    f"(${SECRET_ENV} differs); give every process the same secret"
                )
        except (OSError, _NotAPeer) as exc:
            msg = (
                f"{where} accepted the connection but the handshake failed "
                f"({type(exc).__name__}: {exc}); is a Headrace process of this cluster, of "
                "the same version, listening there?"
            )
            raise ClusterError(msg) from exc
        problem = self.hello.mismatch(other)
        if problem is not None:
            raise ClusterError(f"cluster mismatch: {problem}")
        if self.secret is None:
            return other, None
        to_dialer, to_acceptor = _frame_keys(self.secret, their_nonce, nonce)
        return other, (to_acceptor, to_dialer)

    def _wake(self) -> None:
        """Make the acceptor look again now (a peer was greeted, or startup failed)."""
        w = self._wake_w
        if w is None:
            return
        try:
            w.send(b"!")
        except OSError:
            pass  # startup is over (closed), or a wake-up is already pending (full)

    def _fail_startup(self, errors: list[BaseException], exc: BaseException) -> None:
        errors.append(exc)
        self._wake()

    def _accept_all(self, listener: socket.socket, deadline: float, errors: list[BaseException]) -> None:
        """Accept connections until every higher id has shaken hands (or an error).

        Each connection is greeted in a thread of its own (`_greet`), so a
        client that is slow to speak, or is not a peer at all, keeps no
        peer waiting. A greeting that completes the set, or an error, wakes
        this loop through `_wake`, so the process starts as soon as its
        last peer is in.
        """
        expected = set(range(self.proc_id + 1, len(self.addresses)))
        wake = self._wake_r
        assert wake is not None
        listener.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(wake, selectors.EVENT_READ)
            self._accept_loop(listener, wake, sel, deadline, expected, errors)

    def _accept_loop(
        self,
        listener: socket.socket,
        wake: socket.socket,
        sel: selectors.BaseSelector,
        deadline: float,
        expected: set[int],
        errors: list[BaseException],
    ) -> None:
        while not errors:
            with self._greet_lock:
                if not expected:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._greet_lock:
                    missing = ", ".join(f"process {j} ({self.addresses[j]})" for j in sorted(expected))
                hint = "are they running with the same address list?"
                if self._refused:
                    hint = (
                        f"turned away: {'; '.join(self._refused[-3:])}; does every process "
                        f"have the same ${SECRET_ENV}?"
                    )
                errors.append(
                    ClusterError(
                        f"process {self.proc_id} got no connection from {missing} within "
                        f"{self.startup_timeout:.0f}s; {hint}"
                    )
                )
                return
            ready = {key.fileobj for key, _ in sel.select(remaining)}
            if wake in ready:
                try:
                    while wake.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            if listener not in ready:
                continue
            try:
                sock, client = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # the connection went away before we took it
            except OSError as exc:
                errors.append(ClusterError(f"accept failed on process {self.proc_id}: {exc}"))
                return
            threading.Thread(
                target=self._greet,
                args=(sock, client, expected, errors),
                daemon=True,
                name="headrace-net-greet",
            ).start()

    def _greet(
        self, sock: socket.socket, client: Any, expected: set[int], errors: list[BaseException]
    ) -> None:
        """Read one connection's handshake; answer and keep it if it is an expected peer."""
        who = f"{client[0]}:{client[1]}" if isinstance(client, tuple) else str(client)
        nonce = secrets.token_hex(16)
        try:
            sock.settimeout(_HANDSHAKE_TIMEOUT_S)
            _send_json(
                sock,
                {
                    "mesh": _MAGIC,
                    "version": PROTOCOL_VERSION,
                    "nonce": nonce,
                    "secret": self.secret is not None,
                },
            )
            frame = _recv_json(sock)
            if frame is None:
                # Connecting and closing at once is what port checks do.
                self._drop(sock, who, "it closed without a handshake", logging.INFO)
                return
            if "refused" in frame and "hello" not in frame:
                self._refused_by(sock, who, str(frame["refused"]), errors)
                return
            other = Hello.from_json(frame.get("hello"))
        except (OSError, _NotAPeer) as exc:
            why = str(exc) if isinstance(exc, _NotAPeer) else f"{type(exc).__name__}: {exc}"
            self._drop(sock, who, why)
            return
        mac = frame.get("mac")
        if self.secret is not None and not (
            isinstance(mac, str) and hmac.compare_digest(mac, _mac(self.secret, "dial", nonce, other))
        ):
            # Not an error of the cluster's: whoever it is may not stop it.
            why = "it did not prove it holds the cluster secret"
            self._refused.append(f"{who} ({why})")
            _refuse(
                sock, f"wrong or missing cluster secret (${SECRET_ENV}); give every process the same secret"
            )
            self._drop(sock, who, why)
            return
        if self.secret is None and mac is not None:
            lacking = _secret_mismatch(
                f"process {other.proc_id} ({other.address})", f"process {self.proc_id}"
            )
            _refuse(sock, lacking)
            self._fail_startup(errors, ClusterError(f"cluster mismatch: {lacking}"))
            return
        with self._greet_lock:
            if self._greeting_over:
                sock.close()
                return
            problem = self.hello.mismatch(other)
            if problem is None and other.proc_id not in expected:
                problem = (
                    f"process id {other.proc_id} from {other.address} is unexpected here "
                    f"(already connected, or out of range); check every process's -i"
                )
            try:
                if problem is not None:
                    try:
                        _send_json(sock, {"refused": problem})
                    finally:
                        sock.close()
                    self._fail_startup(errors, ClusterError(f"cluster mismatch: {problem}"))
                    return
                proof = None
                their_nonce = str(frame.get("nonce"))
                if self.secret is not None:
                    proof = _mac(self.secret, "accept", their_nonce, self.hello)
                _send_json(sock, {"hello": self.hello.to_json(), "mac": proof})
            except OSError as exc:
                sock.close()
                log.warning("process %d lost %s during its handshake: %s", self.proc_id, who, exc)
                return
            _keepalive(sock)
            sock.settimeout(None)
            keys = None
            if self.secret is not None:
                keys = _frame_keys(self.secret, nonce, their_nonce)
            self.peers[other.proc_id] = _Peer(other.proc_id, self.addresses[other.proc_id], sock, keys)
            expected.discard(other.proc_id)
            if not expected:
                self._wake()

    def _refused_by(self, sock: socket.socket, who: str, why: str, errors: list[BaseException]) -> None:
        """A dialer gave up on the handshake and said why."""
        sock.close()
        if self.secret is not None:
            # Unproven: whoever it is may not stop the cluster; the timeout says it.
            self._refused.append(f"{who} ({why})")
            log.warning("process %d: %s gave up its handshake: %s", self.proc_id, who, why)
        else:
            self._fail_startup(errors, ClusterError(f"cluster mismatch: {why}"))

    def _drop(self, sock: socket.socket, who: str, why: str, level: int = logging.WARNING) -> None:
        sock.close()
        log.log(
            level,
            "process %d dropped a connection from %s that is not a Headrace peer: %s",
            self.proc_id,
            who,
            why,
        )

    def _abort_peers(self) -> None:
        with self._greet_lock:
            self._greeting_over = True
        for peer in self.peers.values():
            try:
                peer.sock.close()
            except OSError:
                pass

    def leader(self) -> Hello:
        """Process 0's hello: the execution id, resume epoch and key groups it decided.

        >>> h = Hello(4, 0, 1, 1, "f", "x", "a", "e1", 17, 256)
        >>> Mesh(["127.0.0.1:1"], 0, h, print, print).leader().resume_epoch
        17
        """
        if self._leader is None:
            msg = f"process {self.proc_id} has not shaken hands with process 0"
            raise ClusterError(msg)
        return self._leader

    # -- running -------------------------------------------------------------

    def send(self, dst_worker: int, msg: Any) -> None:
        """Queue ``msg`` for worker ``dst_worker`` (in another process)."""
        self.peers[dst_worker // self.workers_per_process].out.put((dst_worker, msg))

    def _write_loop(self, peer: _Peer) -> None:
        out = peer.out
        sock = peer.sock
        seal = peer.send_seal
        try:
            while True:
                first = out.get()
                if first is _BYE or (isinstance(first, tuple) and first[0] == _FAIL):
                    _send_frame(sock, first, seal)
                    break
                batch = [first]
                stop_after: Any = None
                while len(batch) < _MAX_FRAME_MSGS:
                    try:
                        nxt = out.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _BYE or (isinstance(nxt, tuple) and nxt[0] == _FAIL):
                        stop_after = nxt
                        break
                    batch.append(nxt)
                n = _send_frame(sock, batch, seal)
                peer.bytes_out += n
                peer.frames_out += 1
                _BYTES_OUT.inc(n)
                if stop_after is not None:
                    _send_frame(sock, stop_after, seal)
                    break
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if not self._closing and not peer.said_bye:
                self._lost(peer, f"sending to it failed: {exc}")

    def _read_loop(self, peer: _Peer) -> None:
        deliver = self.deliver
        seal = peer.recv_seal
        try:
            while True:
                got = _recv_frame(peer.sock, seal)
                if got is None:
                    break
                frame, n = got
                peer.bytes_in += n
                _BYTES_IN.inc(n)
                if frame == _BYE:
                    peer.said_bye = True
                    continue
                if isinstance(frame, tuple) and frame and frame[0] == _FAIL:
                    peer.failed_with = str(frame[1])
                    continue
                for dst, msg in frame:
                    deliver(dst, msg)
        except _Forged as exc:
            # Whatever sent it, it is not the peer: nothing more is read.
            self._lost(
                peer,
                f"{exc} on its connection: the frame was not sent by it (changed "
                "or injected on the network?); nothing in it was run",
            )
            return
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            if not peer.said_bye:
                self._lost(peer, f"connection error: {exc}")
            return
        if not peer.said_bye:
            self._lost(peer, "connection closed without goodbye (crashed or killed?)")

    def _lost(self, peer: _Peer, why: str) -> None:
        if self._closing and peer.said_bye:
            return
        if peer.failed_with is not None:
            msg = f"process {peer.proc_id} at {peer.address} failed: {peer.failed_with}"
        else:
            msg = f"lost process {peer.proc_id} at {peer.address}: {why}"
        self.on_lost(ClusterError(msg))

    # -- shutdown ------------------------------------------------------------

    def close(self, error: BaseException | None = None, linger: float = 5.0) -> None:
        """Say goodbye (or why we failed), flush, and wait for peers to finish."""
        self._closing = True
        farewell: Any = _BYE if error is None else (_FAIL, f"{type(error).__name__}: {error}")
        for peer in self.peers.values():
            peer.out.put(farewell)
        deadline = time.monotonic() + linger
        for peer in self.peers.values():
            if peer.writer is not None:
                peer.writer.join(max(0.0, deadline - time.monotonic()))
        for peer in self.peers.values():
            if peer.reader is not None:
                peer.reader.join(max(0.0, deadline - time.monotonic()))
            try:
                peer.sock.close()
            except OSError:
                pass

    def stats(self) -> dict[str, int]:
        """Bytes and frames exchanged so far.

        >>> m = Mesh(["127.0.0.1:1"], 0, Hello(1, 0, 1, 1, "f", "x", "a"), print, print)
        >>> m.stats()
        {'bytes_out': 0, 'bytes_in': 0, 'frames_out': 0}
        """
        return {
            "bytes_out": sum(p.bytes_out for p in self.peers.values()),
            "bytes_in": sum(p.bytes_in for p in self.peers.values()),
            "frames_out": sum(p.frames_out for p in self.peers.values()),
        }
