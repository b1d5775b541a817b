"""git's ``upload-archive`` protocol, served from a client's snapshots.

A reflashed device runs the stock client::

    git archive --remote=ssh://SN@server[:port]/VOLUME TREEISH [PATH...] | tar x

git starts ``git-upload-archive '/VOLUME'`` over SSH (OpenSSH's forced command or the
embedded server, both ending in the dispatcher), and the exchange is git's own
(``builtin/upload-archive.c`` and ``builtin/archive.c`` in git's sources):

* the client sends each argument as a pkt-line ``argument <arg>``, then a flush-pkt;
* the server answers ``NACK <reason>`` (git prints ``fatal: git archive: NACK <reason>``
  and exits 128), or ``ACK`` and a flush;
* after the ACK the archive travels in side-band 1 packets, progress in band 2 and a
  fatal error in band 3; a flush-pkt ends the stream.

No git repository is involved: ``/VOLUME`` names one of the login's volumes
(``/clients/SN/VOLUME``: an aliased client's), and TREEISH is ``latest`` or ``HEAD``, a
snapshot id, or a time (the newest snapshot at or before it), resolved by ``resolve`` as
every restore path does. Files are reached through ``access`` only, so nothing in the
snapshot is followed.

Every refusal is decided before the ACK and before any file of a snapshot is opened:
options are checked against what git's own server accepts from a remote client (so
``--remote``, ``--exec``, ``--output`` and ``--add-file`` are refused as git refuses
them), a path with ``..`` is refused by ``access.split_path``, the volume must be one the
login may read, and the tree-ish must name a snapshot. Only then is the snapshot opened
(with its shared lock) and each requested path looked up.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import re
import select
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xsbackup.clients.registry import Registry
from xsbackup.errors import PathNotFound, RequestRefused, XsbackupError
from xsbackup.logs import LOG
from xsbackup.restore.access import OpenSnapshot, fake_stat, open_dir, split_path
from xsbackup.restore.archive import (
    GitTarInfo,
    Item,
    check_readable,
    tar_items,
    walk,
    zip_items,
)
from xsbackup.restore.resolve import pick_volume, resolve
from xsbackup.store import Store

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

LARGE_PACKET_MAX = 65520            # git's largest pkt-line, its 4-byte header included
BAND_PAYLOAD = LARGE_PACKET_MAX - 5  # less the header and the band byte
FLUSH = b"0000"
MAX_ARGS = 64                       # git's server refuses more
FORMATS = ("tar", "tgz", "tar.gz", "zip")
TGZ_LEVEL = 6                       # gzip's default, which git's tgz filter uses
ZIP_LEVEL = 6                       # git's own zip default
_LEVEL_RE = re.compile(r"-([0-9])")
# Options git's server refuses from a remote client, with git's own reasons.
_GIT_REFUSED = {
    "--remote": "Unexpected option --remote",
    "--exec": "the option '--exec' requires '--remote'",
    "--output": "Unexpected option --output",
    "-o": "Unexpected option --output",
    "--add-file": "options '--add-file' and '--remote' cannot be used together",
    "--add-virtual-file": "options '--add-virtual-file' and '--remote' cannot be used "
                          "together",
}
# Options git's server accepts that need a git repository or a work tree.
_NO_REPOSITORY = ("--worktree-attributes", "--mtime")


# ---- pkt-lines ---------------------------------------------------------------------------


def pkt(payload: bytes) -> bytes:
    """One pkt-line: four hex digits of length (themselves included), then the payload."""
    return b"%04x" % (len(payload) + 4) + payload


def read_arguments(fd: int, timeout: int) -> list[str]:
    """The client's ``argument`` pkt-lines up to the flush-pkt. RequestRefused when it
    sends anything else, too many, or nothing for ``timeout`` seconds (0: no limit)."""
    args: list[str] = []
    while True:
        head = _read_exact(fd, 4, timeout)
        try:
            size = int(head, 16)
        except ValueError:
            raise RequestRefused("git archive: protocol error (bad pkt-line)") from None
        if size == 0:
            return args
        if size < 4 or size > LARGE_PACKET_MAX:
            raise RequestRefused("git archive: protocol error (bad pkt-line length)")
        line = _read_exact(fd, size - 4, timeout)
        if len(args) >= MAX_ARGS:
            raise RequestRefused(f"Too many options (>{MAX_ARGS - 1})")
        if not line.startswith(b"argument "):
            raise RequestRefused("'argument' token or flush expected")
        args.append(os.fsdecode(line[len(b"argument "):].removesuffix(b"\n")))


def _read_exact(fd: int, n: int, timeout: int) -> bytes:
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    parts: list[bytes] = []
    while n:
        if not poll.poll(timeout * 1000 if timeout else -1):
            raise RequestRefused(f"git archive: nothing received for {timeout}s")
        part = os.read(fd, n)
        if not part:
            raise RequestRefused("git archive: the client hung up before its flush-pkt")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def write_all(out: io.RawIOBase, data: bytes) -> None:
    """All of ``data`` to a raw stream that may write only part of it at a time."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n or 0:]


