"""The embedded SSH server (paramiko): the same forced command, without a system sshd.

Threat model: anyone can connect. A connection may only ever run
``xsbackup ssh-command --client SN`` for the client that owns the key it proved, with
stdin, stdout and stderr bridged and the exit status returned.

* Public-key authentication only. Keys are looked up in the generated
  ``<root>/ssh/authorized_keys`` (re-read when it changes, so registration and approval
  take effect without a restart). The login name must be the key owner's serial, as
  ds-backup logs in, or the service name (``server.service_user``). A key of client A
  with login name B is refused.
* No shell, pty, sftp or other subsystem, port forwarding, agent or X11 forwarding, and
  no environment requests. A shell request runs the dispatcher with no command, so the
  client sees the same one-line refusal OpenSSH deployments give.
* Before login (``prelogin.py``): ``server.max_startups``, ``server.login_grace_seconds``
  (and again from login to the command), ``server.max_auth_failures``. After it, a
  connection takes one of ``server.max_connections`` and one of its client's
  ``admission.max_sessions_per_client``, or gets the one-line refusal.
* A NUL in a command is a one-line refusal (40), as the dispatcher's. paramiko's records
  go to our log at debug level only: a failed connection is one line of ours.
* The dispatcher runs as a child process in its own session (it is exactly the forced
  command of OpenSSH deployments); on shutdown its whole process group is signalled.
* Back-pressure: ``Channel.sendall`` blocks while the client's window is full, and the
  reader threads stop reading from the child meanwhile, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from xsbackup import procs
from xsbackup.clients.keys import RESTORE_OPTION, KeyIndex
from xsbackup.clients.registry import xsbackup_executable
from xsbackup.config import Settings
from xsbackup.errors import ListenError, NoSlot, Refused, RequestRefused, TooManySessions
from xsbackup.logs import LOG
from xsbackup.server.prelogin import Pending, StartupBudget, Throttle
from xsbackup.store import HOST_KEYS


def ensure_host_keys(ssh_dir: Path) -> list[paramiko.PKey]:
    """Load the host keys, generating Ed25519 and RSA (for old XO clients) if missing."""
    ssh_dir.mkdir(parents=True, exist_ok=True)
    keys: list[paramiko.PKey] = []
    for name in HOST_KEYS:
        path = ssh_dir / name
        if not path.exists():
            private: Any = (ed25519.Ed25519PrivateKey.generate() if "ed25519" in name
                            else rsa.generate_private_key(public_exponent=65537, key_size=3072))
            data = private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        cls: Any = paramiko.Ed25519Key if "ed25519" in name else paramiko.RSAKey
        keys.append(cls.from_private_key_file(str(path)))
    return keys


class _Session(paramiko.ServerInterface):
    def __init__(self, server: SshServer, addr: tuple[str, int], local: tuple[str, int]) -> None:
        self.server = server
        self.addr = addr
        self.local = local
        self.client: str | None = None
        self.restore_key: str | None = None  # logged in with this one-time restore key
        self.attempts = 0
        self.exec_event = threading.Event()
        self.command: str | None = None
        self.wants_exec = False

    # ---- authentication -----------------------------------------------------------
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        self.attempts += 1
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        owners = self.server.keys.lookup(key.get_name(), key.get_base64())
        if username in owners:
            self.client = username
            return AUTH_SUCCESSFUL
        service = self.server.settings().server.service_user
        if username == service and len(owners) == 1:
            self.client = next(iter(owners))
            return AUTH_SUCCESSFUL
        restore = self.server.keys.restore_key(key.get_name(), key.get_base64())
        if restore is not None and username in (restore.serial, service):
            self.client, self.restore_key = restore.serial, restore.restore_key
            return AUTH_SUCCESSFUL
        self.attempts += 1
        LOG.info("ssh login refused for user %r from %s (%s key %s)", username[:64],
                 self.addr[0], key.get_name(), "unknown" if not owners else
                 "of another client")
        return AUTH_FAILED

    # ---- channels: one session, exec (or shell, to be refused) only -------------------
    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.exec_event.is_set():
            return False
        self.command = command.decode("utf-8", errors="surrogateescape")
        self.wants_exec = True
        self.exec_event.set()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        if self.exec_event.is_set():
            return False
        self.command = None
        self.wants_exec = True
        self.exec_event.set()
        return True

    def check_channel_pty_request(self, *args: Any) -> bool:
        return False

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        LOG.info("client=%s subsystem %r refused", self.client, name[:40])
        return False

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes,
                                  value: bytes) -> bool:
        return False

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_channel_x11_request(self, *args: Any) -> bool:
        return False

    def check_port_forward_request(self, address: str, port: int) -> int:
        return False

    def check_channel_direct_tcpip_request(self, chanid: int, origin: Any,
                                           destination: Any) -> int:
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class SshServer:
    """Accepts connections on ``bind:port`` until ``close()``; ``wait_idle`` for shutdown."""

    def __init__(self, settings: Callable[[], Settings], bind: str, port: int) -> None:
        self.settings = settings
        s = settings()
        self.root = s.root
        self.host_keys = ensure_host_keys(s.root / "ssh")
        self.keys = KeyIndex(s.root / "ssh" / "authorized_keys")
        self.throttle = Throttle(s.server.max_auth_failures)
        try:
            self.sock = socket.create_server((bind, port), backlog=128, reuse_port=False)
        except (OSError, OverflowError) as e:
            raise listen_error("ssh", bind, port, e) from None
        self.port = int(self.sock.getsockname()[1])
        self.executable = xsbackup_executable()
        self.startups = StartupBudget()
        self._max_connections = s.server.max_connections
        self._slots = threading.BoundedSemaphore(self._max_connections)
        self._sessions: Counter[str] = Counter()  # logged-in connections per client
        _route_paramiko_logs()
        self._closing = threading.Event()
        self._procs: set[procs.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._active = 0

    # ---- accept loop ------------------------------------------------------------------
    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        while not self._closing.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    break
                raise
            if self.throttle.blocked(addr[0], time.monotonic()):
                LOG.warning("ssh connection from %s dropped: too many failed logins", addr[0])
                conn.close()
                continue
            entry = Pending(conn, addr)
            victim = self.startups.admit(entry, self.settings().server.startups)
            if victim is not None:
                LOG.info("ssh connection from %s dropped before login, silent for %.1fs: "
                         "%d unauthenticated connections (server.max_startups)",
                         victim.addr[0], victim.silent_for(time.monotonic()),
                         len(self.startups))
                victim.evict()
            threading.Thread(target=self._connection, args=(entry,), daemon=True,
                             name=f"ssh-{addr[0]}:{addr[1]}").start()

    def close(self) -> None:
        """Stop accepting new connections and drop those not logged in; running
        sessions go on."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.startups.evict_all()

    def active(self) -> int:
        with self._lock:
            return self._active

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.active()

    def terminate_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)

    # ---- one connection ----------------------------------------------------------------
    def _connection(self, entry: Pending) -> None:
        addr = entry.addr
        with self._lock:
            self._active += 1
        transport: paramiko.Transport | None = None
        session: _Session | None = None
        admitted: str | None = None  # the client whose places this connection holds
        try:
            grace = self.settings().server.login_grace_seconds
            entry.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(entry.sock)
            transport.banner_timeout = transport.handshake_timeout = grace
            transport.auth_timeout = grace
            transport.set_keepalive(30)
            for key in self.host_keys:
                transport.add_server_key(key)
            session = _Session(self, addr, entry.sock.getsockname())
            transport.start_server(event=threading.Event(), server=session)
            channel = _await_login(transport, entry, entry.accepted + grace)
            if channel is None:
                return
            self.startups.leave(entry)
            refusal = self._admit(session.client or "")
            admitted = session.client or "" if refusal is None else None
            if refusal is not None:
                LOG.warning("client=%s ssh session from %s refused: %s", session.client,
                            addr[0], refusal.message)
            if not _await_command(transport, session, time.monotonic() + grace):
                channel.close()
                return
            if refusal is None:
                self._run(channel, session)
            else:
                _refuse(channel, refusal)
            # Let the client close the connection after reading the exit status; closing
            # it first would reset the connection under a client that is still reading.
            deadline = time.monotonic() + 10
            while transport.is_active() and time.monotonic() < deadline:
                time.sleep(0.02)
        except Exception:  # a broken connection must never take the server down
            LOG.exception("ssh connection from %s failed", addr[0])
        finally:
            self.startups.leave(entry)
            if session is not None and transport is not None and \
                    not transport.is_authenticated() and session.attempts:
                self.throttle.fail(addr[0], time.monotonic())
            if transport is not None:
                transport.close()
            with contextlib.suppress(OSError):
                entry.sock.close()
            with self._lock:
                self._active -= 1
                if admitted is not None:
                    self._slots.release()
                    self._sessions[admitted] -= 1
                    if not self._sessions[admitted]:
                        del self._sessions[admitted]

    def _admit(self, client: str) -> Refused | None:
        """A logged-in connection's places: one of its client's own
        (``admission.max_sessions_per_client``, so one key cannot take every place) and
        one of ``server.max_connections``; the refusal when there is none."""
        per_client = self.settings().admission.max_sessions_per_client
        with self._lock:
            if self._sessions[client] >= per_client:
                return TooManySessions.of(client, per_client)
            if not self._slots.acquire(blocking=False):
                return NoSlot(f"server busy: all {self._max_connections} SSH sessions are "
                              "taken; try again later")
            self._sessions[client] += 1
        return None

    def _run(self, channel: paramiko.Channel, session: _Session) -> None:
        if session.client is None:  # paramiko only opens channels after authentication
            channel.close()
            return
        if session.command is not None and "\0" in session.command:
            error = RequestRefused("the command contains a NUL byte")
            LOG.warning("client=%s request refused from %s: %s", session.client,
                        session.addr[0], error.message)
            _refuse(channel, error)
            return
        s = self.settings()
        env = procs.environment({
            "SSH_CONNECTION": f"{session.addr[0]} {session.addr[1]} "
                              f"{session.local[0]} {session.local[1]}",
            **{k: v for k, v in os.environ.items() if k.startswith("XSBACKUP_")}})
        if s.config_file is not None:
            env["XSBACKUP_CONFIG"] = str(s.config_file)
        if session.command is not None:
            env["SSH_ORIGINAL_COMMAND"] = session.command
        argv = [self.executable, "--root", str(self.root), "ssh-command",
                "--client", session.client]
        if session.restore_key is not None:
            argv += [RESTORE_OPTION, session.restore_key]
        proc = procs.spawn(argv, why=f"the forced command for {session.client}", env=env,
                           stdin=procs.PIPE, stdout=procs.PIPE, stderr=procs.PIPE, bufsize=0,
                           new_session=True)
        with self._lock:
            self._procs.add(proc)
        try:
            pumps = [
                threading.Thread(target=_pump_in, args=(channel, proc), daemon=True),
                threading.Thread(target=_pump_out, args=(proc.stdout, channel.sendall),
                                 daemon=True),
                threading.Thread(target=_pump_out, args=(proc.stderr, channel.sendall_stderr),
                                 daemon=True),
            ]
            for t in pumps:
                t.start()
            rc = proc.wait()
            pumps[1].join()
            pumps[2].join()
            channel.send_exit_status(rc if rc >= 0 else 128 - rc)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.shutdown_write()
            channel.close()
        finally:
            with self._lock:
                self._procs.discard(proc)


