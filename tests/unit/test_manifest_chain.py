"""A chain of promotions, each written as ``manifest.keep`` writes it (linked, a delta
over the previous manifest and its chain, merged, or built), with snapshots pruned
along the way (bases and middle members of chains): every remaining snapshot's
manifest, as the one reader resolves it, is byte for byte the manifest built from
scratch. Chains stop at ``MAX_DEPTH`` deltas; version 3 deltas (merged over their base,
written before chains) are still read, and a chain grows on them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_manifest_merge import (
    CLIENT,
    VOLUME,
    consistent,
    evolve,
    from_scratch,
    new_backend,
    paths,
    plant,
    promote,
)
from xsbackup.snapshots import manifest
from xsbackup.storage.manifests import PART_SUFFIXES

SIDS = [f"2026-01-{d:02d}T000000Z" for d in range(1, 29)]
step = st.tuples(st.lists(st.sampled_from(["keep", "edit", "drop"]), min_size=12,
                          max_size=12),
                 st.dictionaries(paths, st.binary(max_size=8), max_size=4),
                 st.sampled_from([None, 0, 1, 2, 3, 5]))  # prune this (oldest-first) one


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.dictionaries(paths, st.binary(max_size=8), max_size=12),
       steps=st.lists(step, min_size=2, max_size=10))
def test_every_manifest_of_a_pruned_chain_reads_as_built_from_scratch(
        tmp_path_factory: object, first: dict[str, bytes],
        steps: list[tuple[list[str], dict[str, bytes], int | None]]) -> None:
    store, backend = new_backend(tmp_path_factory.mktemp("c"))  # type: ignore[attr-defined]
    snaps = store.snapshots_dir(CLIENT, VOLUME)
    state = consistent(first)
    plant(snaps / SIDS[0], state, {})
    promote(backend, SIDS[0], snaps / SIDS[0], None, None)
    for n, (fate, added, prune) in enumerate(steps, start=1):
        after = evolve(state, fate, added)
        ids = store.snapshot_ids(CLIENT, VOLUME)
        prev = snaps / ids[-1]
        links = {p: prev / p for p, b in after.items()
                 if state.get(p) == b and p not in added}
        new = store.incoming_dir(CLIENT, VOLUME) / SIDS[n]
        plant(new, after, links)
        promote(backend, SIDS[n], new, prev, ids[-1])
        backend.promote(CLIENT, VOLUME, SIDS[n])
        state = after
        ids = store.snapshot_ids(CLIENT, VOLUME)
        if prune is not None and prune < len(ids) - 1:
            assert backend.delete(CLIENT, VOLUME, ids[prune]) == ""
        for sid in store.snapshot_ids(CLIENT, VOLUME):
            assert manifest.read_bytes(backend, CLIENT, VOLUME, sid) == \
                from_scratch(snaps / sid), (n, sid)


def files_of(store: object, sid: str) -> set[str]:
    d = store.volume_dir(CLIENT, VOLUME) / "manifests"  # type: ignore[attr-defined]
    return {n for n in (f"{sid}{x}" for x in PART_SUFFIXES) if (d / n).exists()}


def test_a_chain_is_at_most_max_depth_deep_and_survives_pruning_its_middle(
        tmp_path: Path) -> None:
    store, backend = new_backend(tmp_path)
    snaps = store.snapshots_dir(CLIENT, VOLUME)
    state = {f"d/f{i}": b"x" * i for i in range(6)}
    plant(snaps / SIDS[0], state, {})
    hows = [promote(backend, SIDS[0], snaps / SIDS[0], None, None).how]
    for n in range(1, manifest.MAX_DEPTH + 3):
        after = {**state, f"d/f{n % 5}": state[f"d/f{n % 5}"] + b"!"}
        if n == 3:
            after = {p: b for p, b in after.items() if p != "d/f5"}  # a file gone
        prev = snaps / SIDS[n - 1]
        new = store.incoming_dir(CLIENT, VOLUME) / SIDS[n]
        plant(new, after, {p: prev / p for p, b in after.items() if state.get(p) == b})
        stats = promote(backend, SIDS[n], new, prev, SIDS[n - 1])
        assert stats.hashed_files == 1
        hows.append(stats.how)
        backend.promote(CLIENT, VOLUME, SIDS[n])
        state = after
    depth = manifest.MAX_DEPTH
    assert hows == ["built", *["delta"] * depth, "merged", "delta"]
    deepest = SIDS[depth]
    assert len(files_of(store, deepest)) == depth + 1  # itself, its base and d1 ..
    head = orjson.loads(manifest._read_part(backend, CLIENT, VOLUME, deepest).split(
        b"\n", 1)[0])  # type: ignore[union-attr]
    assert (head["version"], head["depth"], head["records"]) == (4, depth, 1)
    assert files_of(store, SIDS[depth + 1]) == {f"{SIDS[depth + 1]}.jsonl"}
    for gone in (SIDS[0], SIDS[3], SIDS[5]):  # the base, then members of the chain
        assert backend.delete(CLIENT, VOLUME, gone) == ""
        assert files_of(store, gone) == set()
        for sid in store.snapshot_ids(CLIENT, VOLUME):
            assert manifest.read_bytes(backend, CLIENT, VOLUME, sid) == \
                from_scratch(snaps / sid), (gone, sid)


def test_a_store_of_version_3_deltas_is_read_and_a_chain_grows_on_it(
        tmp_path: Path) -> None:
    """Version 3 deltas as the previous release wrote them: each rests on a whole
    manifest alone, the later one holding the earlier one's changes too (merged), a
    gone directory as ``{"g": "dir/"}``. They read as the manifests built from scratch,
    and the next promotion's delta rests on one of them as its chain's ``d1``."""
    store, backend = new_backend(tmp_path)
    snaps = store.snapshots_dir(CLIENT, VOLUME)
    trees = [{"a": b"1", "d/b": b"22", "d/c": b"3", "z": b"4"},
             {"a": b"1!", "d/b": b"22", "d/c": b"3", "z": b"4", "n": b"new"},
             {"a": b"1!", "z": b"4", "n": b"new", "y": b"5"}]
    for n, files in enumerate(trees):
        prev = snaps / SIDS[n - 1] if n else None
        plant(snaps / SIDS[n], files, {p: prev / p for p, b in files.items()  # type: ignore[operator]
                                       if n and trees[n - 1].get(p) == b})
    promote(backend, SIDS[0], snaps / SIDS[0], None, None)
    base = from_scratch(snaps / SIDS[0])
    assert manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[0]) == base

    def v3(sid: str, gone: list[str]) -> bytes:
        """The delta over ``base`` of snapshot ``sid``: its records not in the base and
        the ``gone`` paths."""
        old = set(base.split(b"\n")[1:])
        records = [raw for raw in from_scratch(snaps / sid).split(b"\n")[1:-1]
                   if raw not in old]
        head = orjson.dumps({"format": "xsbackup-manifest", "version": 3,
                             "algorithm": "blake2b-256",
                             "files": len(from_scratch(snaps / sid).split(b"\n")) - 2,
                             "records": len(records), "gone": len(gone)})
        return b"\n".join([head, *records, *(orjson.dumps({"g": g}) for g in gone)]) + b"\n"

    backend.write_manifest(CLIENT, VOLUME, SIDS[1], v3(SIDS[1], []), chain=[(SIDS[0], "")])
    backend.write_manifest(CLIENT, VOLUME, SIDS[2], v3(SIDS[2], ["d/"]),
                           chain=[(SIDS[0], "")])
    assert backend.delete(CLIENT, VOLUME, SIDS[0]) == ""  # the base lives on, twice
    for sid in SIDS[1:3]:
        assert manifest.read_bytes(backend, CLIENT, VOLUME, sid) == from_scratch(snaps / sid)
    after = {**trees[2], "y": b"5!", "e/f": b"6"}
    new = store.incoming_dir(CLIENT, VOLUME) / SIDS[3]
    plant(new, after, {p: snaps / SIDS[2] / p for p, b in after.items()
                       if trees[2].get(p) == b})
    stats = promote(backend, SIDS[3], new, snaps / SIDS[2], SIDS[2])
    assert (stats.how, stats.hashed_files) == ("delta", 2)
    assert files_of(store, SIDS[3]) == {f"{SIDS[3]}{x}" for x in (".jsonl", ".base", ".d1")}
    backend.promote(CLIENT, VOLUME, SIDS[3])
    for sid in (SIDS[1], SIDS[2], SIDS[3]):
        assert manifest.read_bytes(backend, CLIENT, VOLUME, sid) == from_scratch(snaps / sid)
    assert backend.delete(CLIENT, VOLUME, SIDS[2]) == ""
    assert manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[3]) == \
        from_scratch(snaps / SIDS[3])


def test_a_chain_missing_a_part_reads_as_damaged_and_the_next_is_built_whole(
        tmp_path: Path) -> None:
    store, backend = new_backend(tmp_path)
    snaps = store.snapshots_dir(CLIENT, VOLUME)
    state = {"a": b"1", "b": b"2", "c": b"3"}
    plant(snaps / SIDS[0], state, {})
    promote(backend, SIDS[0], snaps / SIDS[0], None, None)
    for n, edit in enumerate(["a", "b", "c"], start=1):
        after = {**state, edit: state[edit] + b"!"}
        prev = snaps / SIDS[n - 1]
        new = store.incoming_dir(CLIENT, VOLUME) / SIDS[n]
        plant(new, after, {p: prev / p for p, b in after.items() if state.get(p) == b})
        assert promote(backend, SIDS[n], new, prev, SIDS[n - 1]).how == "delta"
        backend.promote(CLIENT, VOLUME, SIDS[n])
        state = after
    (store.volume_dir(CLIENT, VOLUME) / "manifests" / f"{SIDS[3]}.d1").unlink()
    with pytest.raises(manifest.ManifestError, match="d1 is missing"):
        manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[3])
    after = {**state, "d": b"4"}
    new = store.incoming_dir(CLIENT, VOLUME) / SIDS[4]
    plant(new, after, {p: snaps / SIDS[3] / p for p in state})
    stats = promote(backend, SIDS[4], new, snaps / SIDS[3], SIDS[3])
    assert (stats.how, stats.hashed_files) == ("built", 4)
    assert files_of(store, SIDS[4]) == {f"{SIDS[4]}.jsonl"}
    backend.promote(CLIENT, VOLUME, SIDS[4])
    assert manifest.read_bytes(backend, CLIENT, VOLUME, SIDS[4]) == \
        from_scratch(snaps / SIDS[4])


def test_parts_left_by_an_interrupted_promotion_are_replaced_or_removed(
        tmp_path: Path) -> None:
    """A promotion killed after linking its chain, then run again with a shorter chain:
    the parts of the new chain replace what is there, and the old parts past its end
    are removed (a manifest never has a part it does not rest on)."""
    store, backend = new_backend(tmp_path)
    (store.volume_dir(CLIENT, VOLUME) / "manifests").mkdir(parents=True)
    for sid, body in ((SIDS[0], b"zero\n"), (SIDS[1], b"one\n")):
        backend.write_manifest(CLIENT, VOLUME, sid, body)
    sid = SIDS[2]
    folder = store.volume_dir(CLIENT, VOLUME) / "manifests"
    for suffix in PART_SUFFIXES[1:5]:  # base, d1, d2, d3 of the killed attempt
        (folder / f"{sid}{suffix}").write_bytes(b"stale\n")
    backend.write_manifest(CLIENT, VOLUME, sid, b"delta\n",
                           chain=[(SIDS[0], ""), (SIDS[1], "")])
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith(sid))
    assert left == [f"{sid}.base", f"{sid}.d1", f"{sid}.jsonl"]
    assert (folder / f"{sid}.base").read_bytes() == b"zero\n"
    assert (folder / f"{sid}.d1").read_bytes() == b"one\n"