class Band(io.RawIOBase):
    """A writable stream that frames everything written to it as side-band packets."""

    def __init__(self, raw: io.RawIOBase, band: int) -> None:
        super().__init__()
        self.raw, self.prefix = raw, bytes([band])

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), BAND_PAYLOAD):
            chunk = view[start:start + BAND_PAYLOAD]
            write_all(self.raw, b"%04x" % (len(chunk) + 5) + self.prefix + chunk)
        return len(view)


# ---- arguments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the client asked for, as git's ``parse_archive_args`` reads it."""

    fmt: str = "tar"
    prefix: str = ""
    treeish: str = ""
    paths: tuple[str, ...] = ()   # normalised ("a/b"), each checked by split_path
    list_only: bool = False
    verbose: bool = False
    level: int | None = None


def parse_arguments(args: list[str]) -> Options:
    """Parse the client's arguments as git's server would; RequestRefused names the
    first one it refuses. Options may come before or after the tree-ish, until ``--``."""
    fmt, prefix, level = "tar", "", None
    list_only = verbose = False
    plain: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            plain.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if name in _GIT_REFUSED:
            raise RequestRefused(_GIT_REFUSED[name])
        if name in _NO_REPOSITORY:
            raise RequestRefused(f"option {name} is not supported here: there is no git "
                                 "repository, only snapshots")
        if name in ("--format", "--prefix"):
            if not eq:
                if i >= len(args):
                    raise RequestRefused(f"option '{name[2:]}' requires a value")
                value = args[i]
                i += 1
            if name == "--format":
                fmt = value
            else:
                prefix = value
        elif arg in ("-l", "--list"):
            list_only = True
        elif arg in ("-v", "--verbose"):
            verbose = True
        elif _LEVEL_RE.fullmatch(arg):
            level = int(arg[1:])
        elif arg.startswith("-") and arg != "-":
            raise RequestRefused(f"unknown option '{arg.lstrip('-')[:40]}'")
        else:
            plain.append(arg)
    if list_only:
        return Options(list_only=True)
    if fmt not in FORMATS:
        raise RequestRefused(f"Unknown archive format '{fmt[:40]}' (this server has "
                             f"{', '.join(FORMATS)})")
    if level is not None and fmt == "tar":
        raise RequestRefused(f"Argument not supported for format 'tar': -{level}")
    if "\0" in prefix:
        raise RequestRefused("the prefix contains a NUL byte")
    if not plain:
        raise RequestRefused("a tree-ish is required: latest (or HEAD), a snapshot id "
                             "or a time")
    paths = tuple("/".join(split_path(p)) for p in plain[1:])
    if "" in paths:  # the snapshot's root: the whole tree
        paths = ()
    return Options(fmt, prefix, plain[0], paths, False, verbose, level)


# ---- the repository path: which volume -----------------------------------------------------


@dataclass(frozen=True)
class Selection:
    client: str
    volume: str
    snapshot: str


def select_snapshot(store: Store, login: str, source: str, volume: str,
                    treeish: str) -> Selection:
    """The snapshot the request names: ``source`` (an aliased client, or the login) must
    be readable, ``volume`` (or the only one) exist, and ``treeish`` name a snapshot."""
    client = check_readable(Registry(store), login, source or login)
    vol = pick_volume(store, client, volume or None)
    at = None if treeish in ("HEAD", "latest") else treeish
    return Selection(client, vol, resolve(store, client, vol, at))


