"""Hashing what a promotion's manifest must read (``snapshots.manifest`` owns the
format): the files the walk found not kept, straight from its integers
(``snapshot.Changes``) into record lines, or any list of ``(path, lstat)`` into records;
and every regular file of a tree, for a manifest built whole. Files are read in inode
order (nearer on disk), through ``digests``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xsbackup.snapshots.digests import digest_all
from xsbackup.snapshots.manifest_lines import Record, record_lines
from xsbackup.snapshots.snapshot import Changes, Lstat


@dataclass
class BuildStats:
    files: int = 0          # regular files listed
    reused: int = 0         # records (digests) taken from the previous snapshot's manifest
    hashed_files: int = 0   # files read and hashed
    hashed_bytes: int = 0   # bytes read and hashed
    how: str = "built"      # linked, delta (over a base), merged (into it) or built

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def all_files(tree: Path) -> Iterator[tuple[str, Lstat]]:
    """Every regular file below ``tree`` (no symlink followed), with its lstat."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(tree / rel if rel else tree) as it:
            for e in it:
                path = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif e.is_file(follow_symlinks=False):
                    yield path, e.stat(follow_symlinks=False)


def _digests(tree: Path, files: list[tuple[str, int]],
             stats: BuildStats) -> list[tuple[str, int]]:
    """``digests.digest_all`` of ``files`` (``(path below tree, size)``), counted."""
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        got = digest_all(files, fd)
    finally:
        os.close(fd)
    stats.hashed_files += len(got)
    stats.hashed_bytes += sum(n for _, n in got)
    return got


def hash_files(tree: Path, files: list[tuple[str, Lstat]], stats: BuildStats) -> list[Record]:
    """The records of ``files`` (``(path below tree, lstat)``), their content read."""
    files = sorted(files, key=lambda f: f[1].st_ino)
    got = _digests(tree, [(p, st.st_size) for p, st in files], stats)
    return [Record(p, st.st_ino, st.st_size, st.st_mtime_ns, d)
            for (p, st), (d, _) in zip(files, got, strict=True)]


def new_lines(tree: Path, changes: Changes, stats: BuildStats) -> list[tuple[str, bytes]]:
    """The records of the files the walk found not kept (``changes``), their content
    read, as ``(path, line with its newline)`` sorted by path: what a delta manifest
    lists and a merge splices in. ``hash_files``' work straight from the walk's
    integers, with no record object made: a promotion's thousand changed files cost
    their reads and little more."""
    paths = changes.new
    inodes, sizes = changes.ids[0::2].tolist(), changes.ids[1::2].tolist()
    order = sorted(range(len(paths)), key=inodes.__getitem__)
    got = _digests(tree, [(paths[k], sizes[k]) for k in order], stats)
    digests = [""] * len(paths)
    for k, (d, _) in zip(order, got, strict=True):
        digests[k] = d
    lines = record_lines(paths, inodes, sizes, changes.mtimes(), digests)
    return sorted(zip(paths, lines, strict=True))
