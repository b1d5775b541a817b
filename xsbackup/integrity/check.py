"""``xsbackup check``: a client's snapshots against their structure and their manifests.

**Structure** is ``integrity.structure``. **Content**: each selected snapshot is walked
(``content.stored_files``: directory descriptors, nothing followed, under the shared
flock that keeps prune away) and its regular files compared with its manifest by path:
a file gone (``missing``), another inode (``replaced``), another size (``size``) or mtime
(``mtime``), a file the manifest does not list (``unlisted``). A snapshot after the
first is compared again only where its walk (path and readdir inode) or its manifest's
records differ from the snapshot checked before it, or where that one had a finding of a
path: anywhere else every comparison would repeat the last. Then the content of the
inodes chosen is read and hashed, each inode once however many snapshots share it, and
compared with the manifest's digest (``content``; ``unreadable`` when reading fails),
on ``HASH_THREADS`` threads. A finding about an inode names every
snapshot of the volume whose manifest lists that inode.

Which inodes are read: none by default (metadata only), all with ``read_data``, or a
sample of ``sample`` percent. The sample is a window of the inode's position (a hash of
client and inode, in millionths) that rotates: a sampled check of a whole client starts
where the last one ended and records that position on the client (``check_position``),
so each inode is read within 100/percent checks, and the time the window last wrapped
round (every inode covered) as ``check_covered_at``.

``check`` never writes to a snapshot. ``repair_manifests`` writes the manifests that are
missing (``snapshots.manifest``, oldest snapshot first, so each reuses its predecessor's
digests) and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from xsbackup.context import Context
from xsbackup.integrity import content
from xsbackup.integrity.structure import Finding, check_volume
from xsbackup.logs import LOG
from xsbackup.restore import resolve
from xsbackup.restore.access import OpenSnapshot
from xsbackup.snapshots import manifest
from xsbackup.snapshots.snapshot import since_ns
from xsbackup.store import get_xattrs, set_xattrs

PPM = 1_000_000
HELD = 64  # snapshots held open while their files wait to be hashed
HASH_THREADS = 2  # reading one file overlaps hashing another; more gain little on a disk
Progress = Callable[[str], None]


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    snapshots: int = 0
    files: int = 0
    inodes: int = 0
    inodes_read: int = 0
    bytes_read: int = 0
    read_inodes: set[tuple[str, int]] = field(default_factory=set)  # (volume, inode)
    bad_inodes: set[tuple[str, int]] = field(default_factory=set)   # already reported
    repaired: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> list[Finding]:
        return [f for f in self.findings if f.damage]

    def as_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "files": self.files, "inodes": self.inodes,
                "inodes_read": self.inodes_read, "bytes_read": self.bytes_read,
                "damaged_files": len(self.damaged), "problems": len(self.findings),
                "repaired_manifests": self.repaired,
                "findings": [f.as_dict() for f in self.findings]}


def position(client: str, inode: int) -> int:
    """Where an inode sits in the sample rotation, in millionths."""
    h = hashlib.blake2b(f"{client}:{inode}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % PPM


def _in_window(pos: int, start: int, width: int) -> bool:
    return (pos - start) % PPM < width


class _Volume:
    """What one volume's manifests say, each read when first needed (so hashing starts
    after the first snapshot's, not after all of them): each snapshot's records by path,
    every line parsed once (``parsed``: a file kept from one snapshot to the next has the
    same line, so the same record object), and by inode every snapshot whose manifest holds it
    (``sids``, built for the first finding). A damaged manifest is a finding in
    ``findings`` (the volume's own, before any snapshot's)."""

    def __init__(self, ctx: Context, client: str, volume: str,
                 findings: list[Finding]) -> None:
        self.where = (ctx.storage, client, volume)
        self.ids = resolve.snapshot_ids(ctx.store, client, volume)
        self.findings = findings
        self.records: dict[str, dict[str, manifest.Record] | None] = {}
        self.parsed: dict[bytes, manifest.Record] = {}
        self.stats: dict[int, tuple[int, int]] = {}  # inode: size, mtime
        self._sids: dict[int, list[str]] | None = None
        self._last: tuple[bytes, dict[str, manifest.Record] | None, str] = (b"", None, "")

    def load(self, sid: str) -> dict[str, manifest.Record] | None:
        """Snapshot ``sid``'s records by path; None without a (usable) manifest."""
        if sid in self.records:
            return self.records[sid]
        storage, client, volume = self.where
        records: dict[str, manifest.Record] | None = None
        try:
            data = manifest.read_bytes(storage, client, volume, sid)
            if data is not None and data == self._last[0] and self._last[1] is not None:
                records = self._last[1]  # a no-change snapshot's manifest: the same bytes
            elif data is not None:
                records = {r.path: r for r in manifest.parse_lines(data, self.parsed)}
                self._last = (data, records, sid)
        except manifest.ManifestError as e:
            self.findings.append(Finding("manifest-damaged", client, volume, sid,
                                         detail=str(e)))
        self.records[sid] = records
        return records

    def load_all(self) -> None:
        for sid in self.ids:
            self.load(sid)

    def sids(self, inode: int) -> list[str]:
        if self._sids is None:
            self.load_all()
            self._sids = defaultdict(list)
            for sid, records in self.records.items():
                for r in (records or {}).values():
                    self._sids[r.inode].append(sid)
        return sorted(set(self._sids.get(inode, [])))

    def changed_paths(self, sid: str, before: str) -> set[str]:
        """The paths whose record differs between two snapshots' manifests (listed by
        one only, or with another inode, size, mtime or digest): a set operation in C,
        most records being the very same objects."""
        return {path for path, _ in (self.records[sid] or {}).items() ^
                (self.records[before] or {}).items()}


