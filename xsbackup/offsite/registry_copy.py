"""The registry's copy in the repository, for ``offsite rebuild`` after losing the state root.

Every record (``clients/<SN>/client.json``: nickname, uuid, SSH keys, aliases, policy) and
the server's own identity (``Store.identity_files``: the embedded SSH server's host keys,
so devices that pinned them connect again without a host-key warning, and the HTTP admin
users with their password hashes) go into one JSON document, backed up with
``restic backup --stdin`` as ``registry.json`` under the host ``xsbackup-registry`` and
the tag ``registry``. restic encrypts it with the
repository's key, so it is as private as the snapshots. A copy is made at a replication run
when the registry changed since the last copy (its hash is kept in
``offsite/registry.sha256``); older copies are then forgotten, the newest kept.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field

import orjson

from xsbackup.clients.registry import Client
from xsbackup.context import Context
from xsbackup.logs import LOG
from xsbackup.offsite import state
from xsbackup.offsite.restic import Restic, Snapshot
from xsbackup.store import Store, atomic_write, fsync_dir

HOST = "xsbackup-registry"
TAG = "registry"
FILENAME = "registry.json"


def _relative(store: Store, path: os.PathLike[str]) -> str:
    return os.path.relpath(path, store.root)


def identity(store: Store) -> dict[str, str]:
    """The identity files present, by path relative to the root, base64-encoded."""
    out: dict[str, str] = {}
    for path in store.identity_files():
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        out[_relative(store, path)] = base64.b64encode(data).decode()
    return out


def document(ctx: Context) -> bytes:
    """Every record and the server's identity files, as one JSON document."""
    records = {c.serial: orjson.loads(c.to_json()) for c in ctx.registry.all()}
    return orjson.dumps({"version": 2, "clients": records, "files": identity(ctx.store)},
                        option=orjson.OPT_SORT_KEYS)


def copies(listing: list[Snapshot]) -> list[Snapshot]:
    return [s for s in listing if s.host == HOST and TAG in s.tags]


def replicate(ctx: Context, restic: Restic) -> bool:
    """Back the registry up when it changed since the last copy; True when it did. Older
    copies are then forgotten (``--keep-last 1`` of the registry's host and tag)."""
    data = document(ctx)
    digest = hashlib.sha256(data).hexdigest()
    mark = state.offsite_dir(ctx.store) / "registry.sha256"
    try:
        previous = mark.read_text().strip()
    except FileNotFoundError:
        previous = ""
    if previous == digest:
        return False
    restic.feed(["backup", "--stdin", "--stdin-filename", FILENAME, "--host", HOST,
                 "--tag", TAG, "--quiet"], data, why="copy the registry off-site")
    atomic_write(mark, digest.encode() + b"\n", mode=0o640)
    if previous:
        restic.run(["forget", "--host", HOST, "--tag", TAG, "--keep-last", "1"],
                   why="forget older registry copies")
    LOG.info("registry copied off-site (%d clients)", data.count(b'"serial"'))
    return True


@dataclass
class CopyRestored:
    """What ``restore`` recreated: client serials, identity files (relative paths), and
    identity files the store already had with other content (kept; named for the admin)."""
    clients: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)


def restore_identity(store: Store, files: dict[str, str]) -> tuple[list[str], list[str]]:
    """Write the copy's identity files the store lacks (mode 0600, in 0700 directories);
    never overwrite one. Only the names ``Store.identity_files`` lists are accepted.
    Returns (written, present with other content)."""
    allowed = {_relative(store, p): p for p in store.identity_files()}
    written: list[str] = []
    differing: list[str] = []
    for rel, encoded in sorted(files.items()):
        path = allowed.get(rel)
        if path is None:
            LOG.warning("registry copy: ignored unexpected file %r", rel)
            continue
        data = base64.b64decode(encoded, validate=True)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            if path.read_bytes() != data:
                differing.append(rel)
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(path.parent)
        written.append(rel)
    return written, differing


def restore(ctx: Context, restic: Restic, listing: list[Snapshot]) -> CopyRestored:
    """Recreate the records and identity files the newest copy holds and the store lacks."""
    found = copies(listing)
    if not found:
        return CopyRestored()
    out = restic.run(["dump", found[-1].id, f"/{FILENAME}"],
                     why="read the registry copy").stdout
    doc = orjson.loads(out)
    records = doc.get("clients", {})
    files, differing = restore_identity(ctx.store, doc.get("files", {}))
    for rel in differing:
        LOG.warning("registry copy: kept the present %s, which differs from the off-site "
                    "copy", rel)
    added: list[str] = []
    with ctx.registry.locked() as txn:
        for serial, raw in sorted(records.items()):
            if txn.get(serial) is None:
                txn.save(Client.from_json(orjson.dumps(raw)))
                added.append(serial)
        txn.rebuild()
    LOG.info("registry restored from its off-site copy: %d clients, %d identity files",
             len(added), len(files))
    return CopyRestored(added, files, differing)
