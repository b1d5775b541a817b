"""What a long-running process keeps in memory for the availability check
(``admission.availability``): the grants of ``admissions/`` and the clients' records.

The files stay the source of truth, for every process and across restarts; memory only
saves re-reading what has not changed:

* ``Grants``: each grant file's content (address, new), keyed by its name and checked
  against its inode and mtime, so a grant that another process made, renewed (a grant is
  always a new file renamed into place) or removed is read again. A grant then costs one
  ``stat`` per live grant instead of an open, read and parse of each; a repeat of a
  reservation costs one ``stat``, as before.
* ``Records``: whether a serial is known and enabled, checked against its record's inode,
  mtime and size (the registry writes a record atomically, as a new file): one ``stat``
  per request instead of a read and a parse.

``serve`` keeps one ``Memory`` for its HTTP server (``web.availability``); without one
(``Memory()`` per call) everything is read from the files, as a fresh process must.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading

from xsbackup.clients.registry import Registry
from xsbackup.errors import ClientDisabled, UnknownClient
from xsbackup.layout import CLIENT_RE, client_record
from xsbackup.records import record
from xsbackup.store import Store

Signature = tuple[int, int, int]  # (inode, mtime_ns, size)


@record(frozen=True)
class Grant:
    serial: str
    time: float
    address: str = ""         # the bounded source address ("" for none)
    new: bool = False         # the client had no snapshot when it was granted


def admissions_dir(store: Store) -> str:
    return os.path.join(store.root, "admissions")


def _signature(st: os.stat_result) -> Signature:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_grant(path: str) -> dict[str, object]:
    """What a grant file records (an empty or unreadable one, as older versions wrote,
    records nothing)."""
    facts: object = None
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            facts = json.loads(os.read(fd, 4096))
        finally:
            os.close(fd)
    return facts if isinstance(facts, dict) else {}


class Grants:
    """The grants of ``admissions/``, re-read only where a file changed."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Signature, Grant]] = {}

    def all(self, store: Store) -> dict[str, Grant]:
        """Every grant file, by serial, as it is on disk now."""
        base = admissions_dir(store)
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            names = []
        out: dict[str, Grant] = {}
        known: dict[str, tuple[Signature, Grant]] = {}
        for name in names:
            if not CLIENT_RE.fullmatch(name):
                continue  # a grant being written (``.SN.PID.tmp``)
            path = os.path.join(base, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            sig = _signature(st)
            hit = self._known.get(name)
            if hit is not None and hit[0] == sig:
                grant = hit[1]
            else:
                facts = _read_grant(path)
                grant = Grant(name, st.st_mtime, str(facts.get("address") or ""),
                              facts.get("new") is True)
            known[name] = (sig, grant)
            out[name] = grant
        self._known = known
        return out


class Records:
    """Known and enabled serials, by the signature of their registry record."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Signature, bool]] = {}
        self._lock = threading.Lock()

    def check(self, registry: Registry, serial: str) -> None:
        """``admission.check_client``'s answer (``UnknownClient``, ``ClientDisabled`` or
        nothing) for a serial matching ``CLIENT_RE``, from memory while its record is
        unchanged."""
        try:
            st = os.stat(client_record(registry.store.root, serial))
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise UnknownClient(f"unknown client {serial}")
        sig = _signature(st)
        with self._lock:
            hit = self._known.get(serial)
        if hit is not None and hit[0] == sig:
            disabled = hit[1]
        else:
            disabled = registry.get(serial).disabled
            with self._lock:
                self._known[serial] = (sig, disabled)
        if disabled:
            raise ClientDisabled(f"client {serial} is disabled")


class Memory:
    """One process's memory of grants and records (see the module's docstring)."""

    def __init__(self) -> None:
        self.grants = Grants()
        self.records = Records()