@dataclass
class _Walked:
    """The last snapshot checked against its manifest: what its walk found (by
    directory, each regular file's readdir inode) and its paths with a finding of their
    own. The next snapshot re-examines only a path whose inode or record differs from
    this one's, or that had a finding: for any other, every comparison would give what
    it gave here (a directory listed alike is passed over whole)."""

    sid: str
    dirs: dict[str, dict[str, int]]  # by directory: name -> inode
    bad: set[str]


def run(ctx: Context, client: str, volume: str | None = None, snapshot: str | None = None,
        read_data: bool = False, sample: float | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        progress: Progress | None = None) -> Report:
    """Check one client (one volume, one snapshot with ``snapshot``)."""
    store = ctx.store
    report = Report()
    volumes = [resolve.pick_volume(store, client, volume)] if volume else store.volumes(client)
    start, width = 0, PPM if read_data else 0
    rotate = sample is not None and volume is None and snapshot is None
    if sample is not None:
        width = max(1, min(PPM, round(sample * PPM / 100)))
        if rotate:
            start = int(get_xattrs(store.client_dir(client)).get("check_position", "0") or 0)
    seen: set[int] = set()

    def chosen(ino: int) -> bool:
        return width >= PPM or (width > 0 and _in_window(position(client, ino), start, width))

    # Findings in order: each volume's structure and manifests, then each snapshot's
    # (a content finding arrives when its file is hashed, maybe during a later snapshot;
    # a damaged manifest is found when first read).
    ordered: list[list[Finding]] = []
    # A snapshot stays open (its shared flock held) until its queued files are hashed;
    # at most HELD at once.
    held = contextlib.ExitStack()
    hasher = _Hasher(HASH_THREADS)
    try:
        for vname in volumes:
            head = check_volume(ctx, client, vname)
            ordered.append(head)
            vol = _Volume(ctx, client, vname, head)
            sids = [resolve.resolve(store, client, vname, snapshot)] if snapshot else vol.ids
            last: _Walked | None = None
            for sid in sids:
                if progress is not None:
                    progress(f"{client}/{vname}/{sid}")
                report.snapshots += 1
                out: list[Finding] = []
                ordered.append(out)
                snap = held.enter_context(OpenSnapshot(store, client, vname, sid))
                last = _check_snapshot(snap.fd, client, vname, sid, vol, report, seen,
                                       chosen, hasher, last, out)
                if report.snapshots % HELD == 0:
                    hasher.drain()
                    held.close()
            vol.load_all()  # every damaged manifest is a finding, whichever was checked
    finally:
        try:
            hasher.close()
        finally:
            held.close()
            report.findings = [f for part in ordered for f in part]
    report.inodes = len(seen)
    _record(ctx, client, report, now(), (start, width) if rotate else None)
    LOG.info("client=%s check: %d snapshots, %d files, %d inodes read (%d bytes), %d "
             "damaged, %d problems", client, report.snapshots, report.files,
             report.inodes_read, report.bytes_read, len(report.damaged),
             len(report.findings))
    return report


Done = Callable[[str | None, int], None]


Work = list[tuple[int, str, list[tuple[str, int]]]]  # (snapshot fd, dir, [(name, size)])


