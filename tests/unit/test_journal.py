"""Journal entries in datastore snapshots: layouts, listing, metadata, .xoj bundles.

Trees are built the way ``rsync --fake-super`` stores them: a client's symlink is a
regular file holding the target, marked by the ``user.rsync.%stat`` xattr.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import threading
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from xsbackup.errors import Refused, XsbackupError, all_errors
from xsbackup.restore import journal
from xsbackup.restore.journal import (
    XOJ_MIME,
    Entry,
    EntryNotFound,
    JournalError,
    NotADatastore,
    detect_layout,
    entry_filename,
    iter_entries,
    list_entries,
    read_metadata,
    write_bundle,
)

PNG = b"\x89PNG\r\n\x1a\n"
SECRET = b"TOP-SECRET-CONTENT-OUTSIDE-THE-SNAPSHOT"
FAKE_STAT = "user.rsync.%stat"
N_V1 = 200


def make_uid(i: int) -> str:
    return str(uuid.UUID(int=random.Random(i).getrandbits(128), version=4))


@dataclass
class Spec:
    uid: str
    meta: dict[str, Any]
    data: bytes | None
    preview: bytes | None


def fake_symlink(path: Path, target: str) -> None:
    """What rsync --fake-super stores for a client's symlink."""
    path.write_text(target)
    os.setxattr(path, FAKE_STAT, b"120777 0,0 0:0")


# ---------------------------------------------------------------- tree builders


def make_v1(root: Path, n: int, version: str | None = "6\n") -> dict[str, Spec]:
    root.mkdir()
    if version is not None:
        (root / "version").write_text(version)
    (root / "index").mkdir()
    (root / "index" / "postlist.DB").write_bytes(b"\0xapian")
    (root / "checksums").mkdir()
    (root / "index_updated").write_text("")
    specs: dict[str, Spec] = {}
    for i in range(n):
        uid = make_uid(i)
        meta = {
            "uid": uid,
            "title": f"Dibujo {i} — 日本語 🎨" + (" Ñandú" if i % 10 == 7 else ""),
            "activity": "org.laptop.Paint" if i % 2 else "org.laptop.WebActivity",
            "mime_type": "image/png" if i % 2 else "text/uri-list",
            "mtime": f"2009-06-01T10:{i // 60:02d}:{i % 60:02d}.000000",
            "timestamp": str(1243850400 + i),
            "title_set_by_user": "1",
            "buddies": '{"1": ["Ana", "#FF0000,#00FF00"]}',
        }
        preview = PNG + bytes(range(256)) + i.to_bytes(4, "big") if i % 3 else None
        data = f"document {i} ñ\n".encode() * (i + 1) if i % 5 else None
        d = root / uid[:2] / uid
        (d / "metadata").mkdir(parents=True)
        for key, value in meta.items():
            (d / "metadata" / key).write_text(value, encoding="utf-8")
        (d / "metadata" / ".title").write_text("half-written temporary title")
        if preview is not None:
            (d / "metadata" / "preview").write_bytes(preview)
        if data is not None:
            (d / "data").write_bytes(data)
        specs[uid] = Spec(uid, meta, data, preview)
    return specs


def make_v0(root: Path) -> dict[str, Spec]:
    store = root / "store"
    (store / "preview").mkdir(parents=True)
    specs: dict[str, Spec] = {}
    for i in range(5):
        uid = make_uid(1000 + i)
        meta: dict[str, Any] = {
            "uid": uid, "title": f"Old entry {i} ü", "activity": "org.laptop.Write",
            "mime_type": "text/plain", "mtime": f"2008-05-0{i + 1}T08:00:00",
            "timestamp": 1209628800 + i, "keep": True, "buddies": {"1": ["x", "y"]},
        }
        data = f"old data {i}\n".encode() * 10 if i != 3 else None
        preview = PNG + b"\xff\xfe\x00" + bytes([i]) if i % 2 == 0 else None
        (store / f"{uid}.metadata").write_text(json.dumps(
            {**meta, "preview": "base64-ish junk"} if i == 2 else meta))
        if data is not None:
            (store / uid).write_bytes(data)
        if preview is not None:
            (store / "preview" / uid).write_bytes(preview)
        specs[uid] = Spec(uid, meta, data, preview)
    bad = make_uid(2000)
    (store / f"{bad}.metadata").write_text('{"title": "broken')
    (store / bad).write_bytes(b"data of an entry with broken metadata")
    specs[bad] = Spec(bad, {}, b"data of an entry with broken metadata", None)
    listed = make_uid(2001)
    (store / f"{listed}.metadata").write_text('["not", "an", "object"]')
    specs[listed] = Spec(listed, {}, None, None)
    (store / "not a uid.metadata").write_text("{}")
    (store / "orphan-data-without-metadata").write_bytes(b"x")
    return specs


