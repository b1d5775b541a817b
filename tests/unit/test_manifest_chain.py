"""A chain of promotions, each written as ``manifest.keep`` writes it (linked, a delta
over the previous whole manifest or over the one the previous delta rests on, merged, or
built), with snapshots pruned along the way: every remaining snapshot's manifest, as the
one reader resolves it, is byte for byte the manifest built from scratch."""

from __future__ import annotations

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

SIDS = [f"2026-01-0{d}T000000Z" for d in range(1, 6)]
step = st.tuples(st.lists(st.sampled_from(["keep", "edit", "drop"]), min_size=12,
                          max_size=12),
                 st.dictionaries(paths, st.binary(max_size=8), max_size=4),
                 st.sampled_from([None, 0, 1, 2]))  # prune this (oldest-first) snapshot


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.dictionaries(paths, st.binary(max_size=8), max_size=12),
       steps=st.lists(step, min_size=2, max_size=4))
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
