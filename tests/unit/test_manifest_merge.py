"""The manifest written at promotion from what the walk found (``manifest.keep``: linked,
merged into the previous one, or built) is byte for byte the manifest built from scratch,
whatever changed between two hardlinked snapshots: files kept, edited, removed or added,
directories removed, a file become a directory and back, names that sort around "/"
("a-b", "a.txt", "a0") and names that are not UTF-8."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xsbackup.snapshots import manifest, manifest_lines
from xsbackup.snapshots.snapshot import Changes, compute_stats
from xsbackup.storage.hardlink import HardlinkBackend
from xsbackup.store import Store, init_root

NAMES = ["a", "a-b", "a.txt", "a0", "b", "z", os.fsdecode(b"n\xff")]
CLIENT, VOLUME = "SHF00MERGE01", "documents"
SIDS = ["2026-01-01T000000Z", "2026-01-02T000000Z"]

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)


def consistent(files: dict[str, bytes]) -> dict[str, bytes]:
    """Drop every file that another path needs as a directory."""
    dirs = {p.rsplit("/", 1)[0] for p in files if "/" in p}
    dirs |= {d.rsplit("/", k)[0] for d in list(dirs) for k in range(1, 3) if "/" in d}
    return {p: b for p, b in files.items() if p not in dirs}


def plant(top: Path, files: dict[str, bytes], links: dict[str, Path]) -> None:
    top.mkdir(parents=True)
    for p, body in files.items():
        where = top / p
        where.parent.mkdir(parents=True, exist_ok=True)
        if p in links:
            os.link(links[p], where)  # what rsync --link-dest does for an unchanged file
        else:
            where.write_bytes(body)


def new_backend(tmp: Path) -> tuple[Store, HardlinkBackend]:
    store = Store(tmp / "state")
    init_root(store.root)
    return store, HardlinkBackend(store)


def evolve(before: dict[str, bytes], fate: list[str],
           added: dict[str, bytes]) -> dict[str, bytes]:
    """``before`` with each file (in path order) kept, edited or dropped as ``fate``
    says, and ``added`` written over it (a file in the way of an added path's
    directory goes)."""
    after = {}
    for (p, body), f in zip(sorted(before.items()), fate, strict=False):
        if f != "drop":
            after[p] = body + b"!" if f == "edit" else body
    return consistent({**{p: b for p, b in after.items()
                          if not any(q.startswith(p + "/") for q in added)}, **added})


def promote(backend: HardlinkBackend, sid: str, tree: Path, prev: Path | None,
            prev_sid: str | None) -> manifest.BuildStats:
    changes = Changes()
    compute_stats(tree, prev, changes=changes)
    return manifest.keep(backend, CLIENT, VOLUME, sid, tree, changes,
                         manifest.previous(backend, CLIENT, VOLUME, prev_sid))


def from_scratch(tree: Path) -> bytes:
    files = []
    for dirpath, _, names in os.walk(tree):
        for n in names:
            full = Path(dirpath) / n
            files.append((str(full.relative_to(tree)), full.lstat()))
    return manifest.build(tree, files, None, False)[0]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.dictionaries(paths, st.binary(max_size=20), max_size=12),
       fate=st.lists(st.sampled_from(["keep", "edit", "drop"]), min_size=12, max_size=12),
       added=st.dictionaries(paths, st.binary(max_size=20), max_size=5))
def test_keep_equals_a_manifest_built_from_scratch(
        tmp_path_factory: object, before: dict[str, bytes], fate: list[str],
        added: dict[str, bytes]) -> None:
    store, backend = new_backend(tmp_path_factory.mktemp("m"))  # type: ignore[attr-defined]
    snaps = store.snapshots_dir(CLIENT, VOLUME)
    before = consistent(before)
    old = snaps / SIDS[0]
    plant(old, before, {})
    first = promote(backend, SIDS[0], old, None, None)
    assert first.how == "built"

    after = evolve(before, fate, added)
    links = {p: old / p for p, b in after.items()
             if p in before and before[p] == b and p not in added}
    new = store.incoming_dir(CLIENT, VOLUME) / SIDS[1]
    plant(new, after, links)
    stats = promote(backend, SIDS[1], new, old, SIDS[0])

    kept = manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[1])
    assert kept == from_scratch(new)
    assert stats.hashed_files == len(after) - len(links)
    assert stats.how == ("linked" if len(links) == len(after) == len(before) else "delta")


def test_a_version_1_manifest_is_read_and_never_linked(tmp_path: Path) -> None:
    """Manifests written before version 2 name their snapshot in the header: still read,
    and the next promotion writes a delta over it (which reads as a version 2 manifest
    of the same records) rather than linking a header that names another snapshot."""
    import orjson

    store = Store(tmp_path / "state")
    init_root(store.root)
    backend = HardlinkBackend(store)
    old = store.snapshots_dir(CLIENT, VOLUME) / SIDS[0]
    plant(old, {"a": b"1", "d/b": b"22"}, {})
    promote(backend, SIDS[0], old, None, None)
    v2 = manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[0])
    assert v2 is not None
    head, body = v2.split(b"\n", 1)
    v1_head = orjson.dumps({"format": "xsbackup-manifest", "version": 1,
                            "algorithm": "blake2b-256", "snapshot": SIDS[0], "files": 2})
    backend.write_manifest(CLIENT, VOLUME, SIDS[0], v1_head + b"\n" + body)
    assert manifest.read(backend, CLIENT, VOLUME, SIDS[0]) == \
        manifest.parse_lines(head + b"\n" + body)
    new = store.incoming_dir(CLIENT, VOLUME) / SIDS[1]
    plant(new, {"a": b"1", "d/b": b"22"}, {"a": old / "a", "d/b": old / "d" / "b"})
    stats = promote(backend, SIDS[1], new, old, SIDS[0])
    assert (stats.how, stats.hashed_files) == ("delta", 0)
    assert manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[1]) == v2


def test_the_search_finds_every_place_in_a_large_manifest() -> None:
    """``_seek`` over a manifest far larger than its first galloping step: for sorted
    keys from where the last search ended, as ``merge`` asks, the offset of the first
    line at or after each key, as a plain bisection over the parsed paths says."""
    import bisect
    import random

    rng = random.Random(12)
    paths = sorted({"/".join(rng.choice(NAMES) + str(rng.randrange(40))
                             for _ in range(rng.randrange(1, 4))) for _ in range(20_000)})
    records = [manifest.Record(p, i, i, i, "0" * 64) for i, p in enumerate(paths)]
    data = manifest.encode(records)
    starts = [0]
    for line in data.split(b"\n")[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    body, starts = starts[1], starts[1:]  # offsets of the record lines, then the end
    keys = sorted(rng.sample(paths, 300) + [p + "/" for p in rng.sample(paths, 100)] +
                  [p[:-1] + "0" for p in rng.sample(paths, 100)] + ["", "\U0010ffff"])
    at = body
    for k in keys:
        at = manifest_lines.seek(data, k, at)
        assert at == starts[bisect.bisect_left(paths, k)], k
