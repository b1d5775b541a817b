"""The hardlink backend: one plain tree per snapshot, pdumpfs style (DESIGN.md 3.4, 4, 6).

**Prepare.** Every upload gets a fresh ``current/``. An interrupted transfer's
``current/`` is renamed to ``resume/`` and offered as a second ``--link-dest``: its
finished files are reused, its stale files never reach a snapshot because it is never
the destination. The first ``--link-dest`` is the newest of ``snapshots/`` and
``incoming/``. A visible snapshot is passed by path: only prune deletes snapshots, and it
needs the client lock the uploading session holds. A base still in ``incoming/<id>`` may
be promoted mid-transfer by the post-processor, so it is pinned as an open directory and
rsync gets ``/proc/self/fd/N``. (Pinning always would be simpler, but it measured 30%
slower on a no-change backup of 10,000 files: every lookup goes through the magic link.)
rsync's partial directory is the volume's own ``partial/``, on the same filesystem. There
is no ``--temp-dir``: rsync writes each file's temporary copy (``.name.XXXXXX``) beside
it in ``current/``, by a path relative to the destination. An absolute temp directory
made rsync 3.5 resolve it from ``/`` for every file written (about 110 more syscalls per
file on a full backup: 480,000 against 147,000 for 3,000 files; bench/README.md), and a
relative one with ``..`` is refused by its mkstemp. What a killed rsync leaves there stays
in ``current/``, which is never a snapshot: the next transfer makes it ``resume/``, a
``--link-dest`` basis only, whose stale names match no source file.

**Complete** renames ``current/`` to ``incoming/<id>``; ``resume/`` is discarded when
the target is closed, after the caller has queued the transfer. **Promote** is one
``rename(incoming/<id>, snapshots/<id>)`` and a ``latest`` swap (a temporary symlink
renamed over it). Directories are never hardlinked, so a snapshot directory's xattrs
are its own; nothing here ever writes to the hardlinked files.

**Delete** renames the snapshot into ``trash/`` while holding an exclusive flock on it:
a reader (a restore holds a shared flock) makes it refuse. **Purge** then removes
``trash/`` entry by entry with ``rm -rf --one-file-system`` (``shutil.rmtree`` measured
1.4x its time: it builds a path string per file; ``rm`` never follows links), so a kill
leaves a smaller tree to finish later, and one purger runs at a time.

**Partial** trees: what an interrupted transfer leaves for the next one to resume from
is ``current/`` (``resume/`` while the next one runs), with rsync's partial and temporary
files in the volume's ``partial/`` (and ``tmp/``, where earlier versions put rsync's
temporary files). Its age is the time since the newest
change (ctime) of those four; ``discard_partial`` deletes them, never ``incoming/``.

**Measure** is a hardlink-aware ``du`` (``hardlink_du``).

**Manifests** are ``manifests.ManifestFiles``'. ``delete`` unlinks a snapshot's
manifest right after moving the snapshot into ``trash/``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from xsbackup.crashpoints import crash
from xsbackup.errors import LockBusy
from xsbackup.locking import FileLock
from xsbackup.logs import LOG
from xsbackup.storage import hardlink_du
from xsbackup.storage.base import (
    DEDUP_FILES,
    EXACT_USAGE,
    RESUME,
    BackendInfo,
    ClientUsage,
    IngestTarget,
    MeasureProgress,
    Progress,
    lock_for_delete,
    rm_tree,
)
from xsbackup.storage.manifests import ManifestFiles
from xsbackup.store import (
    Store,
    atomic_symlink,
    fsync_dir,
    snapshot_sort_key,
)

NAME = "hardlink"


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


class HardlinkBackend(ManifestFiles):
    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> BackendInfo:
        return BackendInfo(NAME, "one tree per snapshot; unchanged files are hardlinks to "
                           "the previous snapshot (rsync --link-dest)",
                           (DEDUP_FILES, RESUME, EXACT_USAGE))

    # ---- ingest ------------------------------------------------------------------------

    def prepare(self, client: str, volume: str, fresh: bool = False) -> IngestTarget:
        # Every upload gets a fresh tree here, whatever ``fresh`` says.
        vol = self.store.volume_dir(client, volume)
        for sub in ("snapshots", "incoming"):
            (vol / sub).mkdir(parents=True, exist_ok=True)
        current, resume = vol / "current", vol / "resume"
        if current.is_dir() and not current.is_symlink():
            # An interrupted transfer: keep its finished files as a link-dest basis only.
            self._discard(resume)
            os.rename(current, resume)
            LOG.info("client=%s volume=%s resuming from an interrupted transfer", client,
                     volume)
        else:
            self._discard(current)
        current.mkdir()
        target = IngestTarget(client, volume, current)
        base, fd = self._link_base(client, volume)
        args = [f"--link-dest={base}"] if base is not None else []
        if fd is not None:
            target.pass_fds = (fd,)
            target.cleanup.callback(os.close, fd)
        if resume.is_dir():
            args.append(f"--link-dest={resume}")
        args.append(f"--partial-dir={vol / 'partial'}")
        target.rsync_args = tuple(args)
        return target

    def _newest_base(self, client: str, volume: str) -> tuple[str, str] | None:
        """(subdir, id) of the newest completed transfer, visible or waiting."""
        found = [("snapshots", i) for i in self.store.snapshot_ids(client, volume)]
        found += [("incoming", i) for i in self.store.incoming_ids(client, volume)]
        if not found:
            return None
        return max(found, key=lambda p: snapshot_sort_key(p[1]))

    def _link_base(self, client: str, volume: str) -> tuple[str | None, int | None]:
        """The ``--link-dest`` value, and the descriptor to pass along when it is pinned."""
        vol = self.store.volume_dir(client, volume)
        for _ in range(3):
            base = self._newest_base(client, volume)
            if base is None:
                return None, None
            where, sid = base
            if where == "snapshots":
                return str(vol / "snapshots" / sid), None
            try:
                fd = _open_dir(vol / "incoming" / sid)
            except FileNotFoundError:
                continue  # promoted between listing and open: look again
            return f"/proc/self/fd/{fd}", fd
        return None, None

    def complete(self, target: IngestTarget, sid: str) -> Path:
        vol = target.path.parent
        incoming = vol / "incoming" / sid
        os.rename(target.path, incoming)
        fsync_dir(vol / "incoming")
        fsync_dir(vol)
        target.cleanup.callback(self._discard, vol / "resume")
        return incoming

    def _discard(self, path: Path) -> None:
        """Rename into trash/ (fast), then delete; a failed delete is left to ``purge``."""
        if not path.exists() and not path.is_symlink():
            return
        aside = self.store.trash_dir / f"{path.parent.name}-{path.name}-{os.getpid()}-" \
                                       f"{time.time_ns()}"
        os.rename(path, aside)
        error = _remove(aside)
        if error:
            LOG.warning("could not delete %s (the next trash sweep retries): %s", aside, error)

    # ---- interrupted transfers ---------------------------------------------------------

    def _partials(self, client: str, volume: str) -> list[Path]:
        vol = self.store.volume_dir(client, volume)
        found = [vol / name for name in hardlink_du.RESUMABLE
                 if (vol / name).exists() or (vol / name).is_symlink()]
        for scratch in hardlink_du.SCRATCH:
            with contextlib.suppress(FileNotFoundError):
                found += [vol / scratch / n for n in os.listdir(vol / scratch)]
        return found

    def partial_age(self, client: str, volume: str, now: float) -> float | None:
        changed = []
        for path in self._partials(client, volume):
            try:
                changed.append(os.lstat(path).st_ctime)
            except FileNotFoundError:
                continue
        return max(0.0, now - max(changed)) if changed else None

    def discard_partial(self, client: str, volume: str) -> list[str]:
        gone = []
        for path in self._partials(client, volume):
            self._discard(path)
            gone.append(str(path.relative_to(self.store.volume_dir(client, volume))))
        return gone

    # ---- promotion ---------------------------------------------------------------------

    def promote(self, client: str, volume: str, sid: str) -> Path:
        vol = self.store.volume_dir(client, volume)
        src, dst = vol / "incoming" / sid, vol / "snapshots" / sid
        (vol / "snapshots").mkdir(exist_ok=True)
        if src.is_dir() and not dst.exists():
            os.rename(src, dst)
            fsync_dir(vol / "snapshots")
            fsync_dir(vol / "incoming")
        crash("after-rename")
        ids = self.store.snapshot_ids(client, volume)
        if ids and self.store.latest_id(client, volume) != ids[-1]:
            atomic_symlink(f"snapshots/{ids[-1]}", vol / "latest")
            fsync_dir(vol)
        return dst

    # ---- deletion ----------------------------------------------------------------------

    def delete(self, client: str, volume: str, sid: str) -> str:
        snapshots = self.store.snapshots_dir(client, volume)
        fd = lock_for_delete(snapshots / sid)
        if isinstance(fd, str):
            return fd
        try:
            name = f"{_trash_prefix(client, volume)}{sid}.{os.urandom(4).hex()}"
            os.rename(snapshots / sid, self.store.trash_dir / name)
        finally:
            os.close(fd)
        fsync_dir(snapshots)
        crash("prune-after-rename")
        self._forget_manifest(client, volume, sid)
        return ""

    def copied_from(self, client: str, volume: str) -> Path | None:
        return None  # each transfer writes a new tree; unchanged files are hardlinks

    def deleted_ids(self, client: str, volume: str) -> set[str]:
        try:
            names = os.listdir(self.store.trash_dir)
        except FileNotFoundError:
            return set()
        prefix = _trash_prefix(client, volume)
        return {n[len(prefix):].split(".")[0] for n in names if n.startswith(prefix)}

    def purge(self, progress: Progress | None = None) -> int:
        try:
            with FileLock(self.store.trash_lock).acquire():
                return self._purge(progress)
        except LockBusy:
            return 0

    def _purge(self, progress: Progress | None) -> int:
        removed = 0

        def count() -> None:
            nonlocal removed
            removed += 1
            if progress is not None:
                progress(removed)

        for name in sorted(os.listdir(self.store.trash_dir)):
            path = self.store.trash_dir / name
            if not path.is_dir() or path.is_symlink():
                path.unlink(missing_ok=True)
                count()
                continue
            # Entry by entry, so a kill leaves a smaller tree in trash/ to finish later.
            try:
                with os.scandir(path) as it:
                    entries = [e.name for e in it]
            except FileNotFoundError:
                continue  # an ingest's discard removed it meanwhile
            for entry in entries:
                error = _remove(path / entry)
                if error:
                    raise OSError(f"rm -rf {path / entry}: {error}")
                count()
                crash("prune-during-delete")
            path.rmdir()
            count()
        return removed

    # ---- usage -------------------------------------------------------------------------

    def measure(self, client: str, progress: MeasureProgress | None = None) -> ClientUsage:
        return hardlink_du.measure(self.store, client, progress)


def _trash_prefix(client: str, volume: str) -> str:
    """How ``delete`` names a snapshot in ``trash/``: this prefix, the id, a random tail."""
    return f"{client}.{volume}."


def _remove(path: Path) -> str:
    """Delete one tree or file for good; "" on success, else rm's first error line."""
    if path.is_dir() and not path.is_symlink():
        return rm_tree(path, "delete pruned snapshots")
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    return ""
