"""Restore: plans, archive streams and manifests, used by the CLI, SSH and HTTP alike.

Archives undo what ``rsync --fake-super`` recorded (see ``access``), so modes (setuid
included), owners, symlinks and devices come back exactly as the client sent them, while
nothing on the server is ever followed: every item is reached through ``access``, below a
snapshot held open with a shared flock. Tar and zip are written to the output as they
are produced, in constant memory (``tarfile`` in stream mode; ``zipfile`` with data
descriptors on an unseekable stream), files copied in 1 MiB chunks.

Who may read what: a client reads its own snapshots, and those of the clients it
aliases (a replaced device reads its predecessor's), never the other way round.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import struct
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from xsbackup.clients.registry import Registry
from xsbackup.errors import InvalidName, NotReadable
from xsbackup.logs import LOG
from xsbackup.restore.access import (
    CHUNK,
    O_DIR,
    O_FILE,
    OpenSnapshot,
    fake_stat,
    fake_stat_at,
    open_dir,
    split_path,
)
from xsbackup.restore.resolve import pick_volume, resolve
from xsbackup.snapshots import manifest as content_manifest
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.storage.base import Backend
from xsbackup.store import Store, check_client

TAR_BUFSIZE = 64 << 10


# ---- who reads what, and which snapshot ----------------------------------------------


def readable_clients(registry: Registry, login: str) -> list[str]:
    """The login itself, then the clients it aliases (read-only)."""
    return [login, *registry.get(login).aliases]


def check_readable(registry: Registry, login: str, source: str) -> str:
    check_client(source)
    if source not in readable_clients(registry, login):
        raise NotReadable(f"{login} may not read the snapshots of {source}")
    return source


@dataclass(frozen=True)
class Plan:
    client: str          # whose snapshot
    login: str           # who restores
    volume: str
    snapshot: str
    source: str          # rsync source, relative to the login
    command: str
    facts: dict[str, Any]
    ssh_port: int = 22

    def as_dict(self) -> dict[str, Any]:
        return {"client": self.client, "login": self.login, "volume": self.volume,
                "snapshot": self.snapshot, "source": self.source, "command": self.command,
                "ssh_port": self.ssh_port, "facts": self.facts}


def plan(store: Store, login: str, volume: str | None, at: str | None, host: str,
         ssh_port: int, source_client: str | None = None) -> Plan:
    registry = Registry(store)
    client = check_readable(registry, login, source_client or login)
    vol = pick_volume(store, client, volume)
    sid = resolve(store, client, vol, at)
    prefix = "" if client == login else f"clients/{client}/"
    source = f"{login}@{host}:{prefix}{vol}/{sid}/"
    port = ssh_port or 22  # 0: no embedded server, so OpenSSH's port serves restores
    rsh = "" if port == 22 else f"-e 'ssh -p {port}' "
    return Plan(client, login, vol, sid, source, f"rsync -a {rsh}{source} <target>/",
                read_facts(store.snapshots_dir(client, vol) / sid), port)


def content_type(name: str) -> str:
    kind, _ = mimetypes.guess_type(name)
    return kind or "application/octet-stream"


# ---- walking and archiving -----------------------------------------------------------


@dataclass(frozen=True)
class Item:
    path: str            # archive name ("a/b/c"; str with surrogateescape bytes)
    dir_fd: int          # the directory holding it (valid while the walk is there)
    name: str
    st: os.stat_result
    mode: int            # the client's mode (fake-super)
    uid: int
    gid: int
    major: int
    minor: int


def walk(dir_fd: int, prefix: str = "",
         keep: Callable[[str], bool] | None = None) -> Iterator[Item]:
    """Depth-first, sorted by name, each directory before its contents. Nothing is
    followed: directories are entered with O_NOFOLLOW relative to their parent's fd.
    ``keep``: only the paths it accepts are listed (a directory it refuses is not
    entered)."""
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        path = f"{prefix}{name}"
        if keep is not None and not keep(path):
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, O_DIR, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                mode, uid, gid, major, minor = fake_stat(sub, st)
                yield Item(path, dir_fd, name, st, mode, uid, gid, major, minor)
                yield from walk(sub, path + "/", keep)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            # lgetxattr through the directory's descriptor: one call, no open, and the
            # final component is never followed.
            mode, uid, gid, major, minor = fake_stat_at(dir_fd, name, st)
            yield Item(path, dir_fd, name, st, mode, uid, gid, major, minor)
        # A real symlink or special file cannot be in a fake-super snapshot: skip it.


def _read_small(item: Item, limit: int = 1 << 16) -> bytes:
    fd = os.open(item.name, O_FILE, dir_fd=item.dir_fd)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


class _FdReader:
    """A file object over a descriptor that is opened only while tar reads it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        return os.read(self.fd, CHUNK if n < 0 else n)


