"""Content manifests kept as files, for every backend: ``manifests/<id>.jsonl`` in the
volume directory, beside ``snapshots/`` and never inside a client's tree. Each is written
atomically with ``store.atomic_write`` at mode 0444, synced, and never edited; the bytes
are ``snapshots.manifest``'s and opaque here (``base.Backend``'s manifest methods)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from xsbackup.store import (
    SNAPSHOT_RE,
    Store,
    atomic_write,
    check_snapshot_id,
    fsync_dir,
    snapshot_sort_key,
)

MANIFESTS = "manifests"       # the volume's directory of content manifests
MANIFEST_SUFFIX = ".jsonl"
MANIFEST_MODE = 0o444


class ManifestFiles:
    """The ``Backend`` manifest methods over ``self.store``; a backend's ``delete`` calls
    ``_forget_manifest`` once the snapshot is gone from view."""

    store: Store

    def _manifest(self, client: str, volume: str, sid: str) -> Path:
        return (self.store.volume_dir(client, volume) / MANIFESTS /
                f"{check_snapshot_id(sid)}{MANIFEST_SUFFIX}")

    def write_manifest(self, client: str, volume: str, sid: str, data: bytes) -> None:
        path = self._manifest(client, volume, sid)
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, data, mode=MANIFEST_MODE)
        os.chmod(path, MANIFEST_MODE)  # whatever the umask took away, never more

    def link_manifest(self, client: str, volume: str, sid: str, source: str) -> None:
        """A hardlink: the manifest is mode 0444 and never edited, and deleting either
        snapshot unlinks only its own name."""
        path = self._manifest(client, volume, sid)
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        os.link(self._manifest(client, volume, source), tmp)
        try:
            os.rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def open_manifest(self, client: str, volume: str, sid: str) -> BinaryIO | None:
        try:
            fd = os.open(self._manifest(client, volume, sid),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return os.fdopen(fd, "rb")

    def manifest_ids(self, client: str, volume: str) -> list[str]:
        try:
            names = os.listdir(self.store.volume_dir(client, volume) / MANIFESTS)
        except FileNotFoundError:
            return []
        ids = [n[:-len(MANIFEST_SUFFIX)] for n in names if n.endswith(MANIFEST_SUFFIX)]
        return sorted((i for i in ids if SNAPSHOT_RE.fullmatch(i)), key=snapshot_sort_key)

    def _forget_manifest(self, client: str, volume: str, sid: str) -> None:
        self._manifest(client, volume, sid).unlink(missing_ok=True)