class _Hasher:
    """Reads and hashes files on a few threads (hashlib releases the GIL while it hashes),
    so reading one file overlaps hashing another, and the walk goes on meanwhile: a file
    is queued as its directory below an open snapshot and its name, and the thread opens
    it (``content.open_stored_dir``: nothing followed), so a queued file holds no
    descriptor and the walk need not wait for the hashing. Files are opened without
    updating their access time where the kernel allows it. Files go to the threads in
    batches (``BATCH`` files or ``BATCH_BYTES``), so a small file costs no hand-over of
    its own. Each result is handed to its callback in the calling thread, in submission
    order; a file that cannot be read gives ``(None, 0)``. At most ``AHEAD`` batches
    are open (the walk then waits)."""

    AHEAD = 4096
    BATCH = 32
    BATCH_BYTES = 16 << 20

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="check")
        self.queue: deque[tuple[Future[list[tuple[str, int] | None]], list[Done]]] = deque()
        self.work: Work = []
        self.dones: list[Done] = []
        self.files = self.size = 0

    def submit(self, snap_fd: int, prefix: str, files: list[tuple[str, int, Done]]) -> None:
        """Queue ``files`` (name, size, callback) of the directory ``prefix`` below the
        open snapshot ``snap_fd``, which stays open until ``drain``."""
        self.work.append((snap_fd, prefix, [(name, size) for name, size, _ in files]))
        for _, size, done in files:
            self.dones.append(done)
            self.files += 1
            self.size += size
        if self.files >= self.BATCH or self.size >= self.BATCH_BYTES:
            self._send()

    def _send(self) -> None:
        if self.work:
            self.queue.append((self.pool.submit(_hash_all, self.work),
                               self.dones))
            self.work, self.dones, self.files, self.size = [], [], 0, 0
        while len(self.queue) > self.AHEAD or (self.queue and self.queue[0][0].done()):
            self._pop()

    def _pop(self) -> None:
        fut, dones = self.queue.popleft()
        for got, done in zip(fut.result(), dones, strict=True):
            if got is None:
                done(None, 0)
            else:
                done(*got)

    def drain(self) -> None:
        self._send()
        while self.queue:
            self._pop()

    def close(self) -> None:
        self.drain()
        self.pool.shutdown()


def _hash_all(work: Work) -> list[tuple[str, int] | None]:
    """Each file's (digest, bytes read), or None when it cannot be read (or its
    directory cannot be opened); read as ``content.read_digest`` reads (no atime
    written where the kernel allows it)."""
    out: list[tuple[str, int] | None] = []
    for snap_fd, prefix, files in work:
        try:
            dir_fd = content.open_stored_dir(snap_fd, prefix)
        except OSError:
            out += [None] * len(files)
            continue
        try:
            for name, _ in files:
                out.append(_hash_one(name, dir_fd))
        finally:
            os.close(dir_fd)
    return out


def _hash_one(name: str, dir_fd: int) -> tuple[str, int] | None:
    try:
        return content.read_digest(name, dir_fd)
    except OSError:
        return None


