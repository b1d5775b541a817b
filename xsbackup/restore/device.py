"""Pushing snapshots onto devices with fabric: ``xsbackup restore push`` (plans: ``push``).

The server connects to each device as the device's administrator would (public-key
authentication; known-hosts policy ``strict``, ``accept-new`` or ``ignore``), and for each
volume:

1. checks the free space where it will land (``df -Pk``) against the snapshot's size
   (its bytes plus one 4 KiB block per item), so a full device fails before anything is
   written;
2. puts the data there by one of two methods (``--method``):

   * ``pull`` (the default, as ``auto``): the device runs ``rsync`` and pulls the
     snapshot from this server through the forced command, logging in with a one-time
     restore key made for that one download (``pullkey``, ``pull``);
   * ``tar``: the snapshot as a tar over the fabric channel into ``tar -x -p`` on the
     device. The tar is made by ``archive.tar_items`` through ``access``, like every
     restore path.

   Either way modes (setuid included), mtimes and symlinks come from the fake-super
   records; the owners too when the device user is root. ``auto`` sends a volume by tar
   when the device cannot pull (no rsync or ssh there, or it cannot reach or log in to
   this server), and says so in the summary's notes;
3. verifies the device's tree (``find -printf``) against the snapshot's manifest: type,
   size, mtime, permissions and symlink target of every item.

Both methods are measured side by side in ``bench/restore.py`` (figures in
``bench/README.md``): the pull was the faster, so it is the default.

A classroom goes through fabric's ``ThreadingGroup``: every device has its thread, at
most ``parallel`` of them connected and transferring at once; one failing device never
stops the others, and each gets its outcome.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import threading
import time
from typing import IO, Any, cast

import paramiko
from fabric import Connection, ThreadingGroup  # type: ignore[import-untyped]
from fabric.exceptions import GroupException  # type: ignore[import-untyped]

from xsbackup import procs
from xsbackup.clients.registry import Registry
from xsbackup.errors import (
    DeviceFull,
    DeviceUnreachable,
    DeviceWriteFailed,
    InvalidName,
    PushFailed,
    XsbackupError,
)
from xsbackup.logs import LOG
from xsbackup.restore import pull, pullkey
from xsbackup.restore.archive import manifest
from xsbackup.restore.push import (
    AFTER,
    HOST_KEY_POLICIES,
    Options,
    Outcome,
    Piece,
    Progress,
    Target,
    mib,
    plan,
)
from xsbackup.store import Store

SEND_BUFFER = 1 << 20
F_SETPIPE_SZ = 1031  # Linux: a bigger pipe from the archiver, so reads come in big pieces
CONNECT_TIMEOUT = 20


class Device(Connection):  # type: ignore[misc]  # fabric ships no type hints
    """A fabric connection to one device that knows which client it restores."""

    def __init__(self, store: Store, serial: str, target: Target, opts: Options,
                 slots: threading.BoundedSemaphore, progress: Progress) -> None:
        kwargs: dict[str, Any] = {"look_for_keys": not opts.identity,
                                  "transport_factory": _Transport}
        if opts.identity:
            kwargs["key_filename"] = list(opts.identity)
        super().__init__(target.host, user=target.user, port=target.port,
                         connect_timeout=CONNECT_TIMEOUT, connect_kwargs=kwargs)
        self.store, self.serial, self.target, self.opts = store, serial, target, opts
        self.slots, self.progress = slots, progress
        _host_key_policy(self.client, opts)

    def restore(self) -> Outcome:
        """Plan, connect, check space, send and verify; every failure is the outcome."""
        out = Outcome(self.serial, str(self.target))
        start = time.monotonic()
        try:
            pieces = plan(self.store, self.serial, self.opts.volumes, self.opts.at,
                          self.opts.dest)
            with self.slots:
                self._connect()
                self._restore(pieces, out)
            out.ok = True
        except (XsbackupError, paramiko.SSHException, OSError, EOFError) as e:
            error = e if isinstance(e, XsbackupError) else DeviceUnreachable(
                f"{self.target}: the connection failed ({e or type(e).__name__})")
            out.error, out.code = error.message, error.exit_code
            LOG.warning("client=%s restore push to %s failed: %s", self.serial, self.target,
                        error.message)
        finally:
            out.seconds = time.monotonic() - start
            self.close()
        return out

    def _connect(self) -> None:
        try:
            self.open()
        except paramiko.BadHostKeyException:
            raise DeviceUnreachable(f"{self.target}: its host key does not match the known "
                                    "hosts (a reflashed device has a new one: "
                                    "--host-keys ignore, or remove the old line)") from None
        except paramiko.AuthenticationException as e:
            raise DeviceUnreachable(f"{self.target}: login refused ({e})") from None
        except (paramiko.SSHException, OSError) as e:
            raise DeviceUnreachable(f"{self.target}: cannot connect ({e})") from None
        if self.opts.host_keys == "accept-new" and self.opts.known_hosts is not None:
            self.client.save_host_keys(str(self.opts.known_hosts))

    def _restore(self, pieces: list[Piece], out: Outcome) -> None:
        home_text = self._exec('printf "%s\\n%s" "$HOME" "$(id -u)"')
        home, uid = home_text.decode("utf-8", "surrogateescape").rsplit("\n", 1)
        root = uid.strip() == "0"
        places = [p.dest if p.dest.startswith("/") else f"{home.rstrip('/')}/{p.dest}"
                  for p in pieces]
        self._check_space(pieces, places)
        for piece, place in zip(pieces, places, strict=True):
            start = time.monotonic()
            method = self._put(piece, place, root, out)
            sent = time.monotonic()
            self._verify(piece, place, root)
            out.files += piece.files
            out.bytes += piece.bytes
            out.volumes.append({"volume": piece.volume, "snapshot": piece.snapshot,
                                "dest": place, "method": method,
                                "transfer_s": round(sent - start, 2),
                                "verify_s": round(time.monotonic() - sent, 2)})
            if piece.volume in AFTER:
                out.notes.append(f"{self.target}: {AFTER[piece.volume]}")
            LOG.info("client=%s volume=%s snapshot=%s pushed to %s:%s by %s (%d items; "
                     "%.1f s, verified in %.1f s)", self.serial, piece.volume, piece.snapshot,
                     self.target, place, method, piece.files, sent - start,
                     time.monotonic() - sent)

    def _check_space(self, pieces: list[Piece], places: list[str]) -> None:
        script = "; ".join(
            f"p={shlex.quote(place)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
            "df -Pk -- \"$p\" | tail -n 1" for place in places)
        text = self._exec(script)
        rows = text.decode("utf-8", "replace").splitlines()
        needs: dict[str, int] = {}
        free: dict[str, int] = {}
        for piece, place, row in zip(pieces, places, rows, strict=True):
            cols = row.split()
            if len(cols) < 6 or not cols[3].isdigit():
                raise DeviceWriteFailed(f"{self.target}: cannot read free space at {place}")
            mount = " ".join(cols[5:])
            free[mount] = int(cols[3]) * 1024
            needs[mount] = needs.get(mount, 0) + piece.need
            if needs[mount] > free[mount]:
                raise DeviceFull(f"{self.target}: not enough space at {place}: "
                                 f"{mib(needs[mount])} needed, {mib(free[mount])} free")

    def _put(self, piece: Piece, place: str, root: bool, out: Outcome) -> str:
        """Put ``piece`` at ``place`` by the chosen method; the method used."""
        if self.opts.method == "tar" or self.opts.server is None:
            self._send(piece, place, root)
            return "tar"
        try:
            self._pull(piece, place, root, self.opts.server)
            return "pull"
        except pull.NoPull as e:
            if self.opts.method == "pull":
                raise DeviceUnreachable(f"{self.target}: cannot pull from this server: "
                                        f"{e}") from None
            LOG.warning("client=%s volume=%s %s cannot pull (%s): sending a tar instead",
                        self.serial, piece.volume, self.target, e)
            out.notes.append(f"{self.target}: {piece.volume} went by tar: the device "
                             f"could not pull ({e})")
        self._send(piece, place, root)
        return "tar"

    def _pull(self, piece: Piece, place: str, root: bool, server: pull.Server) -> None:
        """The device pulls ``piece`` with rsync and a one-time restore key."""
        host = server.host or self._local_address()
        with pullkey.issued(Registry(self.store), self.serial, piece.volume,
                            piece.snapshot) as key:
            chan = self._channel(pull.script(server, host, piece.volume, piece.snapshot,
                                             place, root))
            errors = _Drain(chan.makefile_stderr("rb"))
            try:
                chan.sendall(key.private)
                chan.shutdown_write()
                with chan.makefile("rb") as lines:
                    for line in lines:  # "%i %l" of each item
                        if line.startswith(b">f"):
                            self.progress(int(line.split()[-1]))
            finally:
                status = chan.recv_exit_status()
                chan.close()
        why = pull.failed(status, errors.result())
        if why is not None:
            raise DeviceWriteFailed(f"{self.target}: pulling {piece.volume} into {place} "
                                    f"failed: {why}")

    def _local_address(self) -> str:
        """This end of the connection to the device: the address it can reach us at."""
        transport = self.client.get_transport()
        if transport is None:
            raise DeviceUnreachable(f"{self.target}: the connection is closed")
        return str(transport.sock.getsockname()[0])

    def _send(self, piece: Piece, place: str, root: bool) -> None:
        """The snapshot as a tar into ``tar -x`` on the device. The tar is written by a
        child (``xsbackup restore archive``), so making it and encrypting it for the
        channel run on two cores."""
        owners = " --same-owner --numeric-owner" if root else ""
        q = shlex.quote(place)
        chan = self._channel(f"mkdir -p -- {q} && exec tar -x -p{owners} -f - -C {q}")
        archiver = procs.spawn(
            [*self.opts.archiver, "restore", "archive", self.serial, "--volume", piece.volume,
             "--at", piece.snapshot], why=f"the tar of {self.serial} for {self.target}",
            env=self.opts.archiver_env, stdout=procs.PIPE, stderr=procs.PIPE)
        stream = cast("IO[bytes]", archiver.stdout).fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream, F_SETPIPE_SZ, SEND_BUFFER)
        sent = True
        try:
            while chunk := os.read(stream, SEND_BUFFER):
                # A memoryview: sendall slices off each packet it sends, which copies
                # the rest of a bytes object every time, but not of a view.
                chan.sendall(memoryview(chunk))  # type: ignore[arg-type]
                self.progress(len(chunk))
        except (OSError, EOFError, paramiko.SSHException):
            sent = False  # the device stopped reading: its tar says why
        finally:
            if procs.wait(archiver, 0) is None:
                procs.stop(archiver)
            made = _drain(archiver.stderr)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.shutdown_write()
        status, err = chan.recv_exit_status(), _drain(chan.makefile_stderr("rb"))
        chan.close()
        if sent and archiver.returncode != 0:
            why = made.decode("utf-8", "replace").strip().splitlines()
            raise DeviceWriteFailed(f"{self.target}: the archive of {piece.volume}/"
                                    f"{piece.snapshot} failed: "
                                    f"{why[-1] if why else archiver.returncode}")
        if status != 0 or not sent:
            why = err.decode("utf-8", "replace").strip().splitlines()
            raise DeviceWriteFailed(f"{self.target}: writing {place} failed: "
                                    f"{why[-1] if why else f'exit status {status}'}")

    def _verify(self, piece: Piece, place: str, root: bool) -> None:
        """The device's tree against the snapshot's manifest, made here while the device
        lists its tree."""
        listing = self._start(f"find {shlex.quote(place)} -mindepth 1 "
                              "-printf '%y %m %s %T@ %P\\0%l\\0'")
        expected = list(manifest(self.store, self.serial, piece.volume, piece.snapshot))
        fields = self._finish(listing, "find").split(b"\0")
        found: dict[bytes, tuple[str, int, int, int, bytes]] = {}
        for head, target in zip(fields[0::2], fields[1::2], strict=False):
            kind, mode, size, mtime, path = head.split(b" ", 4)
            found[path] = (kind.decode(), int(mode, 8), int(size), int(float(mtime)), target)
        mask = 0o7777 if root else 0o5777  # setgid needs the group, which a user may lack
        bad: list[str] = []
        for entry in expected:
            got = found.get(os.fsencode(entry["path"]))
            why = _differs(entry, got, mask)
            if why:
                bad.append(f"{entry['path'][:80]!r}: {why}")
        if bad:
            raise DeviceWriteFailed(f"{self.target}: {place} does not match the snapshot "
                                    f"({len(bad)} differences; first {bad[0]})")

    def _channel(self, command: str) -> paramiko.Channel:
        transport = self.client.get_transport()
        if transport is None:
            raise DeviceUnreachable(f"{self.target}: the connection is closed")
        chan: paramiko.Channel = transport.open_session(timeout=CONNECT_TIMEOUT)
        chan.exec_command(command)
        return chan

    def _exec(self, command: str) -> bytes:
        """Run ``command`` on the device: its output; DeviceWriteFailed if it fails."""
        return self._finish(self._start(command), command.split(maxsplit=1)[0])

    def _start(self, command: str) -> paramiko.Channel:
        chan = self._channel(command)
        chan.shutdown_write()
        return chan

    def _finish(self, chan: paramiko.Channel, name: str) -> bytes:
        """The output of the command started on ``chan``; DeviceWriteFailed naming
        ``name`` if it failed."""
        stdout = _drain(chan.makefile("rb"))
        stderr = _drain(chan.makefile_stderr("rb"))
        status = chan.recv_exit_status()
        chan.close()
        if status != 0:
            why = stderr.decode("utf-8", "replace").strip().splitlines()
            raise DeviceWriteFailed(f"{self.target}: {name} failed: "
                                    f"{why[-1] if why else f'exit status {status}'}")
        return stdout


def _differs(entry: dict[str, Any], got: tuple[str, int, int, int, bytes] | None,
             mask: int) -> str:
    if entry["type"] == "special":
        return ""  # devices and fifos: a tar of a user cannot make them
    if got is None:
        return "missing"
    kind, mode, size, mtime, target = got
    want = {"dir": "d", "file": "f", "symlink": "l"}[entry["type"]]
    if kind != want:
        return f"a {kind!r} where the snapshot has a {entry['type']}"
    if kind == "l":
        return "" if target == os.fsencode(entry["target"]) else "another link target"
    if (mode & mask) != (entry["mode"] & mask):
        return f"mode {mode:o}, not {entry['mode']:o}"
    if kind == "f" and (size != entry["size"] or mtime != entry["mtime"]):
        return f"size/mtime {size}/{mtime}, not {entry['size']}/{entry['mtime']}"
    return ""


def _drain(stream: Any) -> bytes:
    with stream:
        return bytes(stream.read())


class _Drain(threading.Thread):
    """Reads a stream to its end in a thread (a command's stderr while its stdout is
    read), so neither can fill the channel's window and stall the other."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream, self.data = stream, b""
        self.start()

    def run(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.data = _drain(self.stream)

    def result(self) -> bytes:
        self.join()
        return self.data


class _Transport(paramiko.Transport):
    """paramiko's transport preferring AES-GCM (one pass per packet: measured 15-30%
    faster than its default AES-CTR with HMAC-SHA2 here); a device without it gets the
    default order."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
        *(c for c in paramiko.Transport._preferred_ciphers  # type: ignore[attr-defined]
          if "gcm" not in c))


class _Unchecked(paramiko.MissingHostKeyPolicy):
    """``--host-keys ignore``: any host key is taken (a line in the log, not a warning)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        LOG.info("restore push: %s's host key %s not checked (--host-keys ignore)",
                 hostname, key.fingerprint)


def _host_key_policy(client: paramiko.SSHClient, opts: Options) -> None:
    if opts.host_keys == "ignore":
        client.set_missing_host_key_policy(_Unchecked())
        return
    if opts.known_hosts is not None and opts.known_hosts.exists():
        client.load_host_keys(str(opts.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy() if opts.host_keys == "strict"
                                       else paramiko.AutoAddPolicy())




# ---- many devices ------------------------------------------------------------------------


def push(store: Store, devices: list[tuple[str, Target]], opts: Options,
         progress: Progress) -> list[Outcome]:
    """Restore each (serial, device) pair; at most ``opts.parallel`` transfer at once.
    One outcome per device, in the order given."""
    if opts.host_keys not in HOST_KEY_POLICIES:
        raise InvalidName(f"--host-keys must be one of {', '.join(HOST_KEY_POLICIES)}")
    slots = threading.BoundedSemaphore(max(1, opts.parallel))
    lock = threading.Lock()

    def counted(n: int) -> None:
        with lock:
            progress(n)

    conns = [Device(store, sn, target, opts, slots, counted) for sn, target in devices]
    group = ThreadingGroup.from_connections(conns)
    try:
        results = group._do("restore")  # fabric's per-connection call (public run/put
    except GroupException as e:         # take the same arguments for every device)
        results = e.result
    finally:  # interrupted: no restore key outlives the push
        pullkey.drop_mine(Registry(store))
    outcomes = []
    for conn in conns:
        got = results.get(conn)
        if isinstance(got, Outcome):
            outcomes.append(got)
        else:  # an unexpected exception in the device's thread
            LOG.error("client=%s restore push to %s failed: %r", conn.serial, conn.target, got)
            outcomes.append(Outcome(conn.serial, str(conn.target), error=f"failed: {got}",
                                    code=PushFailed.exit_code))
    return outcomes


