"""Snapshots: statistics and facts (xattrs) (DESIGN.md section 4).

The post-processor writes a snapshot's facts on ``incoming/<id>`` and syncs them before
the storage backend makes it visible (``storage.Backend.promote``). Directories are never
hardlinked, so the snapshot directory's xattrs belong to that snapshot alone; nothing
here ever writes to the content of the files inside. The walk that counts them also takes
group and world write away from their stored modes (``storage.permissions``; the
client's modes stay recorded for restore).

Facts are ours alone. A client sending ``rsync -X`` could give its top directory, which
becomes the snapshot directory, ``user.xsbackup.*`` xattrs of its own: ingest's rsync
drops them (``upload``), ``write_facts`` removes any it finds, and ``read_facts`` reads
only the names in ``FACT_KEYS``, from the snapshot directory only.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from xsbackup.storage.permissions import tighten as tighten_item
from xsbackup.store import XATTR_PREFIX, get_xattrs, set_xattrs

# Every fact the post-processor writes on a snapshot directory; nothing else is a fact.
FACT_KEYS = ("created", "files", "bytes", "new_bytes", "linked_files", "stats", "cjson",
             "origin", "manifest")


@dataclass
class Stats:
    files: int = 0          # regular files
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0          # apparent size of regular files
    linked_files: int = 0   # files sharing their inode with the previous snapshot
    new_files: int = 0
    new_bytes: int = 0      # bytes of files not shared with the previous snapshot

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _prev_inodes(prev: Path | None, rel: str) -> dict[str, int]:
    if prev is None:
        return {}
    out: dict[str, int] = {}
    try:
        with os.scandir(prev / rel if rel else prev) as it:
            for e in it:
                out[e.name] = e.inode()
    except OSError:
        return {}
    return out


def compute_stats(tree: Path, previous: Path | None, match: re.Pattern[str] | None = None,
                  found: list[str] | None = None, tighten: bool = False,
                  regular: list[tuple[str, os.stat_result]] | None = None) -> Stats:
    """Walk ``tree`` once (scandir, no symlink following), comparing inodes by path with
    ``previous``. One directory listing of each tree per directory; no file is opened.
    With ``match``, the relative paths of non-directories whose name matches are
    appended to ``found`` in the same walk (the post-processor's metadata files). With
    ``tighten``, every item (``tree`` included) loses group and world write on the way
    (``storage.permissions.tighten``). With ``regular``, every regular file's relative
    path and ``lstat`` are appended to it (the content manifest's input)."""
    st = Stats()
    if tighten:
        tighten_item(str(tree), os.lstat(tree))
    stack = [""]
    while stack:
        rel = stack.pop()
        prev = _prev_inodes(previous, rel)
        with os.scandir(tree / rel if rel else tree) as it:
            for e in it:
                s = e.stat(follow_symlinks=False)
                if tighten:
                    tighten_item(e.path, s)
                mode = s.st_mode
                if stat.S_ISDIR(mode):
                    st.dirs += 1
                    stack.append(f"{rel}/{e.name}" if rel else e.name)
                    continue
                if match is not None and found is not None and match.match(e.name):
                    found.append(f"{rel}/{e.name}" if rel else e.name)
                if stat.S_ISREG(mode):
                    st.files += 1
                    st.bytes += s.st_size
                    if regular is not None:
                        regular.append((f"{rel}/{e.name}" if rel else e.name, s))
                    if prev.get(e.name) == s.st_ino:
                        st.linked_files += 1
                    else:
                        st.new_files += 1
                        st.new_bytes += s.st_size
                elif stat.S_ISLNK(mode):
                    st.symlinks += 1
                else:
                    st.others += 1
    return st


def write_facts(path: Path, facts: dict[str, object]) -> None:
    """Write per-snapshot facts as ``user.xsbackup.<name>`` xattrs (JSON for non-strings),
    after removing every other ``user.xsbackup.*`` xattr of ``path``: none is ours."""
    encoded = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in
               facts.items()}
    for name in get_xattrs(path):
        if name not in encoded:
            os.removexattr(path, XATTR_PREFIX + name, follow_symlinks=False)
    set_xattrs(path, encoded)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_facts(path: Path) -> dict[str, object]:
    """The facts (``FACT_KEYS``) of the snapshot directory ``path``."""
    out: dict[str, object] = {}
    for k, v in get_xattrs(path).items():
        if k not in FACT_KEYS:
            continue
        try:
            out[k] = orjson.loads(v) if v[:1] in ("{", "[") or v.isdigit() else v
        except orjson.JSONDecodeError:
            out[k] = v
    return out
