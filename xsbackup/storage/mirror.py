"""What the btrfs and reflink backends share: a persistent ``current/`` that rsync updates
in place, and a snapshot of it per successful transfer.

**Prepare.** ``current/`` is the client's tree as of its last transfer. rsync updates it
in place (no ``--link-dest``), so an unchanged file costs one ``lstat`` and an interrupted
transfer resumes by construction. A client that does not ask rsync to delete what it no
longer has gets an empty ``current/`` instead (``fresh``): otherwise files it removed would
stay in every later snapshot, and a snapshot would no longer be exactly what it sent (as
on the hardlink backend). For the same reason the server gives rsync a first rule,
``R *`` (``RISK_ALL``), that leaves nothing in ``current/`` protected from deletion:
without it, a file the client newly excludes (``--exclude`` without
``--delete-excluded``, a ``P`` or ``-r`` rule) would be protected by the client's own rule
and stay in every later snapshot; with it, a snapshot holds exactly what the client sent,
as a hardlink snapshot (a fresh tree) does. While a transfer runs, ``unfinished`` marks
the volume; a transfer killed with SIGKILL leaves it, and rsync's temporary files
(``.<name>.XXXXXX``, next to their destination: a temporary directory elsewhere would not
be on the same subvolume, and every file would be copied instead of renamed). The next
``prepare`` then deletes every file of ``current/`` that has such a name: anything wrongly
taken is only sent again. rsync's partial files go to the volume's ``partial/``.

**Complete** makes ``incoming/<id>`` a writable copy of ``current/`` (a subvolume
snapshot, or a reflink copy made aside and renamed in) and only then clears
``unfinished``. The post-processor writes the facts and tightens modes there; ``promote``
(the backend's own) makes it read-only and visible.

**Partial**: only a volume marked ``unfinished`` has something to resume from:
``current/`` itself, and ``partial/``. ``discard_partial`` deletes them (the next
transfer is a full one).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path

from xsbackup.crashpoints import crash
from xsbackup.logs import LOG
from xsbackup.storage.base import IngestTarget
from xsbackup.storage.manifests import ManifestFiles
from xsbackup.store import Store, atomic_symlink, fsync_dir

UNFINISHED = "unfinished"
# Given to the receiving rsync before the client's rules: nothing in current/ is protected
# from --delete, so what the client now excludes goes as what it removed does.
RISK_ALL = "--filter=R *"
PARTIAL = "partial"
# rsync's temporary files: "." + name + "." + six random characters.
RSYNC_TEMP_RE = re.compile(r"\..+\.[A-Za-z0-9]{6}", re.DOTALL)


class MirrorBackend(ManifestFiles, ABC):
    """Base of the backends with a persistent ``current/``; a subclass supplies how a tree
    is made, copied and removed (``_new_tree``, ``_copy_tree``, ``_remove_tree``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- what a subclass supplies ------------------------------------------------------

    @abstractmethod
    def _new_tree(self, path: Path) -> None:
        """Make ``path`` an empty tree for a transfer to fill."""

    @abstractmethod
    def _copy_tree(self, src: Path, dst: Path) -> None:
        """Make ``dst`` a writable copy of ``src`` that appears whole or not at all."""

    @abstractmethod
    def _remove_tree(self, path: Path) -> None:
        """Delete the tree ``path`` for good."""

    # ---- ingest ------------------------------------------------------------------------

    def prepare(self, client: str, volume: str, fresh: bool = False) -> IngestTarget:
        vol = self.store.volume_dir(client, volume)
        for sub in ("snapshots", "incoming", PARTIAL):
            (vol / sub).mkdir(parents=True, exist_ok=True)
        current, unfinished = vol / "current", vol / UNFINISHED
        if fresh and current.exists():
            self._remove_tree(current)
        if not current.exists():
            self._new_tree(current)
        elif unfinished.exists():
            dropped = drop_rsync_temps(current)
            LOG.info("client=%s volume=%s resuming an interrupted transfer (%d temporary "
                     "files dropped)", client, volume, dropped)
        unfinished.write_text(f"{os.getpid()} {time.time():.0f}\n")
        fsync_dir(vol)
        # Nanosecond mtimes: at rsync's default (whole seconds) a directory whose entries
        # changed within the second of its recorded mtime would keep the new one.
        return IngestTarget(client, volume, current,
                            rsync_args=(f"--partial-dir={vol / PARTIAL}", "--modify-window=-1",
                                        RISK_ALL))

    def complete(self, target: IngestTarget, sid: str) -> Path:
        vol = target.path.parent
        incoming = vol / "incoming" / sid
        self._copy_tree(target.path, incoming)
        fsync_dir(vol / "incoming")
        crash("after-snapshot")
        (vol / UNFINISHED).unlink(missing_ok=True)
        fsync_dir(vol)
        return incoming

    # ---- interrupted transfers ---------------------------------------------------------

    def _partials(self, client: str, volume: str) -> list[Path]:
        vol = self.store.volume_dir(client, volume)
        found: list[Path] = []
        if (vol / UNFINISHED).exists():
            found += [vol / UNFINISHED, vol / "current"]
        with contextlib.suppress(FileNotFoundError):
            found += [vol / PARTIAL / n for n in os.listdir(vol / PARTIAL)]
        return found

    def partial_age(self, client: str, volume: str, now: float) -> float | None:
        changed = []
        for path in self._partials(client, volume):
            with contextlib.suppress(FileNotFoundError):
                changed.append(os.lstat(path).st_ctime)
        return max(0.0, now - max(changed)) if changed else None

    def discard_partial(self, client: str, volume: str) -> list[str]:
        vol = self.store.volume_dir(client, volume)
        gone = []
        for path in self._partials(client, volume):
            if path.name == UNFINISHED:
                continue  # cleared last: a kill meanwhile leaves it to retry
            if path.is_dir() and not path.is_symlink():
                self._remove_tree(path)
            else:
                path.unlink(missing_ok=True)
            gone.append(str(path.relative_to(vol)))
        if (vol / UNFINISHED).exists():
            (vol / UNFINISHED).unlink()
            gone.append(UNFINISHED)
        return gone

    # ---- promotion ---------------------------------------------------------------------

    def copied_from(self, client: str, volume: str) -> Path | None:
        return self.store.volume_dir(client, volume) / "current"

    def deleted_ids(self, client: str, volume: str) -> set[str]:
        """Plain trees in ``trash/`` are named the hardlink backend's way (its ``delete``
        or ``_discard``), so it reads them."""
        from xsbackup.storage.hardlink import HardlinkBackend

        return HardlinkBackend(self.store).deleted_ids(client, volume)

    def _point_latest(self, client: str, volume: str) -> None:
        vol = self.store.volume_dir(client, volume)
        ids = self.store.snapshot_ids(client, volume)
        if ids and self.store.latest_id(client, volume) != ids[-1]:
            atomic_symlink(f"snapshots/{ids[-1]}", vol / "latest")
            fsync_dir(vol)


def drop_rsync_temps(top: Path) -> int:
    """Delete every regular file below ``top`` named like an rsync temporary file (never
    following a link, never leaving ``top``'s filesystem). Returns how many went."""
    dropped = 0
    stack = [str(top)]
    dev = os.lstat(top).st_dev
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.stat(follow_symlinks=False).st_dev == dev:
                        stack.append(e.path)
                elif e.is_file(follow_symlinks=False) and RSYNC_TEMP_RE.fullmatch(e.name):
                    os.unlink(e.path)
                    dropped += 1
    return dropped