@pytest.fixture
def fd_of(tmp_path: Path) -> Iterator[Any]:
    """Open datastore roots the way the server does; every descriptor is closed after."""
    fds: list[int] = []

    def opener(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        return fd

    yield opener
    for fd in fds:
        os.close(fd)


@pytest.fixture(scope="module")
def v1_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Spec]]:
    root = tmp_path_factory.mktemp("v1") / "datastore"
    return root, make_v1(root, N_V1)


@pytest.fixture
def v1(v1_tree: tuple[Path, dict[str, Spec]], fd_of: Any) -> tuple[int, dict[str, Spec]]:
    root, specs = v1_tree
    return fd_of(root), specs


@pytest.fixture
def v0(tmp_path: Path, fd_of: Any) -> tuple[int, dict[str, Spec]]:
    root = tmp_path / "v0"
    specs = make_v0(root)
    return fd_of(root), specs


# ---------------------------------------------------------------- bundle helpers


class Unseekable:
    """A write-only stream: no tell(), no seek(), seekable() is False."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False


def bundle_via_pipe(root_fd: int, uid: str) -> bytes:
    """write_bundle into a real pipe, read on another thread."""
    r, w = os.pipe()
    got: list[bytes] = []

    def reader() -> None:
        with os.fdopen(r, "rb") as f:
            got.append(f.read())

    t = threading.Thread(target=reader)
    t.start()
    try:
        with os.fdopen(w, "wb") as out:
            assert not out.seekable()
            write_bundle(root_fd, uid, out)
    finally:
        t.join()
    return got[0]


def bundle(root_fd: int, uid: str) -> bytes:
    out = Unseekable()
    write_bundle(root_fd, uid, out)
    return bytes(out.buf)


def members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def check_bundle(raw: bytes, spec: Spec, meta: dict[str, Any]) -> None:
    """The .xoj layout Sugar's JournalEntryBundle installs."""
    uid = spec.uid
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        names = zf.namelist()
        assert names[0].split("/")[0] == uid  # Sugar takes the root from the first name
    files = members(raw)
    expected = {f"{uid}/_metadata.json"}
    if spec.data is not None:
        expected.add(f"{uid}/{uid}")
    if spec.preview is not None:
        expected.add(f"{uid}/preview/{uid}")
    assert set(files) == expected
    assert all(name.startswith(f"{uid}/") for name in names)
    assert json.loads(files[f"{uid}/_metadata.json"]) == meta
    assert "preview" not in json.loads(files[f"{uid}/_metadata.json"])
    if spec.data is not None:
        assert files[f"{uid}/{uid}"] == spec.data
    if spec.preview is not None:
        assert files[f"{uid}/preview/{uid}"] == spec.preview


# ---------------------------------------------------------------- layouts


def test_detect_layout_v1_reads_version(v1: tuple[int, dict[str, Spec]]) -> None:
    assert detect_layout(v1[0]) == 6


def test_detect_layout_v0(v0: tuple[int, dict[str, Spec]]) -> None:
    assert detect_layout(v0[0]) == 0


@pytest.mark.parametrize("version", [None, "garbage\n", "0\n", "-3", ""])
def test_detect_layout_v1_without_usable_version(tmp_path: Path, fd_of: Any,
                                                 version: str | None) -> None:
    root = tmp_path / "ds"
    make_v1(root, 2, version=version)
    assert detect_layout(fd_of(root)) == 1
    assert len(list(iter_entries(fd_of(root)))) == 2


