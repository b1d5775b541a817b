"""``compute_stats``: one walk of a new tree against the previous snapshot, on real files."""

from __future__ import annotations

import os
import re
from pathlib import Path

from xsbackup.snapshots.snapshot import Changes, FileStat, Stats, compute_stats


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return root


def test_first_snapshot_is_all_new(tmp_path: Path) -> None:
    t = tree(tmp_path / "t", {"a": b"12345", "d/b": b"xy", "d/e/c": b""})
    os.symlink("a", t / "link")
    os.mkfifo(t / "d" / "fifo")
    st = compute_stats(t, None)
    assert st == Stats(files=3, dirs=2, symlinks=1, others=1, bytes=7, linked_files=0,
                       new_files=3, new_bytes=7)
    assert st.as_dict()["new_bytes"] == 7


def test_linked_files_are_those_sharing_an_inode_at_the_same_path(tmp_path: Path) -> None:
    prev = tree(tmp_path / "prev", {"same": b"1" * 100, "d/same2": b"2" * 50,
                                    "changed": b"old", "moved": b"m" * 10})
    new = tmp_path / "new"
    (new / "d").mkdir(parents=True)
    os.link(prev / "same", new / "same")
    os.link(prev / "d" / "same2", new / "d" / "same2")
    (new / "changed").write_bytes(b"new content")     # rsync writes a changed file anew
    os.link(prev / "moved", new / "elsewhere")         # same inode, another path: not linked
    (new / "added").write_bytes(b"+" * 7)
    st = compute_stats(new, prev)
    assert (st.files, st.linked_files, st.new_files) == (5, 2, 3)
    assert st.bytes == 100 + 50 + 11 + 10 + 7
    assert st.new_bytes == 11 + 10 + 7


def test_a_missing_previous_directory_counts_as_new(tmp_path: Path) -> None:
    prev = tree(tmp_path / "prev", {"a": b"a"})
    new = tree(tmp_path / "new", {"only/here": b"xyz"})
    os.link(prev / "a", new / "a")
    st = compute_stats(new, prev)
    assert (st.linked_files, st.new_files, st.new_bytes) == (1, 1, 3)


def test_the_same_walk_finds_the_metadata_files(tmp_path: Path) -> None:
    t = tree(tmp_path / "t", {"store/x.metadata": b"{}", "store/y.bin": b"",
                              "top.cjson": b"1", "deep/er/z.metadata": b"{}"})
    os.symlink("/etc/passwd", t / "store" / "link.metadata")  # found, never followed
    found: list[str] = []
    st = compute_stats(t, None, re.compile(r".*\.metadata\Z|.*\.cjson\Z"), found)
    assert sorted(found) == ["deep/er/z.metadata", "store/link.metadata",
                             "store/x.metadata", "top.cjson"]
    assert (st.files, st.symlinks) == (4, 1)


def test_times_past_64_bits_of_nanoseconds_are_kept_aside() -> None:
    """``Changes`` holds times as signed 64-bit nanoseconds; a file dated past that
    (either time) is kept aside whole, and reads back exactly, beside ordinary ones."""
    changes = Changes()
    files = [("a", FileStat(1, 10, 5, 6)), ("far", FileStat(2, 20, 1 << 64, 7)),
             ("odd", FileStat(3, 30, 8, -(1 << 63) - 1)), ("b", FileStat(4, 40, -9, 10))]
    for path, st in files:
        changes.add(path, st)
    assert changes.new_files() == files
    assert changes.mtimes() == [5, 1 << 64, 8, -9]
    assert len(changes.times) == 2 * len(files)
