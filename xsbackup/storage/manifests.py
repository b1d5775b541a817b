"""Content manifests kept as files, for every backend: ``manifests/<id>.jsonl`` in the
volume directory, beside ``snapshots/`` and never inside a client's tree. Each is written
atomically with ``store.atomic_write`` at mode 0444, synced, and never edited; the bytes
are ``snapshots.manifest``'s and opaque here (``base.Backend``'s manifest methods).

A manifest may rest on a *chain* of other manifests' files that its bytes refer to (a
delta manifest rests on a whole manifest, its *base*, and on the deltas between that and
itself). Each is kept beside it as ``<id>.base``, ``<id>.d1``, ``<id>.d2``, ...
(``base.MANIFEST_CHAIN``), a hardlink of that file, so it is one more name of one
immutable inode: deleting the snapshot whose manifest it was removes only that
snapshot's names, and the file lives on while any manifest rests on it. A snapshot's
main file and its chain are written and removed together."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from xsbackup.storage.base import MANIFEST_CHAIN
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
BASE_SUFFIX = ".base"         # the whole manifest a manifest rests on (a hardlink)
MANIFEST_MODE = 0o444
PARTS = ("", *MANIFEST_CHAIN)  # a manifest's main file, and the chain it may rest on
# Every part's file name suffix (``.jsonl``, ``.base``, ``.d1``, ...): ``fleet move``
# copies them all.
PART_SUFFIXES = (MANIFEST_SUFFIX, *(f".{p}" for p in MANIFEST_CHAIN))


class ManifestFiles:
    """The ``Backend`` manifest methods over ``self.store``; a backend's ``delete`` calls
    ``_forget_manifest`` once the snapshot is gone from view."""

    store: Store

    def _manifest(self, client: str, volume: str, sid: str, part: str = "") -> Path:
        if part not in PARTS:
            raise ValueError(f"no manifest part {part!r}")
        return (self.store.volume_dir(client, volume) / MANIFESTS /
                f"{check_snapshot_id(sid)}{PART_SUFFIXES[PARTS.index(part)]}")

    def write_manifest(self, client: str, volume: str, sid: str, data: bytes,
                       chain: Sequence[tuple[str, str]] = ()) -> None:
        if len(chain) > len(MANIFEST_CHAIN):
            raise ValueError(f"a manifest rests on at most {len(MANIFEST_CHAIN)} files")
        path = self._manifest(client, volume, sid)
        path.parent.mkdir(exist_ok=True)
        # the chain first: a manifest never names a part that is not there
        self._keep_chain(client, volume, sid,
                         [self._manifest(client, volume, *c) for c in chain])
        atomic_write(path, data, mode=MANIFEST_MODE)  # syncs the directory: every name
        os.chmod(path, MANIFEST_MODE)  # whatever the umask took away, never more

    def link_manifest(self, client: str, volume: str, sid: str, source: str) -> None:
        """Hardlinks of ``source``'s files (its chain too): the manifest is mode 0444 and
        never edited, and deleting either snapshot unlinks only its own names."""
        chain = []
        for part in MANIFEST_CHAIN:  # a chain is whole: base, d1, d2, ... up to a gap
            found = self._manifest(client, volume, source, part)
            if not found.exists():
                break
            chain.append(found)
        self._keep_chain(client, volume, sid, chain)
        path = self._manifest(client, volume, sid)
        self._link(self._manifest(client, volume, source), path)
        fsync_dir(path.parent)

    def _keep_chain(self, client: str, volume: str, sid: str, files: list[Path]) -> None:
        """``sid``'s chain parts made hardlinks of ``files``, in order, and its other
        chain parts (left by an interrupted promotion) removed."""
        for part, src in zip(MANIFEST_CHAIN, files, strict=False):
            self._link(src, self._manifest(client, volume, sid, part))
        stem = str(self._manifest(client, volume, sid))[:-len(MANIFEST_SUFFIX)]
        for suffix in PART_SUFFIXES[1 + len(files):]:  # (a promotion's: no Path each)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stem + suffix)

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