def _check_snapshot(snap_fd: int, client: str, volume: str, sid: str, vol: _Volume,
                    report: Report, seen: set[int], chosen: Callable[[int], bool],
                    hasher: _Hasher, last: _Walked | None,
                    out: list[Finding]) -> _Walked | None:
    """Walk one snapshot against its manifest (after ``last``, the one checked before
    it: only what differs from it is compared again). A finding about a path
    (``missing``, ``replaced``, ``unlisted``) names this snapshot; one about an inode
    (``size``, ``mtime``, ``content``) is made once and names every snapshot holding the
    inode. Returns what the next snapshot needs (None without a manifest)."""
    listed = vol.load(sid)
    bad_paths: set[str] = set()

    def bad(kind: str, path: str, detail: str, inode: int | None = None) -> None:
        if inode is not None:
            if (volume, inode) in report.bad_inodes:
                return
            report.bad_inodes.add((volume, inode))
        else:
            bad_paths.add(path)
        shared = vol.sids(inode) if inode is not None else [sid]
        out.append(Finding(kind, client, volume, sid, path, detail, shared))

    before = last if listed is not None and last is not None and \
        vol.records.get(last.sid) is not None else None
    again: dict[str, list[str]] = {}  # by directory: names to compare whatever the walk
    if before is not None:
        for path in vol.changed_paths(sid, before.sid) | before.bad:
            cut = path.rfind("/") + 1
            again.setdefault(path[:cut], []).append(path[cut:])
    read = report.read_inodes
    walked: dict[str, dict[str, int]] = {}  # by directory: name -> readdir's inode
    files_walked = unlisted = 0
    for prefix, dir_fd, here in content.stored_inodes(snap_fd):
        walked[prefix] = here
        files_walked += len(here)
        seen.update(here.values())
        if listed is None:
            continue
        todo: Iterable[str] = here
        if before is not None:
            last_here = before.dirs.get(prefix)
            if last_here == here:  # the same names and inodes: in C
                todo = set()
            elif last_here is None:
                todo = set(here)
            else:
                todo = {n for n, ino in here.items() if last_here.get(n) != ino}
            todo.update(n for n in again.get(prefix, ()) if n in here)
            todo = sorted(todo)
        to_read: list[tuple[str, int, Done]] = []
        for name in todo:
            path = prefix + name
            ino = here[name]
            rec = listed.get(path)
            if rec is None:
                unlisted += 1
                bad("unlisted", path, "a file the manifest does not list")
                continue
            if rec.inode != ino:
                bad("replaced", path, f"inode {ino}, the manifest says {rec.inode}")
                continue
            got = vol.stats.get(ino)  # a stat only for an inode not met yet
            if got is None:
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    bad_paths.add(path)
                    continue
                got = vol.stats[ino] = (st.st_size, st.st_mtime_ns)
            if rec.size != got[0]:
                bad("size", path, f"{got[0]} bytes, the manifest says {rec.size}", ino)
                continue
            if rec.mtime_ns != got[1]:
                bad("mtime", path, "modified since the manifest was written", ino)
            if (volume, ino) not in read and chosen(ino):
                read.add((volume, ino))

                def done(digest: str | None, n: int, path: str = path,
                         rec: manifest.Record = rec) -> None:
                    report.inodes_read += 1
                    report.bytes_read += n
                    if digest is None:
                        bad("unreadable", path, "the file cannot be read (I/O error?)",
                            rec.inode)
                    elif digest != rec.digest:
                        bad("content", path, "content differs from its digest (blake2b "
                            f"{digest[:16]}…, expected {rec.digest[:16]}…)", rec.inode)

                to_read.append((name, got[0], done))
        if to_read:
            hasher.submit(snap_fd, prefix, to_read)
    report.files += files_walked
    if listed is None:
        return None
    # Every walked path the manifest does not list was compared (it is new, or was
    # unlisted last time too), so when the counts agree, none is missing.
    if files_walked - unlisted != len(listed):
        found = {prefix + name for prefix, here in walked.items() for name in here}
        for path in sorted(listed.keys() - found):
            bad("missing", path, "listed in the manifest, gone from the snapshot")
    return _Walked(sid, walked, bad_paths)


def _record(ctx: Context, client: str, report: Report, when: dt.datetime,
            window: tuple[int, int] | None) -> None:
    """The outcome on the client (status, metrics, dashboard read it)."""
    stamp = when.isoformat(timespec="seconds")
    facts = {"check_at": stamp, "check_damaged": str(len(report.damaged)),
             "check_problems": str(len(report.findings))}
    if window is not None:
        start, width = window
        end = start + width
        facts["check_position"] = str(end % PPM)
        if end >= PPM:
            facts["check_covered_at"] = stamp
    set_xattrs(ctx.store.client_dir(client), facts)


def repair_manifests(ctx: Context, client: str, volume: str | None = None,
                     progress: Progress | None = None) -> list[str]:
    """Write the manifest of every snapshot that has none; returns ``volume/id`` of each.
    The snapshots themselves are only read."""
    store, storage = ctx.store, ctx.storage
    done = []
    volumes = [resolve.pick_volume(store, client, volume)] if volume else store.volumes(client)
    for vname in volumes:
        have = set(storage.manifest_ids(client, vname))
        prev: str | None = None
        for sid in resolve.snapshot_ids(store, client, vname):
            if sid not in have:
                if progress is not None:
                    progress(f"{client}/{vname}/{sid}")
                tree = store.snapshots_dir(client, vname) / sid
                with OpenSnapshot(store, client, vname, sid) as snap:
                    files = [(i.path, i.st) for i in content.stored_files(snap.fd)]
                    before = manifest.previous(storage, client, vname, prev)
                    same_fs = prev is not None and os.lstat(tree).st_dev == \
                        os.lstat(tree.parent / prev).st_dev
                    data, stats = manifest.build(tree, files, before, same_fs,
                                                 since_ns(tree.parent / prev if prev else None))
                storage.write_manifest(client, vname, sid, data)
                LOG.info("client=%s volume=%s snapshot=%s manifest repaired: %d files, "
                         "%d hashed", client, vname, sid, stats.files, stats.hashed_files)
                done.append(f"{vname}/{sid}")
            prev = sid
    return done