def listen_error(which: str, bind: str, port: int, error: Exception) -> ListenError:
    """One line for a port we cannot listen on: in use, privileged, or a bad address."""
    code = getattr(error, "errno", None)
    why = os.strerror(code) if code else str(error)
    if code == errno.EACCES and port < 1024:
        why += "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
    return ListenError(f"cannot listen on {bind}:{port} ({which}): {why}")


def _await_login(transport: paramiko.Transport, entry: Pending,
                 deadline: float) -> paramiko.Channel | None:
    """The client's first channel, which paramiko opens only after a successful login;
    None if the connection ended, was dropped for room, or ran out of grace first."""
    while True:
        channel = transport.accept(timeout=1.0)  # wakes at once when the transport ends
        if channel is not None and transport.is_authenticated():
            return channel
        if entry.evicted.is_set():
            why = "dropped for room"
        elif not transport.is_active():
            why = str(transport.get_exception() or "closed by the client")
        elif time.monotonic() >= deadline:
            why = "no login within server.login_grace_seconds"
        else:
            continue
        LOG.info("ssh connection from %s ended before login: %s", entry.addr[0], why[:200])
        return None


def _await_command(transport: paramiko.Transport, session: _Session, deadline: float) -> bool:
    while not session.exec_event.wait(timeout=0.2):
        if not transport.is_active() or time.monotonic() > deadline:
            LOG.info("client=%s ssh connection from %s ended before its command",
                     session.client, session.addr[0])
            return False
    return True


