"""Content manifests kept as files, for every backend: ``manifests/<id>.jsonl`` in the
volume directory, beside ``snapshots/`` and never inside a client's tree. Each is written
atomically with ``store.atomic_write`` at mode 0444, synced, and never edited; the bytes
are ``snapshots.manifest``'s and opaque here (``base.Backend``'s manifest methods).

A manifest may rest on a *base*: another manifest's file that its bytes refer to (a delta
manifest). The base is kept beside it as ``<id>.base``, a hardlink of that file, so it
is one more name of one immutable inode: deleting the snapshot whose manifest it was
removes only that snapshot's names, and the base lives on while any manifest rests on
it. A snapshot's main file and its base are written and removed together."""

from __future__ import annotations

import contextlib
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
BASE_SUFFIX = ".base"         # the manifest file a manifest rests on (a hardlink)
MANIFEST_MODE = 0o444
PARTS = ("", "base")          # a manifest's main file, and the base it may rest on


class ManifestFiles:
    """The ``Backend`` manifest methods over ``self.store``; a backend's ``delete`` calls
    ``_forget_manifest`` once the snapshot is gone from view."""

    store: Store

    def _manifest(self, client: str, volume: str, sid: str, part: str = "") -> Path:
        suffix = BASE_SUFFIX if part == "base" else MANIFEST_SUFFIX
        if part not in PARTS:
            raise ValueError(f"no manifest part {part!r}")
        return (self.store.volume_dir(client, volume) / MANIFESTS /
                f"{check_snapshot_id(sid)}{suffix}")

    def write_manifest(self, client: str, volume: str, sid: str, data: bytes,
                       base: tuple[str, str] | None = None) -> None:
        path = self._manifest(client, volume, sid)
        path.parent.mkdir(exist_ok=True)
        if base is None:
            with contextlib.suppress(FileNotFoundError):
                self._manifest(client, volume, sid, "base").unlink()
        else:  # the base first: a manifest never names a base that is not there
            self._link(self._manifest(client, volume, *base),
                       self._manifest(client, volume, sid, "base"))
        atomic_write(path, data, mode=MANIFEST_MODE)  # syncs the directory: both names
        os.chmod(path, MANIFEST_MODE)  # whatever the umask took away, never more

    def link_manifest(self, client: str, volume: str, sid: str, source: str) -> None:
        """Hardlinks of ``source``'s files (its base too): the manifest is mode 0444 and
        never edited, and deleting either snapshot unlinks only its own names."""
        base = self._manifest(client, volume, source, "base")
        mine = self._manifest(client, volume, sid, "base")
        if base.exists():
            self._link(base, mine)
        else:
            with contextlib.suppress(FileNotFoundError):
                mine.unlink()
        path = self._manifest(client, volume, sid)
        self._link(self._manifest(client, volume, source), path)
        fsync_dir(path.parent)

    @staticmethod
    def _link(src: Path, dst: Path) -> None:
        """``dst`` a new name of ``src``, replacing any file there atomically."""
        try:
            os.link(src, dst)
        except FileExistsError:  # left by an interrupted promotion: replace it
            tmp = dst.with_name(f".{dst.name}.{os.urandom(4).hex()}.tmp")
            os.link(src, tmp)
            try:
                os.rename(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def open_manifest(self, client: str, volume: str, sid: str,
                      part: str = "") -> BinaryIO | None:
        try:
            fd = os.open(self._manifest(client, volume, sid, part),
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
        for part in PARTS:
            self._manifest(client, volume, sid, part).unlink(missing_ok=True)