def write_tar(snap_fd: int, path: str, out: IO[bytes]) -> int:
    """Stream the tree at ``path`` (the whole snapshot when empty) as a POSIX tar."""
    base = open_dir(snap_fd, split_path(path))
    try:
        return tar_items(walk(base), out)
    finally:
        os.close(base)


class GitTarInfo(tarfile.TarInfo):
    """A tar header as ``git archive`` writes one: a name (or link target) that fits in
    the ustar field goes there as its raw bytes, non-ASCII or not; a pax ``path`` (or
    ``linkpath``) record only for one that does not fit. (tarfile's own pax format puts
    every non-ASCII name in a pax record.) Numbers that need pax get it as in tarfile."""

    def create_pax_header(self, info: Any, encoding: str) -> bytes:
        info["magic"] = tarfile.POSIX_MAGIC
        pax: dict[str, str] = {}
        for name, key in (("name", "path"), ("linkname", "linkpath")):
            if len(info[name].encode("utf-8", "surrogateescape")) > tarfile.LENGTH_NAME:
                pax[key] = info[name]
        for name, digits in (("uid", 8), ("gid", 8), ("size", 12), ("mtime", 12)):
            value = info[name]
            whole = round(value) if isinstance(value, float) else value
            if not 0 <= whole < 8 ** (digits - 1):
                info[name], pax[name] = 0, str(value)
            elif isinstance(value, float):
                info[name], pax[name] = whole, str(value)
        head: bytes = self._create_pax_generic_header(  # type: ignore[attr-defined]
            pax, tarfile.XHDTYPE, "utf-8") if pax else b""
        ustar: bytes = self._create_header(  # type: ignore[attr-defined]
            info, tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        return head + ustar


def tar_items(items: Iterable[Item], out: IO[bytes], prefix: str = "",
              tarinfo: type[tarfile.TarInfo] = tarfile.TarInfo) -> int:
    """Stream ``items`` as a POSIX tar, each named ``prefix`` + its path, with headers
    made by ``tarinfo`` (``GitTarInfo``: as git archive makes them)."""
    count = 0
    # tarfile's stream buffer is a bytes object it appends to and slices: keep it
    # small (the output is buffered already), or every 512-byte header copies it.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                  encoding="utf-8", errors="surrogateescape",
                  bufsize=TAR_BUFSIZE, tarinfo=tarinfo) as tar:
        for item in items:
            ti = tarinfo(prefix + item.path)
            ti.mode = stat.S_IMODE(item.mode)
            ti.uid, ti.gid = item.uid, item.gid
            ti.mtime = item.st.st_mtime
            ti.uname = ti.gname = ""
            kind = stat.S_IFMT(item.mode)
            fobj = None
            fd = -1
            if kind == stat.S_IFDIR:
                ti.type = tarfile.DIRTYPE
            elif kind == stat.S_IFLNK:
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.fsdecode(_read_small(item))
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                ti.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = item.major, item.minor
            elif kind == stat.S_IFIFO:
                ti.type = tarfile.FIFOTYPE
            elif kind == stat.S_IFREG:
                fd = os.open(item.name, O_FILE, dir_fd=item.dir_fd)
                os.set_blocking(fd, True)
                ti.size = os.fstat(fd).st_size
                fobj = _FdReader(fd)
            else:
                continue  # sockets cannot be archived
            try:
                tar.addfile(ti, fobj)
            finally:
                if fd >= 0:
                    os.close(fd)
            count += 1
    return count