def _refuse(channel: paramiko.Channel, error: Refused) -> None:
    """The one-line refusal and exit status the dispatcher would have given."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.sendall_stderr(f"xsbackup: {error.message}\n".encode())
        channel.send_exit_status(error.exit_code)
        channel.shutdown_write()
    channel.close()


def _route_paramiko_logs() -> None:
    """paramiko's records into our log, never stderr, and only when debugging: each
    connection that fails already leaves one line of ours with paramiko's reason."""
    plog = logging.getLogger("paramiko")
    for h in list(plog.handlers):
        plog.removeHandler(h)
    for h in LOG.handlers:
        if type(h) is not logging.StreamHandler:  # not serve's stderr, if it has one
            plog.addHandler(h)
    if not plog.handlers:
        plog.addHandler(logging.NullHandler())
    plog.propagate = False
    plog.setLevel(logging.DEBUG if LOG.isEnabledFor(logging.DEBUG) else logging.CRITICAL)


def _pump_in(channel: paramiko.Channel, proc: procs.Popen[bytes]) -> None:
    stdin = proc.stdin
    if stdin is None:
        return
    try:
        # The client went away or the child stopped reading: either ends the input.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                stdin.write(data)
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _pump_out(stream: Any, send: Callable[[bytes], None]) -> None:
    fd = stream.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            send(data)
    except (OSError, EOFError, paramiko.SSHException):
        # The client went away: drain the child so it sees EPIPE, not a full pipe.
        with contextlib.suppress(OSError):
            drained = False
            while not drained:
                drained = not os.read(fd, 65536)
    finally:
        with contextlib.suppress(OSError):
            stream.close()
