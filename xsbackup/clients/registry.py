"""The client registry: ``clients/<SN>/client.json`` records and their SSH keys.

A record is JSON (written atomically) with the serial, nickname, uuid, keys (see
``keys.py``), aliases, a disabled flag and policy overrides.

A key (type and blob) belongs to at most one client. OpenSSH uses the first
``authorized_keys`` line that matches a key, so a second client holding a victim's key
would silently receive the victim's backups and serve it restores. Every write goes
through a ``Transaction`` (``Registry.locked()``, under ``locks/registry.lock``), which
refuses to save a record with a key another client holds (``KeyInUse``).

Beside the records, under the same lock:

``ssh/keys.json``
    The key index: every client's active keys and disabled flag. Saving a record whose
    keys or flag changed updates its entry, so finding a key's owner and rendering
    ``authorized_keys`` read this one file instead of every record. ``xsbackup keys``
    and the service's start and SIGHUP rebuild it from the records (which also repairs
    it after a crash between a record's write and the index's).
``ssh/authorized_keys``
    Rendered from the index after every change; never edited by hand. A key that two
    records hold anyway (a state root from before this rule, a record edited by hand)
    authenticates neither: it is left out, and the rebuild reports it.
``ssh/restore-keys.json``
    The live one-time restore keys (``keys.RestoreKey``: public halves only), rendered
    into ``authorized_keys`` with their ``expiry-time``. Every publish sweeps the expired
    ones; ``restore.pullkey`` adds, takes and drops them.
``clients/registrations.json``
    Registrations waiting for the admin (``Request``: they change nothing until approved)
    and the recent new serials the rate limits count; ``registration.py`` has the rules.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xsbackup.clients.keys import (
    ClientKey,
    KeyEntry,
    RestoreKey,
    authorized_keys_text,
    parse_key,
    xsbackup_executable,
)
from xsbackup.errors import ClientExists, ClientNotFound, InvalidName, KeyInUse, StateRootError
from xsbackup.layout import CLIENT_RECORD
from xsbackup.locking import FileLock
from xsbackup.logs import LOG
from xsbackup.records import field, fields_of, record
from xsbackup.store import Store, atomic_write, check_client, iter_clients

__all__ = ["Client", "ClientKey", "Registrations", "Registry", "Request", "Transaction",
           "parse_key", "write_authorized_keys", "xsbackup_executable"]


@record
class Client:
    serial: str
    nickname: str = ""
    uuid: str = ""
    keys: list[ClientKey] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    disabled: bool = False
    policy: dict[str, Any] = field(default_factory=dict)
    system_user: bool = False
    created: str = ""

    def to_json(self) -> bytes:
        from dataclasses import asdict  # here: only writing a record needs these

        import orjson

        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> Client:
        raw = json.loads(data)
        raw["keys"] = [ClientKey(**k) for k in raw.get("keys", [])]
        known = {f.name for f in fields_of(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def active_keys(self) -> list[ClientKey]:
        return [k for k in self.keys if k.status == "active"]

    def key_entry(self) -> KeyEntry:
        return KeyEntry(self.disabled, tuple((k.type, k.blob) for k in self.active_keys()))


@record
class Request:
    """A registration waiting for the admin: the key (status ``pending``; ``added`` is
    when it was asked), where it came from, and the nickname and uuid it asked for."""

    serial: str
    key: ClientKey
    remote: str = ""
    nickname: str = ""
    uuid: str = ""


@record
class Registrations:
    """``clients/registrations.json``: the waiting requests, oldest first, and the time
    and source address of each new serial registered recently (for the rate limits)."""

    pending: list[Request] = field(default_factory=list)
    recent: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> bytes:
        from dataclasses import asdict

        import orjson

        return orjson.dumps({"pending": [asdict(r) for r in self.pending],
                             "recent": self.recent}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Registrations:
        raw = json.loads(data)
        pending = [Request(**{**r, "key": ClientKey(**r["key"])}) for r in raw["pending"]]
        return cls(pending, [(str(t), str(a)) for t, a in raw["recent"]])


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _path(self, serial: str) -> Path:
        return self.store.client_dir(serial) / CLIENT_RECORD

    @property
    def index_path(self) -> Path:
        return self.store.ssh_dir / "keys.json"

    @property
    def restore_keys_path(self) -> Path:
        return self.store.ssh_dir / "restore-keys.json"

    @property
    def registrations_path(self) -> Path:
        return self.store.clients_dir / "registrations.json"

    def get(self, serial: str) -> Client:
        try:
            data = self._path(serial).read_bytes()
        except FileNotFoundError:
            raise ClientNotFound(f"unknown client {serial}") from None
        try:
            return Client.from_json(data)
        except (ValueError, TypeError) as e:
            raise StateRootError(f"corrupt registry record for {serial}: {e}") from None

    def exists(self, serial: str) -> bool:
        return self._path(serial).is_file()

    def has_data(self, serial: str) -> bool:
        """Whether ``serial`` has a directory: a record, or the history of a removed one."""
        return self.store.client_dir(serial).is_dir()

    def registrations(self) -> Registrations:
        """The waiting requests and recent new serials (written atomically: no lock to read)."""
        try:
            data = self.registrations_path.read_bytes()
        except FileNotFoundError:
            return Registrations()
        try:
            return Registrations.from_json(data)
        except (KeyError, TypeError, ValueError) as e:
            raise StateRootError(f"corrupt {self.registrations_path}: {e}") from None

    def _write(self, client: Client) -> None:
        directory = self.store.client_dir(client.serial)
        (directory / "volumes").mkdir(parents=True, exist_ok=True)
        (directory / "reports").mkdir(exist_ok=True)
        atomic_write(self._path(client.serial), client.to_json())

    @contextlib.contextmanager
    def locked(self, executable: str | None = None) -> Iterator[Transaction]:
        """Hold the registry lock (``locks/registry.lock``) and yield the ``Transaction``
        that reads and writes under it. Not re-entrant: call ``update`` only outside it.
        ``executable``: the xsbackup path for forced commands (default: this one's)."""
        with FileLock(self.store.locks_dir / "registry.lock").acquire(wait=True):
            txn = Transaction(self, executable)
            yield txn
            txn.commit()

    def update(self, serial: str, change: Callable[[Client | None], Client | None]
               ) -> Client | None:
        """A read-modify-write of one record under the registry lock: read ``serial``'s
        record (None when there is none), let ``change`` edit it, and save what it returns
        (nothing when it returns None) with ``Transaction.save``, which refuses another
        client's key and keeps the key index and ``authorized_keys`` in step. Concurrent
        updates from the CLI, registration and the API are serialised, so none is lost."""
        check_client(serial)
        with self.locked() as txn:
            result = change(txn.get(serial))
            if result is not None:
                txn.save(result)
            return result

    def modify(self, serial: str, change: Callable[[Client], object]) -> Client:
        """``update`` for an existing client (``ClientNotFound`` otherwise)."""

        saved: list[Client] = []

        def edit(client: Client | None) -> Client:
            if client is None:
                raise ClientNotFound(f"unknown client {serial}")
            change(client)
            saved.append(client)
            return client

        self.update(serial, edit)
        return saved[0]

    def all(self) -> list[Client]:
        return [self.get(sn) for sn in iter_clients(self.store) if self.exists(sn)]

    def add(self, serial: str, key_text: str | None, nickname: str = "", uuid: str = "",
            now: dt.datetime | None = None) -> Client:
        """Register ``serial`` (the admin's way); ``KeyInUse`` if another client has the key."""
        stamp = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        key = None
        if key_text is not None:
            ktype, blob = parse_key(key_text)
            key = ClientKey(type=ktype, blob=blob, added=stamp)

        client = Client(serial=serial, nickname=nickname, uuid=uuid, created=stamp,
                        keys=[key] if key else [])

        def create(existing: Client | None) -> Client:
            if existing is not None:
                raise ClientExists(f"client {serial} already exists")
            return client

        self.update(serial, create)
        return client

    def remove(self, serial: str, purge: bool = False) -> None:
        """Remove ``serial``'s record and its keys from ``authorized_keys``, under the
        registry lock. With ``purge`` its directory moves into ``trash/`` whole, which the
        storage backend's ``purge`` then empties (only the backend knows how to delete
        what it made, read-only snapshots included)."""
        check_client(serial)
        directory = self.store.client_dir(serial)
        with self.locked() as txn:
            self.get(serial)
            if purge:
                trash = self.store.trash_dir / f"client-{serial}-{os.getpid()}"
                os.rename(directory, trash)
            else:
                # Keep the data; the record goes aside.
                os.rename(self._path(serial), directory / f"client.json.removed-{os.getpid()}")
            txn.forget(serial)

    def add_alias(self, serial: str, old: str) -> Client:
        """Let ``serial`` (a replacement device) read ``old``'s snapshots (never the
        reverse). Idempotent; both clients must exist."""
        check_client(old)
        if serial == old:
            raise InvalidName("a client cannot alias itself")
        self.get(old)

        def add(client: Client) -> None:
            if old not in client.aliases:
                client.aliases.append(old)

        return self.modify(serial, add)

    def remove_alias(self, serial: str, old: str) -> Client:
        """Take back ``serial``'s read access to ``old``'s snapshots (idempotent)."""

        def drop(client: Client) -> None:
            if old in client.aliases:
                client.aliases.remove(old)

        return self.modify(serial, drop)


class Transaction:
    """The registry while its lock is held: records, the key index, ``authorized_keys``
    and the registration requests, read and written consistently with each other."""

    def __init__(self, registry: Registry, executable: str | None) -> None:
        self.registry = registry
        self._executable = executable
        self._index: dict[str, KeyEntry] | None = None
        self._holders: dict[tuple[str, str], list[str]] | None = None  # from the index
        self._registrations: Registrations | None = None
        self._registrations_read = b""
        self._read: dict[str, KeyEntry | None] = {}
        self._restore: dict[str, RestoreKey] | None = None

    def get(self, serial: str) -> Client | None:
        try:
            client: Client | None = self.registry.get(serial)
        except ClientNotFound:
            client = None
        self._read[serial] = client.key_entry() if client else None
        return client

    def holders(self, key_type: str, blob: str) -> list[str]:
        """The clients holding this key among their active keys: one at most, unless the
        records come from before the rule (see the module doc)."""
        if self._holders is None:
            self._holders = {}
            for sn, entry in self.index().items():
                for key in entry.keys:
                    self._holders.setdefault(key, []).append(sn)
        return list(self._holders.get((key_type, blob), []))

    def save(self, client: Client) -> None:
        """Write ``client``'s record. A key it did not hold before must belong to no other
        client (``KeyInUse``); when its keys or disabled flag changed, its index entry and
        ``authorized_keys`` follow."""
        if client.serial not in self._read:
            self.get(client.serial)
        before, after = self._read[client.serial], client.key_entry()
        if after != before:
            for key in set(after.keys) - set(before.keys if before else ()):
                others = [sn for sn in self.holders(*key) if sn != client.serial]
                if others:
                    raise KeyInUse(f"this key already belongs to client {others[0]}")
        self.registry._write(client)
        self._read[client.serial] = after
        if after != before:
            self.index()[client.serial] = after
            self._publish()

    def forget(self, serial: str) -> None:
        """``serial``'s record is gone: drop its keys from the index and authorized_keys."""
        self._read[serial] = None
        if self.index().pop(serial, None) is not None:
            self._publish()

    def restore_keys(self) -> dict[str, RestoreKey]:
        """The restore keys on record (expired ones too, until the next publish)."""
        if self._restore is None:
            try:
                raw = json.loads(self.registry.restore_keys_path.read_bytes())
                self._restore = {k: RestoreKey(**v) for k, v in raw.items()}
            except FileNotFoundError:
                self._restore = {}
            except (AttributeError, TypeError, ValueError):
                LOG.warning("%s is unreadable: every restore key in it is dropped",
                            self.registry.restore_keys_path)
                self._restore = {}
        return self._restore

    def set_restore_keys(self, keys: dict[str, RestoreKey]) -> None:
        """Replace the restore keys (expired ones are swept) and publish them."""
        self._restore = dict(keys)
        self._publish()

    def registrations(self) -> Registrations:
        """The requests and recent new serials, to edit in place: ``commit`` saves them."""
        if self._registrations is None:
            self._registrations = self.registry.registrations()
            self._registrations_read = self._registrations.to_json()
        return self._registrations

    def commit(self) -> None:
        """At the end of a transaction that raised nothing: save the registrations if
        they changed (records, the index and authorized_keys are written as they go)."""
        if self._registrations is not None:
            data = self._registrations.to_json()
            if data != self._registrations_read:
                atomic_write(self.registry.registrations_path, data)

    def index(self) -> dict[str, KeyEntry]:
        if self._index is None:
            self._index = self._load_index()
        return self._index

    def _load_index(self) -> dict[str, KeyEntry]:
        path = self.registry.index_path
        try:
            raw = json.loads(path.read_bytes())
            return {sn: KeyEntry(bool(e["disabled"]), tuple((t, b) for t, b in e["keys"]))
                    for sn, e in raw.items()}
        except FileNotFoundError:
            LOG.debug("%s is missing: building it from the records", path)
        except (AttributeError, KeyError, TypeError, ValueError):
            LOG.warning("%s is unreadable: rebuilding it from the records", path)
        return {c.serial: c.key_entry() for c in self.registry.all()}

    def rebuild(self) -> list[tuple[str, list[str]]]:
        """Rebuild the key index from every record, then ``authorized_keys``; move keys
        that older versions kept pending inside a record to the requests. Returns each
        key that several clients hold, as (fingerprint, serials): it authenticates none."""
        index: dict[str, KeyEntry] = {}
        for client in self.registry.all():
            waiting = [k for k in client.keys if k.status != "active"]
            if waiting:
                self.registrations().pending += [Request(client.serial, k) for k in waiting]
                client.keys = client.active_keys()
                self.registry._write(client)
            index[client.serial] = client.key_entry()
        self._index = index
        shared = self._publish()
        for fp, serials in shared:
            LOG.error("key %s is registered to %s: it authenticates none of them until "
                      "the admin removes it from all but one", fp, ", ".join(serials))
        return shared

    def _publish(self) -> list[tuple[str, list[str]]]:
        """Write the (changed) index and render ``authorized_keys`` from it."""
        from dataclasses import asdict

        import orjson

        index = self.index()
        self._holders = None
        atomic_write(self.registry.index_path, orjson.dumps(
            {sn: {"disabled": e.disabled, "keys": e.keys} for sn, e in index.items()},
            option=orjson.OPT_SORT_KEYS))
        restore = {k: v for k, v in self.restore_keys().items() if v.live()}
        if restore or self.registry.restore_keys_path.exists():
            self._restore = restore
            atomic_write(self.registry.restore_keys_path, orjson.dumps(
                {k: asdict(v) for k, v in restore.items()}, option=orjson.OPT_SORT_KEYS),
                mode=0o600)
        text, shared = authorized_keys_text(index, self.registry.store.root,
                                            self._executable or xsbackup_executable(),
                                            restore.values())
        atomic_write(self.registry.store.ssh_dir / "authorized_keys", text.encode(),
                     mode=0o600)
        return shared


def write_authorized_keys(registry: Registry, executable: str | None = None) -> Path:
    """Rebuild the key index and ``<root>/ssh/authorized_keys`` from every record, under
    the registry lock (``Transaction.rebuild``); return the file's path."""
    with registry.locked(executable) as txn:
        txn.rebuild()
    return registry.store.ssh_dir / "authorized_keys"