def test_detect_layout_not_a_datastore(tmp_path: Path, fd_of: Any) -> None:
    root = tmp_path / "ds"
    (root / "ab" / "abcdef" / "data").mkdir(parents=True)  # no metadata/ dir
    (root / "zz" / "zz-not-hex" / "metadata").mkdir(parents=True)  # prefix not hex
    (root / "version").write_text("six")
    fd = fd_of(root)
    assert detect_layout(fd) is None
    with pytest.raises(NotADatastore):
        iter_entries(fd)  # raised at once, not on the first next()
    with pytest.raises(NotADatastore):
        list_entries(fd)
    with pytest.raises(NotADatastore):
        read_metadata(fd, "abcdef")
    out = Unseekable()
    with pytest.raises(NotADatastore):
        write_bundle(fd, "abcdef", out)
    assert out.buf == b""


def test_symlinked_store_is_not_layout_0(tmp_path: Path, fd_of: Any) -> None:
    make_v0(tmp_path / "elsewhere")
    root = tmp_path / "ds"
    root.mkdir()
    (root / "store").symlink_to(tmp_path / "elsewhere" / "store")
    assert detect_layout(fd_of(root)) is None
    root2 = tmp_path / "ds2"
    root2.mkdir()
    fake_symlink(root2 / "store", str(tmp_path / "elsewhere" / "store"))
    assert detect_layout(fd_of(root2)) is None


# ---------------------------------------------------------------- listing