def check_paths(snap_fd: int, paths: tuple[str, ...]) -> None:
    """Each requested path is in the snapshot (a file or a directory, reached without
    following anything); PathNotFound names the first that is not, as git does."""
    for path in paths:
        parts = path.split("/")
        try:
            parent = open_dir(snap_fd, parts[:-1])
        except PathNotFound:
            raise PathNotFound(f"pathspec '{path[:80]}' did not match any files") from None
        try:
            os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise PathNotFound(f"pathspec '{path[:80]}' did not match any files") from None
        finally:
            os.close(parent)


def items(snap_fd: int, paths: tuple[str, ...]) -> Iterator[Item]:
    """The snapshot's items, or only those at or below ``paths`` and the directories
    that lead to them, as git archives a pathspec."""
    if not paths:
        return walk(snap_fd)

    def keep(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") or p.startswith(path + "/")
                   for p in paths)

    return walk(snap_fd, keep=keep)


# ---- the exchange ---------------------------------------------------------------------------


def serve(store: Store, login: str, source: str, volume: str, out: io.RawIOBase,
          read_args: Callable[[], list[str]]) -> int:
    """One ``git-upload-archive`` session on ``out`` (raw, unbuffered). A refusal before
    the ACK is raised (the caller answers ``NACK``); an error after it goes in band 3."""
    opts = parse_arguments(read_args())
    if opts.list_only:
        write_all(out, pkt(b"ACK\n") + FLUSH)
        write_all(out, pkt(b"\1" + "".join(f"{f}\n" for f in FORMATS).encode()) + FLUSH)
        return 0
    sel = select_snapshot(store, login, source, volume, opts.treeish)
    with OpenSnapshot(store, sel.client, sel.volume, sel.snapshot) as snap:
        check_paths(snap.fd, opts.paths)
        write_all(out, pkt(b"ACK\n") + FLUSH)
        LOG.info("client=%s volume=%s snapshot=%s git archive (%s, %d paths) for %s started",
                 sel.client, sel.volume, sel.snapshot, opts.fmt, len(opts.paths), login)
        progress = Band(out, 2)
        progress.write(f"xsbackup: {sel.volume}/{sel.snapshot} of {sel.client}\n".encode())
        try:
            count = _stream(snap.fd, opts, out, progress)
        except (OSError, XsbackupError) as e:
            LOG.error("client=%s volume=%s snapshot=%s git archive for %s failed: %s",
                      sel.client, sel.volume, sel.snapshot, login, e)
            message = e.message if isinstance(e, XsbackupError) else os.strerror(e.errno or 5)
            Band(out, 3).write(f"xsbackup: archive failed: {message}\n".encode())
            return 1
        progress.write(f"xsbackup: {count} items\n".encode())
        write_all(out, FLUSH)
    LOG.info("client=%s volume=%s snapshot=%s git archive of %d items sent to %s",
             sel.client, sel.volume, sel.snapshot, count, login)
    return 0


def _stream(snap_fd: int, opts: Options, out: io.RawIOBase, progress: Band) -> int:
    selected = items(snap_fd, opts.paths)
    if opts.prefix.endswith("/"):  # git's first entry: the prefix's own directory
        selected = itertools.chain([_root(snap_fd)], selected)
    if opts.verbose:
        selected = _reported(selected, progress, opts.prefix)
    data = io.BufferedWriter(Band(out, 1), BAND_PAYLOAD)
    if opts.fmt == "zip":
        level = ZIP_LEVEL if opts.level is None else opts.level
        count = zip_items(selected, data, opts.prefix, level)
    elif opts.fmt == "tar":
        count = tar_items(selected, data, opts.prefix, GitTarInfo)
    else:
        level = TGZ_LEVEL if opts.level is None else opts.level
        with gzip.GzipFile(fileobj=data, mode="wb", compresslevel=level, mtime=0) as gz:
            count = tar_items(selected, gz, opts.prefix,  # type: ignore[arg-type]
                              GitTarInfo)
    data.flush()
    return count


def _root(snap_fd: int) -> Item:
    """The snapshot's root as an item named "" (so ``prefix`` + its path is the prefix),
    with its recorded mode and mtime."""
    st = os.fstat(snap_fd)
    mode, uid, gid, major, minor = fake_stat(snap_fd, st)
    return Item("", snap_fd, ".", st, mode, uid, gid, major, minor)


def _reported(selected: Iterator[Item], progress: Band, prefix: str) -> Iterator[Item]:
    """``--verbose``: each name on band 2 (git prints it on stderr) as it is archived."""
    for item in selected:
        progress.write(os.fsencode(prefix + item.path) + b"\n")
        yield item
