"""The registry's copy in the repository, for ``offsite rebuild`` after losing the state root.

Every record (``clients/<SN>/client.json``: nickname, uuid, SSH keys, aliases, policy) goes
into one JSON document, backed up with ``restic backup --stdin`` as ``registry.json`` under
the host ``xsbackup-registry`` and the tag ``registry``. restic encrypts it with the
repository's key, so it is as private as the snapshots. A copy is made at a replication run
when the registry changed since the last copy (its hash is kept in
``offsite/registry.sha256``); older copies are then forgotten, the newest kept.
"""

from __future__ import annotations

import hashlib

import orjson

from xsbackup.clients.registry import Client
from xsbackup.context import Context
from xsbackup.logs import LOG
from xsbackup.offsite import state
from xsbackup.offsite.restic import Restic, Snapshot
from xsbackup.store import atomic_write

HOST = "xsbackup-registry"
TAG = "registry"
FILENAME = "registry.json"


def document(ctx: Context) -> bytes:
    """Every record, as one JSON document."""
    records = {c.serial: orjson.loads(c.to_json()) for c in ctx.registry.all()}
    return orjson.dumps({"version": 1, "clients": records}, option=orjson.OPT_SORT_KEYS)


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


def restore(ctx: Context, restic: Restic, listing: list[Snapshot]) -> list[str]:
    """Recreate the records the newest copy holds and the store lacks; their serials."""
    found = copies(listing)
    if not found:
        return []
    out = restic.run(["dump", found[-1].id, f"/{FILENAME}"],
                     why="read the registry copy").stdout
    records = orjson.loads(out).get("clients", {})
    added: list[str] = []
    with ctx.registry.locked() as txn:
        for serial, raw in sorted(records.items()):
            if txn.get(serial) is None:
                txn.save(Client.from_json(orjson.dumps(raw)))
                added.append(serial)
        txn.rebuild()
    LOG.info("registry restored from its off-site copy: %d clients", len(added))
    return added
