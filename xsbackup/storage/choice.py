"""Which backend stores a state root: chosen once by ``xsbackup init``, recorded in the
root, and never switched by accident.

``init --backend auto`` picks btrfs when the root is on btrfs and the service account can
create, snapshot and delete subvolumes there; reflink when the filesystem clones a file
(``FICLONE``); hardlink otherwise. A root that already holds snapshots but has no record
(made before backends could be chosen) is hardlink. The record is the file
``storage-backend`` in the root; ``storage.backend`` in the configuration may say
``auto`` or the recorded name, and anything else is refused (``migrate`` converts a root).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from xsbackup.config import STORAGE_BACKENDS
from xsbackup.errors import BackendSwitchRefused, BackendUnavailable
from xsbackup.store import Store, atomic_write, iter_clients

RECORD = "storage-backend"
LEGACY = "hardlink"   # a root without a record
FICLONE = 0x40049409  # _IOW(0x94, 9, int)


def recorded(store: Store) -> str | None:
    """The backend recorded in the root, or None."""
    try:
        name = (store.root / RECORD).read_text().strip()
    except FileNotFoundError:
        return None
    return name if name in STORAGE_BACKENDS else None


def record(store: Store, name: str) -> None:
    atomic_write(store.root / RECORD, f"{name}\n".encode(), mode=0o640)


def effective(store: Store, configured: str) -> str:
    """The backend of ``store``, checked against ``storage.backend`` (``configured``)."""
    name = recorded(store) or LEGACY
    if configured not in ("auto", name):
        raise BackendSwitchRefused(
            f"storage.backend is {configured!r}, but {store.root} is stored by the {name} "
            f"backend; set it to 'auto' or {name!r}"
            + (" (xsbackup migrate --to btrfs converts a hardlink root)"
               if configured == "btrfs" and name == LEGACY else ""))
    return name


def has_snapshots(store: Store) -> bool:
    for client in iter_clients(store):
        for volume in store.volumes(client):
            if store.snapshot_ids(client, volume) or store.incoming_ids(client, volume):
                return True
    return False


def choose(store: Store, asked: str) -> str:
    """``init``'s choice for ``asked`` (auto or a name), recorded; refused when the root
    already holds snapshots of another backend or the backend cannot work there."""
    current = recorded(store) or (LEGACY if has_snapshots(store) else None)
    if asked == "auto":
        name = current or detect(store.root)
    else:
        if current is not None and current != asked:
            raise BackendSwitchRefused(
                f"{store.root} is stored by the {current} backend; it cannot become "
                f"{asked} by init" + (" (use: xsbackup migrate --to btrfs)"
                                      if asked == "btrfs" else ""))
        why = unusable(store.root, asked)
        if why:
            raise BackendUnavailable(f"the {asked} backend cannot work in {store.root}: {why}")
        name = asked
    if recorded(store) != name:
        record(store, name)
    return name


def detect(root: Path) -> str:
    """``auto``'s pick for ``root``."""
    for name in ("btrfs", "reflink"):
        if not unusable(root, name):
            return name
    return LEGACY


def unusable(root: Path, name: str) -> str:
    """Why ``name`` cannot store snapshots under ``root``; "" when it can."""
    if name == "btrfs":
        return _btrfs_unusable(root)
    if name == "reflink":
        return _reflink_unusable(root)
    return ""


def _btrfs_unusable(root: Path) -> str:
    from xsbackup.storage.btrfs import btrfs, on_btrfs

    if not on_btrfs(root):
        return "it is not on btrfs"
    probe = root / f".subvolume-probe-{os.urandom(4).hex()}"
    snap = probe.with_name(probe.name + "-ro")
    why = ""
    for args in (("create", str(probe)), ("snapshot", "-r", str(probe), str(snap))):
        res = btrfs("subvolume", *args, why="probe subvolume rights")
        if not res.ok:
            why = f"btrfs subvolume {args[0]}: {res.first_error_line()}"
            break
    for path in (snap, probe):
        if path.exists():
            res = btrfs("subvolume", "delete", str(path), why="probe subvolume rights")
            if not res.ok:
                why = why or f"btrfs subvolume delete: {res.first_error_line()}"
                with contextlib.suppress(OSError):
                    os.rmdir(path)  # an owner may remove an empty subvolume (Linux 4.18)
    return why


def _reflink_unusable(root: Path) -> str:
    src = root / f".reflink-probe-{os.urandom(4).hex()}"
    dst = src.with_name(src.name + "-clone")
    try:
        src.write_bytes(b"x" * 4096)
        with src.open("rb") as a, dst.open("wb") as b:
            fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
    except OSError as e:
        return f"the filesystem does not clone files ({e.strerror or e})"
    finally:
        for path in (src, dst):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return ""
