"""Rendezvous placement: deterministic, weighted, and minimal movement when the fleet
changes (bounds are five binomial standard deviations: a wrong hash or formula fails
them, chance essentially never does)."""

from __future__ import annotations

import math

import pytest

from xsbackup.clients.placement import assign, score

SERIALS = [f"SHC{n:08d}" for n in range(10_000)]


def five_sigma(n: int, p: float) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 5 * sd, n * p + 5 * sd


def place(members: list[tuple[str, float]]) -> dict[str, str]:
    return {sn: assign(sn, members) for sn in SERIALS}


def test_deterministic_and_independent_of_order() -> None:
    members = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    first = place(members)
    assert place(list(reversed(members))) == first
    assert place(members) == first
    assert assign("SHC00000001", members) == first["SHC00000001"]


def test_adding_a_fourth_server_moves_about_a_quarter_all_to_it() -> None:
    three = place([("a", 1.0), ("b", 1.0), ("c", 1.0)])
    four = place([("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)])
    moved = [sn for sn in SERIALS if three[sn] != four[sn]]
    low, high = five_sigma(len(SERIALS), 0.25)
    assert low <= len(moved) <= high
    assert {four[sn] for sn in moved} == {"d"}


def test_removing_a_server_moves_only_its_serials() -> None:
    four = place([("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)])
    three = place([("a", 1.0), ("c", 1.0), ("d", 1.0)])
    moved = {sn for sn in SERIALS if three[sn] != four[sn]}
    assert moved == {sn for sn in SERIALS if four[sn] == "b"}
    low, high = five_sigma(len(SERIALS), 0.25)
    assert low <= len(moved) <= high


def test_weights_set_the_shares() -> None:
    placed = place([("a", 1.0), ("b", 2.0), ("c", 3.0)])
    for name, share in (("a", 1 / 6), ("b", 2 / 6), ("c", 3 / 6)):
        low, high = five_sigma(len(SERIALS), share)
        assert low <= sum(1 for v in placed.values() if v == name) <= high


def test_doubling_a_weight_only_draws_serials_to_that_server() -> None:
    before = place([("a", 1.0), ("b", 1.0), ("c", 1.0)])
    after = place([("a", 1.0), ("b", 2.0), ("c", 1.0)])
    assert {after[sn] for sn in SERIALS if before[sn] != after[sn]} == {"b"}


def test_scores_and_bad_members() -> None:
    assert score("a", "SN", 2.0) == pytest.approx(2 * score("a", "SN", 1.0))
    with pytest.raises(ValueError, match="weight must be above zero"):
        assign("SN", [("a", 0.0)])
    with pytest.raises(ValueError, match="no servers"):
        assign("SN", [])
