"""The storage-backend seam: how a snapshot is made, made visible, deleted and measured.

The state root's layout (``store``) is shared by every backend: a client volume has
``current/`` (the transfer in progress), ``incoming/<id>/`` (completed, waiting for the
post-processor), ``snapshots/<id>/`` (visible, immutable) and ``latest``; deleted
snapshots pass through ``trash/``. What differs between backends is what those
directories are and how they come to be: the hardlink backend makes each snapshot a
plain tree whose unchanged files rsync's ``--link-dest`` hardlinks to the previous one
(pdumpfs style); a btrfs backend would keep ``current`` as a persistent subvolume and take
a read-only subvolume snapshot per transfer.

Callers go through ``Backend`` for every such step and never assume one of them; the
post-processor, prune, ingest and ``du`` know the layout's names, never the mechanism.

Each snapshot may also have a *content manifest* (``snapshots.manifest`` owns its format):
an opaque byte stream the backend keeps beside the snapshot, never inside the client's
tree, as immutable as the snapshot itself, and deleted with it. The backend only stores
and returns the bytes; it never parses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from xsbackup import procs
from xsbackup.errors import LockBusy
from xsbackup.locking import lock_directory
from xsbackup.records import field, record

Progress = Callable[[int], None]              # trash entries deleted so far
MeasureProgress = Callable[[str, str], None]  # (volume, snapshot id) as each one starts

# Capabilities a backend may declare in ``describe()`` (status and docs show them).
DEDUP_FILES = "dedup-files"          # an unchanged file costs no space in a new snapshot
DEDUP_BLOCKS = "dedup-blocks"        # an unchanged block costs no space (copy-on-write)
RESUME = "resume"                    # an interrupted transfer's finished files are reused
READ_ONLY = "read-only-snapshots"    # the filesystem itself refuses writes to a snapshot
EXACT_USAGE = "exact-usage"          # measure() gives exact exclusive bytes per snapshot

# The parts a content manifest may rest on, in order (``Backend.write_manifest``): a
# whole manifest (its base), then the deltas between it and the manifest itself.
MANIFEST_CHAIN = ("base", *(f"d{i}" for i in range(1, 16)))


@record(frozen=True)
class BackendInfo:
    name: str
    summary: str
    capabilities: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary,
                "capabilities": list(self.capabilities)}


@record
class IngestTarget:
    """Where one upload writes, and what rsync needs from the backend to write there.

    ``rsync_args`` are server-side options (``--link-dest``, temp and partial
    directories, ...) to place before ``--``; ``pass_fds`` are descriptors those options
    name as ``/proc/self/fd/N``, which the rsync child must inherit. ``close()`` runs
    the backend's ``cleanup`` steps, newest first and each even if another fails: it
    releases those descriptors and, after ``Backend.complete``, whatever the backend
    kept only for this transfer. Use the target as a context manager."""

    client: str
    volume: str
    path: Path
    rsync_args: tuple[str, ...] = ()
    pass_fds: tuple[int, ...] = ()
    cleanup: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self.cleanup.close()

    def __enter__(self) -> IngestTarget:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@record
class SnapshotUsage:
    volume: str
    id: str
    files: int = 0
    apparent: int = 0     # sizes of its regular files, as the client sees them
    exclusive: int = 0    # what deleting only this snapshot would free
    shared: int = 0       # apparent bytes of files also held elsewhere


@record
class ClientUsage:
    client: str
    total: int = 0        # allocated bytes of every distinct inode it holds (snapshots,
                          # and transfers not yet snapshots)
    apparent: int = 0     # of its snapshots
    snapshots: list[SnapshotUsage] = field(default_factory=list)
    pending: int = 0      # what only its transfers not yet snapshots hold: waiting in
                          # incoming/, running, or interrupted and kept for resuming
    method: str = "walk"  # how exclusive bytes were measured (btrfs: qgroups or du)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientUsage:
        snaps = [SnapshotUsage(**s) for s in data.get("snapshots", [])]
        return cls(data["client"], data.get("total", 0), data.get("apparent", 0), snaps,
                   data.get("pending", 0), data.get("method", "walk"))

    def exclusive_of(self, volume: str, sid: str) -> int:
        for s in self.snapshots:
            if s.volume == volume and s.id == sid:
                return s.exclusive
        return 0


class Backend(Protocol):
    """One storage mechanism. Every method is safe to kill at any instant: the next
    call (or the post-processor's and prune's recovery) finishes or discards the work."""

    def describe(self) -> BackendInfo:
        """Name, one-line summary and capabilities."""

    def prepare(self, client: str, volume: str, fresh: bool = False) -> IngestTarget:
        """Make the volume's ``current/`` ready for a new upload (the caller holds the
        client's ingest lock) and say what rsync needs to write into it. ``fresh``: the
        client does not delete what it no longer has, so the snapshot must hold only
        what this upload sends (a backend that updates a tree in place starts empty)."""

    def complete(self, target: IngestTarget, sid: str) -> Path:
        """The upload succeeded: ``current/`` becomes ``incoming/<sid>``, durably.
        Returns that path."""

    def promote(self, client: str, volume: str, sid: str) -> Path:
        """Make ``incoming/<sid>`` visible as ``snapshots/<sid>`` (its facts are already
        written) and point ``latest`` at the newest snapshot. Idempotent. Returns the
        visible path."""

    def delete(self, client: str, volume: str, sid: str) -> str:
        """Take one snapshot out of sight at once (the caller holds the client's locks);
        its space is reclaimed by ``purge``. Returns "" when done, else why not
        ("being read", "already gone")."""

    def deleted_ids(self, client: str, volume: str) -> set[str]:
        """Ids of the volume's snapshots that ``delete`` took out of sight and whose space
        ``purge`` has not reclaimed yet (``check`` reports one that is also visible)."""

    def purge(self, progress: Progress | None = None) -> int:
        """Reclaim the space of what ``delete`` took away, outside any client lock;
        resumable after a kill, one purger at a time (a second returns 0 at once).
        Returns the entries removed."""

    def partial_age(self, client: str, volume: str, now: float) -> float | None:
        """Seconds (at ``now``, epoch time) since what interrupted transfers of the volume
        left for the next one to resume from last changed; None when there is none."""

    def discard_partial(self, client: str, volume: str) -> list[str]:
        """Delete what interrupted transfers of the volume left for resuming (the caller
        holds the client's ingest lock, so none is running); never a completed transfer.
        Returns the names of what went."""

    def measure(self, client: str, progress: MeasureProgress | None = None) -> ClientUsage:
        """Every snapshot's apparent, exclusive and shared bytes, and the client's
        total, which also counts its transfers that are not snapshots yet (``pending``:
        what only they hold)."""

    # ---- content manifests (the bytes are ``snapshots.manifest``'s; opaque here) -------

    def write_manifest(self, client: str, volume: str, sid: str, data: bytes,
                       chain: Sequence[tuple[str, str]] = ()) -> None:
        """Keep ``data`` as the content manifest of snapshot ``sid`` (visible, or still
        in ``incoming/`` about to be promoted): beside the snapshot, never inside its
        tree, durably (synced before returning), atomically (a reader sees none or all
        of it) and read-only from then on. A second call replaces it atomically; callers
        only do so before the snapshot is visible, or when there was none. With
        ``chain`` (at most ``len(MANIFEST_CHAIN)`` files, each a snapshot id and one of
        its parts, as ``open_manifest`` takes them), the manifest rests on those files'
        bytes: they are kept, unchanged, as ``sid``'s parts ``MANIFEST_CHAIN`` in order
        (the first as ``base``) for as long as ``sid``'s manifest is, whatever becomes
        of the snapshots they came from (the backend shares them where it can); they
        are in place before ``data`` is. ``sid``'s manifest has no other part.
        FileNotFoundError when a file of ``chain`` is missing (``data`` is then not
        written)."""

    def copied_from(self, client: str, volume: str) -> Path | None:
        """The persistent tree every new snapshot of the volume is a copy of (a mirror
        backend's ``current/``), or None. A file there whose ctime is older than a
        snapshot's id has not changed since before that snapshot was copied
        (``snapshots.manifest`` reuses digests on that ground)."""

    def link_manifest(self, client: str, volume: str, sid: str, source: str) -> None:
        """Keep as the content manifest of ``sid`` the very bytes of ``source``'s (a
        snapshot of the same volume that has one), every part, as ``write_manifest``
        would; sharing them (a hardlink) where the backend can."""

    def open_manifest(self, client: str, volume: str, sid: str,
                      part: str = "") -> BinaryIO | None:
        """The content manifest of ``sid`` opened for reading (the caller closes it),
        or None when the snapshot has none; with ``part`` one of ``MANIFEST_CHAIN``
        (``"base"``, ``"d1"``, ...), that file of the chain it rests on (None when it
        rests on none there)."""

    def manifest_ids(self, client: str, volume: str) -> list[str]:
        """The snapshot ids of the volume that have a content manifest kept, oldest
        first, whether or not the snapshot itself still exists (``check`` reports a
        manifest whose snapshot is gone). ``delete`` removes a snapshot's manifest."""


def lock_for_delete(snapshot: Path) -> int | str:
    """The snapshot directory locked exclusively for ``Backend.delete`` (a descriptor the
    caller closes once the snapshot is out of sight), or why it cannot be deleted now:
    "being read" (a restore holds it) or "already gone"."""
    try:
        return lock_directory(snapshot, shared=False)
    except LockBusy:
        return "being read"
    except FileNotFoundError:
        return "already gone"


def rm_tree(path: Path, why: str) -> str:
    """Delete the tree ``path`` for good with ``rm -rf --one-file-system`` (never into
    another filesystem mounted below it); "" on success, else rm's first error line."""
    res = procs.run(["rm", "-rf", "--one-file-system", "--", str(path)], why=why)
    return "" if res.ok else res.first_error_line()

