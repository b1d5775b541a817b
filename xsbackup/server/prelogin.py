"""Who may still try to log in to the embedded SSH server, and for how long.

Failed logins: an address with ``server.max_auth_failures`` of them in five minutes
(``Throttle``) is disconnected at once, until they age out.

The budget of unauthenticated connections (OpenSSH's ``MaxStartups``):

An unauthenticated connection costs a thread and a socket, and holds them until it logs in
or its ``server.login_grace_seconds`` run out. Authenticated sessions have their own budget
(``server.max_connections``), so no number of unauthenticated connections can take an
authenticated client's place.

``server.max_startups`` is ``start:rate:full`` as in sshd_config. Below ``start``
unauthenticated connections, a new one simply joins. From ``start`` on, each new one
makes room with a probability that rises linearly from ``rate``% to 100% at ``full``
(OpenSSH's random early drop), so there are never more than ``full``.

Where OpenSSH drops the *newcomer*, we drop the connection that has been silent the
longest. A client that is logging in sends something every round trip, while one that
connects and stops (an idle TCP connection, a banner and nothing more) goes quiet at
once; dropping the newcomer instead would let ``full`` silent connections lock every
client out for a whole grace period, which is the attack this budget exists to stop.
The cost per new connection is the same as below ``start``: one thread, and no
cryptography until the client itself sends its key exchange.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from xsbackup.units import Startups

FAILURE_WINDOW = 300.0


class HeardSocket(socket.socket):
    """A socket that remembers when it last received bytes; paramiko reads through it."""

    heard: float

    @classmethod
    def adopt(cls, conn: socket.socket) -> HeardSocket:
        sock = cls(conn.family, conn.type, conn.proto, fileno=conn.detach())
        sock.heard = time.monotonic()
        return sock

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if data:
            self.heard = time.monotonic()
        return data


class Pending:
    """One connection that has not logged in yet."""

    def __init__(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        self.sock = HeardSocket.adopt(conn)
        self.addr = addr
        self.accepted = time.monotonic()
        self.evicted = threading.Event()

    def silent_for(self, now: float) -> float:
        return now - self.sock.heard

    def evict(self) -> None:
        """End the connection from another thread: its transport sees end of file."""
        self.evicted.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class StartupBudget:
    """The unauthenticated connections, and which one to drop when there are too many."""

    def __init__(self, rand: Callable[[], float] | None = None) -> None:
        self._rand = rand or random.SystemRandom().random
        self._pending: set[Pending] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def admit(self, entry: Pending, limits: Startups) -> Pending | None:
        """Count ``entry`` in; return the connection to drop for it, if one must go."""
        with self._lock:
            victim = None
            if self._pending and self._must_drop(len(self._pending), limits):
                victim = min(self._pending, key=lambda p: p.sock.heard)
                self._pending.discard(victim)
            self._pending.add(entry)
        return victim

    def leave(self, entry: Pending) -> None:
        """``entry`` logged in or ended; idempotent."""
        with self._lock:
            self._pending.discard(entry)

    def evict_all(self) -> None:
        with self._lock:
            entries, self._pending = self._pending, set()
        for entry in entries:
            entry.evict()

    def _must_drop(self, n: int, limits: Startups) -> bool:
        if n < limits.start:
            return False
        if n >= limits.full:
            return True
        odds = limits.rate + (100 - limits.rate) * (n - limits.start) / (limits.full - limits.start)
        return self._rand() * 100 < odds


class Throttle:
    """Failed logins per source address in a sliding window."""

    def __init__(self, limit: int, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, addr: str, now: float) -> bool:
        with self._lock:
            q = self._fails.get(addr)
            if not q:
                return False
            while q and now - q[0] > self.window:
                q.popleft()
            return len(q) >= self.limit

    def fail(self, addr: str, now: float) -> None:
        with self._lock:
            self._fails[addr].append(now)