def test_iter_entries_v1(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v1
    entries = list(iter_entries(fd))
    assert len(entries) == N_V1
    assert {e.uid for e in entries} == set(specs)
    for e in entries:
        s = specs[e.uid]
        assert e == Entry(
            uid=s.uid, title=s.meta["title"], activity=s.meta["activity"],
            mime_type=s.meta["mime_type"], mtime=s.meta["mtime"],
            timestamp=int(s.meta["timestamp"]), size=len(s.data or b""),
            has_preview=s.preview is not None, layout=1)
    # The HTTP layer serialises entries as plain dicts.
    assert json.loads(json.dumps(dataclasses.asdict(entries[0]))) == vars(entries[0])


def test_iter_entries_v0(v0: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v0
    entries = {e.uid: e for e in iter_entries(fd)}
    assert set(entries) == set(specs)
    for uid, e in entries.items():
        s = specs[uid]
        assert e.layout == 0
        assert e.title == s.meta.get("title")
        assert e.activity == s.meta.get("activity")
        assert e.mtime == s.meta.get("mtime")
        assert e.timestamp == s.meta.get("timestamp")
        assert e.size == len(s.data or b"")
        assert e.has_preview is (s.preview is not None)


def test_iter_entries_is_lazy_and_independent(v1: tuple[int, dict[str, Spec]]) -> None:
    """Two listings of the same descriptor interleaved: no shared directory offset."""
    fd, specs = v1
    a, b = iter_entries(fd), iter_entries(fd)
    seen_a, seen_b = [], []
    for ea, eb in zip(a, b, strict=True):
        seen_a.append(ea.uid)
        seen_b.append(eb.uid)
    assert seen_a == seen_b
    assert set(seen_a) == set(specs)
    half = iter_entries(fd)
    next(half)
    half.close()  # abandoned early: its descriptors are released
    assert [e.uid for e in iter_entries(fd)] == seen_a


def test_list_entries_pages(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, _ = v1
    everything = list(iter_entries(fd))
    pages = []
    offset = 0
    while True:
        page, more = list_entries(fd, offset=offset, limit=30)
        pages.append((len(page), more))
        offset += len(page)
        if not more:
            break
    assert pages == [(30, True)] * 6 + [(20, False)]
    joined = [e for o in range(0, N_V1, 30) for e in list_entries(fd, o, 30)[0]]
    assert joined == everything  # directory order, stable across calls
    assert list_entries(fd, 0, N_V1) == (everything, False)
    assert list_entries(fd, 0, N_V1 - 1) == (everything[:-1], True)
    assert list_entries(fd, N_V1, 10) == ([], False)
    assert list_entries(fd, 10_000, 10) == ([], False)
    assert list_entries(fd, 5, 0) == ([], True)
    assert list_entries(fd) == (everything[:100], True)
    with pytest.raises(ValueError, match="negative"):
        list_entries(fd, -1, 10)
    with pytest.raises(ValueError, match="negative"):
        list_entries(fd, 0, -1)


def test_list_entries_query(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v1
    everything = list(iter_entries(fd))
    nandu, more = list_entries(fd, limit=1000, query="ñANDÚ")  # unicode, any case
    assert not more
    assert len(nandu) == 20
    assert nandu == [e for e in everything if "Ñandú" in (e.title or "")]
    first, more = list_entries(fd, offset=0, limit=15, query="ñandú")
    second, more2 = list_entries(fd, offset=15, limit=15, query="ÑANDÚ")
    assert (more, more2) == (True, False)
    assert first + second == nandu
    paint, _ = list_entries(fd, limit=1000, query="LAPTOP.paint")
    assert len(paint) == N_V1 // 2
    assert all(e.activity == "org.laptop.Paint" for e in paint)
    uid = everything[123].uid
    by_uid, _ = list_entries(fd, limit=1000, query=uid.upper())
    assert [e.uid for e in by_uid] == [uid]
    assert list_entries(fd, limit=5, query="no such thing") == ([], False)
    assert list_entries(fd, limit=5, query="") == (everything[:5], True)
    assert len(specs) == N_V1


# ---------------------------------------------------------------- metadata


def test_read_metadata_v1(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v1
    for uid, spec in list(specs.items())[:50]:
        meta = read_metadata(fd, uid)
        assert meta == spec.meta  # strings as stored; no preview, no ".title"
        assert list(meta) == sorted(meta)
        assert all(isinstance(v, str) for v in meta.values())


def test_read_metadata_v0(v0: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v0
    for uid, spec in specs.items():
        assert read_metadata(fd, uid) == spec.meta  # "preview" dropped; invalid JSON is {}


def test_errors_belong_to_the_one_error_tree() -> None:
    """Each carries its own exit code and a one-line message, even when raised bare."""
    for cls in (JournalError, EntryNotFound, NotADatastore):
        assert issubclass(cls, XsbackupError)
    assert NotADatastore().message == "The directory is not a Sugar datastore."
    codes = [c.exit_code for c in all_errors() if c is not Refused]  # Refused: abstract
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("uid", ["", "../etc", "a/b", "x" * 129, "ab cd", ".", "ü"])
def test_invalid_uid(v1: tuple[int, dict[str, Spec]], uid: str) -> None:
    fd, _ = v1
    with pytest.raises(JournalError, match="invalid") as info:
        read_metadata(fd, uid)
    assert not isinstance(info.value, EntryNotFound)
    out = Unseekable()
    with pytest.raises(JournalError, match="invalid"):
        write_bundle(fd, uid, out)
    assert out.buf == b""


def test_absent_entry(v1: tuple[int, dict[str, Spec]], v0: tuple[int, dict[str, Spec]]) -> None:
    for fd in (v1[0], v0[0]):
        for uid in (make_uid(99_999), "index", "checksums", "version", "preview"):
            with pytest.raises(EntryNotFound) as info:
                read_metadata(fd, uid)
            assert isinstance(info.value, LookupError)
            assert isinstance(info.value, JournalError)
            out = Unseekable()
            with pytest.raises(EntryNotFound):
                write_bundle(fd, uid, out)
            assert out.buf == b""  # nothing written before the entry was found


# ---------------------------------------------------------------- bundles


def test_write_bundle_v1_to_pipe(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v1
    kinds = set()
    for spec in list(specs.values())[:30]:
        raw = bundle_via_pipe(fd, spec.uid)
        check_bundle(raw, spec, read_metadata(fd, spec.uid))
        assert json.loads(members(raw)[f"{spec.uid}/_metadata.json"]) == spec.meta
        kinds.add((spec.data is not None, spec.preview is not None))
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}


def test_write_bundle_v0(v0: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v0
    for spec in specs.values():
        raw = bundle(fd, spec.uid)
        check_bundle(raw, spec, spec.meta)


def test_write_bundle_large_random_data_in_chunks(tmp_path: Path, fd_of: Any) -> None:
    root = tmp_path / "ds"
    specs = make_v1(root, 1)
    spec = next(iter(specs.values()))
    spec.data = random.Random(7).randbytes(3 * journal.CHUNK + 12345)
    (root / spec.uid[:2] / spec.uid / "data").write_bytes(spec.data)
    raw = bundle_via_pipe(fd_of(root), spec.uid)
    check_bundle(raw, spec, spec.meta)


def test_metadata_json_is_ascii(v1: tuple[int, dict[str, Spec]]) -> None:
    """Sugar reads _metadata.json in text mode with the locale's encoding."""
    fd, specs = v1
    uid = next(iter(specs))
    text = members(bundle(fd, uid))[f"{uid}/_metadata.json"]
    assert text.isascii()
    assert json.loads(text)["title"] == specs[uid].meta["title"]


def test_bundle_members_are_regular_files(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v1
    uid = next(u for u, s in specs.items() if s.data and s.preview)
    with zipfile.ZipFile(io.BytesIO(bundle(fd, uid))) as zf:
        for info in zf.infolist():
            assert not info.is_dir()
            assert info.external_attr >> 16 == 0o100644
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.date_time >= (1980, 1, 1, 0, 0, 0)


def test_xoj_mime() -> None:
    assert XOJ_MIME == "application/vnd.olpc-journal-entry"


class CountingSink:
    def __init__(self) -> None:
        self.n = 0
        self.largest = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        self.largest = max(self.largest, len(data))
        return len(data)

    def flush(self) -> None:
        pass


def test_write_bundle_constant_memory(tmp_path: Path, fd_of: Any) -> None:
    root = tmp_path / "ds"
    specs = make_v1(root, 1)
    uid = next(iter(specs))
    size = 50 * 1024 * 1024
    with open(root / uid[:2] / uid / "data", "wb") as f:
        f.write(random.Random(1).randbytes(1 << 20))
        f.truncate(size)
    fd = fd_of(root)
    assert next(iter_entries(fd)).size == size
    sink = CountingSink()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        write_bundle(fd, uid, sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024
    assert sink.n > 1 << 20  # the random MiB does not compress


class FailingSink:
    """Breaks like a client that hung up, after ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.n = 0
        self.writes_after_failure = 0
        self.failed = False

    def write(self, data: bytes) -> int:
        if self.failed:
            self.writes_after_failure += 1
        if self.n + len(data) > self.limit:
            self.failed = True
            raise BrokenPipeError("client went away")
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        if self.failed:
            self.writes_after_failure += 1


@pytest.mark.parametrize("cut", [0, 30, 2 << 20, -10])
def test_failed_output_is_left_unfinished(tmp_path: Path, fd_of: Any, cut: int) -> None:
    """After a failure nothing more is written: no central directory after a cut member.

    Cuts land in the first local header, inside the data, and in the end records."""
    root = tmp_path / "ds"
    specs = make_v1(root, 2)
    uid = make_uid(1)
    assert specs[uid].preview is not None
    (root / uid[:2] / uid / "data").write_bytes(random.Random(2).randbytes(4 << 20))
    fd = fd_of(root)
    whole = CountingSink()
    write_bundle(fd, uid, whole)
    sink = FailingSink(cut if cut >= 0 else whole.n + cut)
    with pytest.raises(BrokenPipeError):
        write_bundle(fd, uid, sink)
    assert sink.writes_after_failure == 0
    assert sink.n < whole.n


class ShortWriter:
    """A raw stream that takes at most 1000 bytes a call."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        chunk = bytes(data[:1000])
        self.buf += chunk
        return len(chunk)

    def flush(self) -> None:
        pass


def test_short_writes_are_completed(v1: tuple[int, dict[str, Spec]]) -> None:
    fd, specs = v1
    spec = next(s for s in specs.values() if s.data and s.preview)
    out = ShortWriter()
    write_bundle(fd, spec.uid, out)
    check_bundle(bytes(out.buf), spec, spec.meta)


# ---------------------------------------------------------------- fake-super and symlinks


@pytest.fixture
def one(tmp_path: Path) -> tuple[Path, Spec]:
    """A version 6 datastore with one entry that has data and a preview."""
    root = tmp_path / "ds"
    specs = make_v1(root, 2)
    spec = specs[make_uid(1)]
    assert spec.data is not None
    assert spec.preview is not None
    return root, spec


def all_output(fd: int, uid: str) -> bytes:
    """Every byte a client could get for the entry: listing, metadata and bundle."""
    raw = bundle(fd, uid)
    parts = [raw, *members(raw).values(), repr(list(iter_entries(fd))).encode(),
             json.dumps(read_metadata(fd, uid)).encode()]
    return b"\n".join(parts)


def entry(fd: int, uid: str) -> Entry:
    return next(e for e in iter_entries(fd) if e.uid == uid)


def test_fake_symlink_data_is_not_served(one: tuple[Path, Spec], fd_of: Any) -> None:
    root, spec = one
    fake_symlink(root / spec.uid[:2] / spec.uid / "data", "/etc/passwd")
    fd = fd_of(root)
    assert entry(fd, spec.uid).size == 0
    files = members(bundle(fd, spec.uid))
    assert set(files) == {f"{spec.uid}/_metadata.json", f"{spec.uid}/preview/{spec.uid}"}
    assert b"/etc/passwd" not in all_output(fd, spec.uid)
    assert b"root:" not in all_output(fd, spec.uid)


def test_fake_super_regular_file_is_served(one: tuple[Path, Spec], fd_of: Any) -> None:
    root, spec = one
    os.setxattr(root / spec.uid[:2] / spec.uid / "data", FAKE_STAT, b"100644 0,0 1000:1000")
    os.setxattr(root / spec.uid[:2] / spec.uid / "metadata" / "title", FAKE_STAT,
                b"100600 0,0 1000:1000")
    fd = fd_of(root)
    assert entry(fd, spec.uid).size == len(spec.data or b"")
    check_bundle(bundle(fd, spec.uid), spec, spec.meta)


@pytest.mark.parametrize("xattr", [b"120777 0,0 0:0", b"020644 8,1 0:0", b"010644 0,0 0:0",
                                   b"140755 0,0 0:0", b"garbage", b""])
def test_not_regular_per_fake_super_is_absent(one: tuple[Path, Spec], fd_of: Any,
                                              xattr: bytes) -> None:
    """Symlinks, devices, fifos, sockets and unreadable records are all absent."""
    root, spec = one
    meta_dir = root / spec.uid[:2] / spec.uid / "metadata"
    for path in (root / spec.uid[:2] / spec.uid / "data", meta_dir / "title",
                 meta_dir / "preview"):
        os.setxattr(path, FAKE_STAT, xattr)
    fd = fd_of(root)
    e = entry(fd, spec.uid)
    assert (e.title, e.size, e.has_preview) == (None, 0, False)
    expected = {k: v for k, v in spec.meta.items() if k != "title"}
    assert read_metadata(fd, spec.uid) == expected
    assert set(members(bundle(fd, spec.uid))) == {f"{spec.uid}/_metadata.json"}


def test_fake_symlink_metadata_values(one: tuple[Path, Spec], fd_of: Any,
                                      tmp_path: Path) -> None:
    root, spec = one
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    meta_dir = root / spec.uid[:2] / spec.uid / "metadata"
    for key in ("title", "activity", "preview"):
        (meta_dir / key).unlink()
        fake_symlink(meta_dir / key, str(secret))
    fd = fd_of(root)
    e = entry(fd, spec.uid)
    assert (e.title, e.activity, e.has_preview) == (None, None, False)
    meta = read_metadata(fd, spec.uid)
    assert "title" not in meta
    assert "activity" not in meta
    out = all_output(fd, spec.uid)
    assert SECRET not in out
    assert str(secret).encode() not in out


def test_real_symlinked_data_is_not_followed(one: tuple[Path, Spec], fd_of: Any,
                                             tmp_path: Path) -> None:
    root, spec = one
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    data = root / spec.uid[:2] / spec.uid / "data"
    data.unlink()
    data.symlink_to(secret)
    preview = root / spec.uid[:2] / spec.uid / "metadata" / "preview"
    preview.unlink()
    preview.symlink_to(secret)
    title = root / spec.uid[:2] / spec.uid / "metadata" / "title"
    title.unlink()
    title.symlink_to(secret)
    fd = fd_of(root)
    e = entry(fd, spec.uid)
    assert (e.title, e.size, e.has_preview) == (None, 0, False)
    assert set(members(bundle(fd, spec.uid))) == {f"{spec.uid}/_metadata.json"}
    assert SECRET not in all_output(fd, spec.uid)


@pytest.mark.parametrize("which", ["metadata", "uid", "prefix"])
def test_real_symlinked_directories_are_not_followed(tmp_path: Path, fd_of: Any,
                                                     which: str) -> None:
    """A symlink in place of metadata/, <uid>/ or <uid[:2]>/ hides the entry."""
    elsewhere = tmp_path / "elsewhere"
    other = make_v1(elsewhere, 2)
    for s in other.values():
        (elsewhere / s.uid[:2] / s.uid / "metadata" / "title").write_bytes(SECRET)
        (elsewhere / s.uid[:2] / s.uid / "data").write_bytes(SECRET)
    root = tmp_path / "ds"
    specs = make_v1(root, 2)
    victim = make_uid(1)
    keep = make_uid(0)
    assert victim[:2] != keep[:2]
    target = elsewhere / victim[:2] / victim
    if which == "metadata":
        link = root / victim[:2] / victim / "metadata"
        target = target / "metadata"
    elif which == "uid":
        link = root / victim[:2] / victim
    else:
        link = root / victim[:2]
        target = elsewhere / victim[:2]
    _rmtree(link)
    link.symlink_to(target)
    fd = fd_of(root)
    assert [e.uid for e in iter_entries(fd)] == [keep]
    with pytest.raises(EntryNotFound):
        read_metadata(fd, victim)
    out = Unseekable()
    with pytest.raises(EntryNotFound):
        write_bundle(fd, victim, out)
    assert out.buf == b""
    assert SECRET not in all_output(fd, keep)
    assert read_metadata(fd, keep) == specs[keep].meta


def test_fake_symlinked_metadata_dir_hides_entry(one: tuple[Path, Spec], fd_of: Any) -> None:
    root, spec = one
    _rmtree(root / spec.uid[:2] / spec.uid / "metadata")
    fake_symlink(root / spec.uid[:2] / spec.uid / "metadata", "/etc")
    fd = fd_of(root)
    assert spec.uid not in {e.uid for e in iter_entries(fd)}
    with pytest.raises(EntryNotFound):
        read_metadata(fd, spec.uid)


def test_v0_symlinks_are_not_followed(v0: tuple[int, dict[str, Spec]], tmp_path: Path) -> None:
    fd, specs = v0
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret_json = tmp_path / "secret.json"
    secret_json.write_text(json.dumps({"title": SECRET.decode()}))
    store = tmp_path / "v0" / "store"
    with_data = [s for s in specs.values() if s.data is not None and s.meta]
    a, b, c = with_data[0], with_data[1], with_data[2]
    (store / a.uid).unlink()
    (store / a.uid).symlink_to(secret)  # data: real symlink
    (store / f"{b.uid}.metadata").unlink()
    (store / f"{b.uid}.metadata").symlink_to(secret_json)  # metadata: real symlink
    (store / c.uid).unlink()
    fake_symlink(store / c.uid, "/etc/passwd")  # data: fake symlink
    _rmtree(store / "preview")
    (store / "preview").symlink_to(tmp_path)  # preview dir: real symlink
    (tmp_path / a.uid).write_bytes(SECRET)
    entries = {e.uid: e for e in iter_entries(fd)}
    assert b.uid not in entries
    assert entries[a.uid].size == 0
    assert entries[c.uid].size == 0
    assert not any(e.has_preview for e in entries.values())
    with pytest.raises(EntryNotFound):
        read_metadata(fd, b.uid)
    for s in (a, c):
        files = members(bundle(fd, s.uid))
        assert set(files) == {f"{s.uid}/_metadata.json"}
        assert SECRET not in all_output(fd, s.uid)
        assert b"/etc/passwd" not in all_output(fd, s.uid)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path)


# ---------------------------------------------------------------- odd content


def test_oversized_and_binary_values(one: tuple[Path, Spec], fd_of: Any) -> None:
    root, spec = one
    meta_dir = root / spec.uid[:2] / spec.uid / "metadata"
    (meta_dir / "title").write_bytes(b"x" * (journal.LIST_VALUE_MAX + 1))
    (meta_dir / "activity").write_bytes(b"org.\xff\xfe")  # not UTF-8
    (meta_dir / "huge").write_bytes(b"y" * (journal.VALUE_MAX + 1))
    (meta_dir / "timestamp").write_text("1243850400.75")
    fd = fd_of(root)
    e = entry(fd, spec.uid)
    assert e.title is None  # too long to list
    assert e.activity == "org.\ufffd\ufffd"
    assert e.timestamp == 1243850400
    meta = read_metadata(fd, spec.uid)
    assert len(meta["title"]) == journal.LIST_VALUE_MAX + 1
    assert "huge" not in meta
    assert json.loads(members(bundle(fd, spec.uid))[f"{spec.uid}/_metadata.json"]) == meta


def test_v0_odd_json(tmp_path: Path, fd_of: Any) -> None:
    root = tmp_path / "v0"
    (root / "store").mkdir(parents=True)
    cases = {
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "nan": b'{"title": "t", "x": NaN, "timestamp": "12.5"}',
        "latin1": b'{"title": "\xe9"}',
        "numbers": b'{"title": 42, "mtime": 7, "timestamp": true}',
    }
    for uid, raw in cases.items():
        (root / "store" / f"{uid}.metadata").write_bytes(raw)
    fd = fd_of(root)
    entries = {e.uid: e for e in iter_entries(fd)}
    assert set(entries) == set(cases)
    assert entries["deep"].title is None
    assert read_metadata(fd, "deep") == {}
    assert read_metadata(fd, "nan") == {"title": "t", "x": None, "timestamp": "12.5"}
    assert entries["nan"].timestamp == 12
    assert read_metadata(fd, "latin1") == {}
    assert (entries["numbers"].title, entries["numbers"].mtime) == ("42", "7")
    assert entries["numbers"].timestamp is None
    for uid in cases:
        assert set(members(bundle(fd, uid))) == {f"{uid}/_metadata.json"}


# ---------------------------------------------------------------- download names


@pytest.mark.parametrize(("title", "expected"), [
    ("Mi dibujo", "Mi dibujo.xoj"),
    ("Dibujo 日本語 🎨", "Dibujo 日本語 🎨.xoj"),
    ("../../etc/passwd", "_.._etc_passwd.xoj"),
    ("a\\b/c", "a_b_c.xoj"),
    ("line\nbreak\tand\x00nul\x7f", "line break and nul.xoj"),
    ("evil\u202egpj.exe", "evilgpj.exe.xoj"),
    ('what? "yes": <no>|*', "what_ _yes__ _no___.xoj"),
    ("  ...hidden  ", "hidden.xoj"),
    ("CON", "_CON.xoj"),
    ("nul.txt", "_nul.txt.xoj"),
    ("x" * 500, "x" * journal.NAME_MAX + ".xoj"),
    ("", None),
    ("  \n\t ", None),
    ("...", None),
    ("\u200b", None),
])
def test_entry_filename(title: str, expected: str | None) -> None:
    uid = make_uid(5)
    e = Entry(uid=uid, title=title, activity=None, mime_type=None, mtime=None,
              timestamp=None, size=0, has_preview=False, layout=1)
    name = entry_filename(e)
    assert name == (expected or f"{uid}.xoj")
    assert "/" not in name
    assert "\\" not in name
    assert entry_filename({"title": title, "uid": uid}) == name


def test_entry_filename_fallbacks() -> None:
    assert entry_filename({"title": None, "uid": "abc"}) == "abc.xoj"
    assert entry_filename({"title": 7, "uid": "abc"}) == "abc.xoj"
    assert entry_filename({}) == "journal-entry.xoj"
    assert entry_filename({"uid": "../x"}) == "journal-entry.xoj"
    e = Entry(uid="u1", title=None, activity=None, mime_type=None, mtime=None,
              timestamp=None, size=0, has_preview=False, layout=0)
    assert entry_filename(e) == "u1.xoj"
