"""The client registry: ``clients/<SN>/client.json`` records and their SSH keys.

A record is JSON (written atomically) with the serial, nickname, uuid, keys, aliases,
a disabled flag and policy overrides. Keys are kept as the OpenSSH type and base64 blob;
the type is always taken from the blob's own header, since OLPC registration sends the
blob without a type prefix. DSA keys are stored (old XOs have them) but flagged, because
modern OpenSSH and paramiko cannot authenticate them.

``authorized_keys`` is generated from the registry, never edited by hand.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import os
import shlex
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from xsbackup.errors import ClientExists, ClientNotFound, InvalidKey, InvalidName, StateRootError
from xsbackup.locking import FileLock
from xsbackup.store import Store, atomic_write, check_client, iter_clients

TRANSFER_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
STORED_ONLY_KEY_TYPES = frozenset({"ssh-dss"})


@dataclass
class ClientKey:
    type: str
    blob: str
    added: str
    status: str = "active"  # active | pending (waiting for admin approval)

    @property
    def supported(self) -> bool:
        return self.type in TRANSFER_KEY_TYPES

    def openssh(self) -> str:
        return f"{self.type} {self.blob}"


@dataclass
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
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> Client:
        raw = orjson.loads(data)
        raw["keys"] = [ClientKey(**k) for k in raw.get("keys", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def active_keys(self) -> list[ClientKey]:
        return [k for k in self.keys if k.status == "active"]


def parse_key(text: str) -> tuple[str, str]:
    """Parse ``type blob [comment]`` or a bare base64 blob; return (type, blob).

    The type comes from the blob itself (its first length-prefixed string); a stated
    type that disagrees with it is refused.
    """
    parts = text.strip().split()
    if not parts:
        raise InvalidKey("empty public key")
    if len(parts) == 1:
        stated, blob = None, parts[0]
    else:
        stated, blob = parts[0], parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
        (n,) = struct.unpack(">I", raw[:4])
        if n < 1 or n > 64 or len(raw) < 4 + n:
            raise ValueError("bad length")
        inner = raw[4 : 4 + n].decode("ascii")
    except (binascii.Error, struct.error, ValueError, UnicodeDecodeError):
        raise InvalidKey("public key is not a valid base64 SSH key blob") from None
    if inner not in TRANSFER_KEY_TYPES | STORED_ONLY_KEY_TYPES:
        raise InvalidKey(f"unsupported public key type {inner!r}")
    if stated is not None and stated != inner:
        raise InvalidKey(f"key says {stated!r} but its blob is {inner!r}")
    return inner, blob


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _path(self, serial: str) -> Path:
        return self.store.client_dir(serial) / "client.json"

    def get(self, serial: str) -> Client:
        try:
            data = self._path(serial).read_bytes()
        except FileNotFoundError:
            raise ClientNotFound(f"unknown client {serial}") from None
        try:
            return Client.from_json(data)
        except (orjson.JSONDecodeError, TypeError) as e:
            raise StateRootError(f"corrupt registry record for {serial}: {e}") from None

    def exists(self, serial: str) -> bool:
        return self._path(serial).is_file()

    def _save(self, client: Client) -> None:
        directory = self.store.client_dir(client.serial)
        (directory / "volumes").mkdir(parents=True, exist_ok=True)
        (directory / "reports").mkdir(exist_ok=True)
        atomic_write(self._path(client.serial), client.to_json())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry lock (``locks/registry.lock``) for a read-modify-write of
        several records. Not re-entrant: call ``update`` only outside it."""
        with FileLock(self.store.locks_dir / "registry.lock").acquire(wait=True):
            yield

    def update(self, serial: str, change: Callable[[Client | None], Client | None], *,
               rekey: bool = False) -> Client | None:
        """Every registry write goes through here: under the registry lock, read
        ``serial``'s record (None when there is none), let ``change`` edit it, and save
        what it returns (nothing when it returns None). Concurrent updates from the CLI,
        registration and the API are serialised, so none is lost. ``rekey``: also
        regenerate ``authorized_keys`` under the same lock when something was saved."""
        check_client(serial)
        with self.locked():
            current = self.get(serial) if self.exists(serial) else None
            result = change(current)
            if result is not None:
                self._save(result)
                if rekey:
                    _write_keys(self, xsbackup_executable())
            return result

    def modify(self, serial: str, change: Callable[[Client], object], *,
               rekey: bool = False) -> Client:
        """``update`` for an existing client (``ClientNotFound`` otherwise)."""

        saved: list[Client] = []

        def edit(client: Client | None) -> Client:
            if client is None:
                raise ClientNotFound(f"unknown client {serial}")
            change(client)
            saved.append(client)
            return client

        self.update(serial, edit, rekey=rekey)
        return saved[0]

    def all(self) -> list[Client]:
        return [self.get(sn) for sn in iter_clients(self.store) if self.exists(sn)]

    def add(self, serial: str, key_text: str | None, nickname: str = "", uuid: str = "",
            now: dt.datetime | None = None, *, rekey: bool = False) -> Client:
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

        self.update(serial, create, rekey=rekey)
        return client

    def remove(self, serial: str, purge: bool = False) -> None:
        """Remove ``serial``'s record (its data too with ``purge``) and its keys from
        ``authorized_keys``, under the registry lock."""
        check_client(serial)
        directory = self.store.client_dir(serial)
        with self.locked():
            self.get(serial)
            if purge:
                trash = self.store.trash_dir / f"client-{serial}-{os.getpid()}"
                os.rename(directory, trash)
            else:
                # Keep the data; the record goes aside.
                os.rename(self._path(serial), directory / f"client.json.removed-{os.getpid()}")
            _write_keys(self, xsbackup_executable())
        if purge:
            shutil.rmtree(trash)

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

    def find_by_key(self, key_type: str, blob: str) -> list[Client]:
        return [c for c in self.all()
                if any(k.type == key_type and k.blob == blob for k in c.active_keys())]


def xsbackup_executable() -> str:
    """Absolute path of the installed ``xsbackup`` script, for the forced command."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "xsbackup" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    sibling = Path(sys.executable).with_name("xsbackup")
    if sibling.is_file():
        return str(sibling)
    found = shutil.which("xsbackup")
    if found:
        return os.path.abspath(found)
    raise StateRootError("cannot find the installed xsbackup executable for the forced command")


def forced_command(executable: str, root: Path, serial: str) -> str:
    return shlex.join([executable, "--root", str(root), "ssh-command", "--client", serial])


def authorized_keys_text(registry: Registry, executable: str) -> str:
    root = registry.store.root
    for text in (str(root), executable):
        if any(c in text for c in '"\\\n'):
            raise StateRootError(f"path {text!r} cannot be used in authorized_keys")
    lines = ["# Generated by xsbackup keys from the client registry. Do not edit."]
    for client in registry.all():
        if client.disabled:
            continue
        for key in client.active_keys():
            if not key.supported:
                continue
            cmd = forced_command(executable, root, client.serial)
            lines.append(f'restrict,command="{cmd}" {key.openssh()} {client.serial}')
    return "\n".join(lines) + "\n"


def write_authorized_keys(registry: Registry, executable: str | None = None) -> Path:
    """Regenerate ``<root>/ssh/authorized_keys`` from the registry, under its lock."""
    with registry.locked():
        return _write_keys(registry, executable or xsbackup_executable())


def _write_keys(registry: Registry, executable: str) -> Path:
    path = registry.store.ssh_dir / "authorized_keys"
    atomic_write(path, authorized_keys_text(registry, executable).encode(), mode=0o600)
    return path