class _RawNameZipInfo(zipfile.ZipInfo):
    """A name that is not valid UTF-8 is stored as its raw bytes without the UTF-8 flag
    (what Info-ZIP does with such names), instead of failing the whole archive."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # zipfile's own method name
        if self.filename.isascii():
            return self.filename.encode("ascii"), self.flag_bits
        try:
            return self.filename.encode("utf-8"), self.flag_bits | 0x800
        except UnicodeEncodeError:
            return self.filename.encode("utf-8", "surrogateescape"), self.flag_bits


def write_zip(snap_fd: int, path: str, out: IO[bytes]) -> int:
    """Stream the tree at ``path`` as a zip (Info-ZIP symlinks and Unix modes)."""
    base = open_dir(snap_fd, split_path(path))
    try:
        return zip_items(walk(base), out)
    finally:
        os.close(base)


def zip_items(items: Iterable[Item], out: IO[bytes], prefix: str = "", level: int = 1) -> int:
    """Stream ``items`` as a zip, each named ``prefix`` + its path, deflated at ``level``
    (0: stored)."""
    count = 0
    method = zipfile.ZIP_DEFLATED if level else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method,
                     compresslevel=level or None, allowZip64=True) as zf:
        for item in items:
            kind = stat.S_IFMT(item.mode)
            stamp = time.gmtime(max(item.st.st_mtime, 315532800))[:6]
            name = prefix + item.path
            if kind == stat.S_IFDIR and not name.endswith("/"):  # "" + prefix "p/": "p/"
                name += "/"
            zi = _RawNameZipInfo(name, date_time=stamp)
            zi.external_attr = (item.mode & 0xFFFF) << 16
            zi.create_system = 3  # Unix, so modes and symlinks are honoured
            # Info-ZIP's extended timestamp: the exact second in UTC (the DOS time above
            # is local time in steps of two seconds).
            zi.extra = struct.pack("<HHBl", 0x5455, 5, 1,
                                   max(min(int(item.st.st_mtime), 2**31 - 1), -2**31))
            if kind == stat.S_IFDIR:
                zi.external_attr |= 0x10
                zf.writestr(zi, b"")
            elif kind == stat.S_IFLNK:
                zf.writestr(zi, _read_small(item))
            elif kind == stat.S_IFREG:
                zi.compress_type = method
                fd = os.open(item.name, O_FILE, dir_fd=item.dir_fd)
                try:
                    os.set_blocking(fd, True)
                    with zf.open(zi, "w", force_zip64=True) as dst:
                        while chunk := os.read(fd, CHUNK):
                            dst.write(chunk)
                finally:
                    os.close(fd)
            else:
                continue  # devices, fifos and sockets have no zip form
            count += 1
    return count


def write_archive(store: Store, client: str, volume: str, sid: str, path: str, fmt: str,
                  out: IO[bytes]) -> int:
    if fmt not in ("tar", "zip"):
        raise InvalidName(f"unknown archive format {fmt!r}: use tar or zip")
    with OpenSnapshot(store, client, volume, sid) as snap:
        return (write_tar if fmt == "tar" else write_zip)(snap.fd, path, out)


def manifest(store: Store, client: str, volume: str, sid: str,
             storage: Backend | None = None) -> Iterator[dict[str, Any]]:
    """Each item of a snapshot as the client sent it: path, type, mode, size, mtime; with
    ``storage``, a regular file also has ``blake2b``, its content digest from the
    snapshot's content manifest (absent when the snapshot has none, or the file is not
    the inode the manifest recorded)."""
    digests = _digests(storage, client, volume, sid) if storage is not None else {}
    with OpenSnapshot(store, client, volume, sid) as snap:
        for item in walk(snap.fd):
            kind = stat.S_IFMT(item.mode)
            entry: dict[str, Any] = {
                "path": item.path, "mode": stat.S_IMODE(item.mode),
                "type": {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                         stat.S_IFREG: "file"}.get(kind, "special"),
                "mtime": int(item.st.st_mtime),
            }
            if kind == stat.S_IFREG:
                entry["size"] = item.st.st_size
                rec = digests.get(item.path)
                if rec is not None and rec.inode == item.st.st_ino:
                    entry["blake2b"] = rec.digest
            elif kind == stat.S_IFLNK:
                entry["target"] = os.fsdecode(_read_small(item))
            yield entry


def _digests(storage: Backend, client: str, volume: str,
             sid: str) -> dict[str, content_manifest.Record]:
    try:
        records = content_manifest.read(storage, client, volume, sid) or []
    except content_manifest.ManifestError as e:
        LOG.warning("client=%s volume=%s snapshot=%s manifest unreadable (%s); digests "
                    "left out", client, volume, sid, e)
        return {}
    return {r.path: r for r in records}
