"""A manifest's record line is ``orjson.dumps`` of its dict, whatever the path, inode,
size, mtime and digest: ``manifest_lines.line`` builds the usual line by a format
around orjson's encoding of the path, and every line it writes must be the very bytes
the dict form gives (a reader, an older writer and ``check`` all agree on them)."""

from __future__ import annotations

import os

import orjson
from hypothesis import given
from hypothesis import strategies as st

from xsbackup.snapshots.manifest_lines import Record, line, load, record, record_lines

# Paths as the walk gives them: any text, and names that are not UTF-8 (os.fsdecode
# turns such bytes into surrogate escapes).
names = st.one_of(st.text(min_size=1, max_size=40),
                  st.binary(min_size=1, max_size=40).map(os.fsdecode))
digests = st.one_of(st.binary(min_size=32, max_size=32).map(bytes.hex),
                    st.text(max_size=70))  # a damaged previous record's digest too
u64 = st.integers(min_value=0, max_value=2**64 - 1)


def by_dict(r: Record) -> bytes:
    try:
        return orjson.dumps({"p": r.path, "i": r.inode, "s": r.size, "m": r.mtime_ns,
                             "d": r.digest})
    except orjson.JSONEncodeError:
        return orjson.dumps({"x": os.fsencode(r.path).hex(), "i": r.inode, "s": r.size,
                             "m": r.mtime_ns, "d": r.digest})


@given(path=names, inode=u64, size=u64,
       mtime=st.integers(min_value=-2**63, max_value=2**63 - 1), digest=digests)
def test_a_line_is_the_dicts_json_and_reads_back(path: str, inode: int, size: int,
                                                 mtime: int, digest: str) -> None:
    r = Record(path, inode, size, mtime, digest)
    raw = line(r)
    assert raw == by_dict(r)
    assert record(load(raw, 1), 1) == r


@given(rows=st.lists(st.tuples(names, u64, u64, st.integers(min_value=-2**63,
                                                            max_value=2**63 - 1),
                               st.binary(min_size=32, max_size=32).map(bytes.hex)),
                     max_size=8))
def test_a_promotions_lines_are_the_same_lines(
        rows: list[tuple[str, int, int, int, str]]) -> None:
    """``record_lines`` (a promotion's freshly hashed files, in one loop) writes each
    file's ``line`` and its newline."""
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 5
    assert record_lines(*columns) == [by_dict(Record(*r)) + b"\n" for r in rows]
