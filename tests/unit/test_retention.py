"""Retention math: borg's documented examples, rule tables, edges, and hypothesis properties."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsbackup.retention import policy as retention
from xsbackup.retention.policy import (
    DEFAULT_POLICY,
    NEWEST,
    PROTECTED,
    PRUNED,
    Decision,
    Policy,
    format_duration,
    parse_duration,
    plan,
    policy_from_mapping,
    policy_to_mapping,
)

Snaps = list[tuple[str, datetime]]


def at(text: str) -> datetime:
    """``"2026-03-10 08:00"`` (or with seconds) as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sid(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H%M%SZ")


def daily(first: date, last: date, hour: int = 16, skip: Iterable[date] = ()) -> Snaps:
    """One snapshot a day at ``hour``:00 UTC, from ``first`` to ``last`` inclusive."""
    skipped = set(skip)
    out: Snaps = []
    day = first
    while day <= last:
        if day not in skipped:
            t = datetime.combine(day, time(hour), tzinfo=UTC)
            out.append((sid(t), t))
        day += timedelta(days=1)
    return out


def kept(decisions: Sequence[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in decisions if d.keep}


def kept_days(decisions: Sequence[Decision]) -> list[str]:
    return [d.id[:10] for d in decisions if d.keep]


# --- borg's documented examples -------------------------------------------------------

def test_borg_prune_example_daily14_monthly6_yearly1() -> None:
    """borg docs/misc/prune-example.txt: 2015 daily except 2015-12-19, run on 2016-01-01."""
    snaps = daily(date(2015, 1, 1), date(2015, 12, 31), hour=12, skip=[date(2015, 12, 19)])
    decisions = plan(snaps, Policy(keep_daily=14, keep_monthly=6, keep_yearly=1),
                     at("2016-01-01 00:00"))
    days = ["12-31", "12-30", "12-29", "12-28", "12-27", "12-26", "12-25", "12-24", "12-23",
            "12-22", "12-21", "12-20", "12-18", "12-17"]
    expected: dict[str, tuple[str, ...]] = {
        f"2015-{d}T120000Z": (f"daily #{i}",) for i, d in enumerate(days, 1)}
    expected["2015-12-31T120000Z"] = ("daily #1", NEWEST)
    months = ["11-30", "10-31", "09-30", "08-31", "07-31", "06-30"]
    expected |= {f"2015-{d}T120000Z": (f"monthly #{i}",) for i, d in enumerate(months, 1)}
    # yearly: 2015's candidate (12-31) is the daily rule's, no earlier year: keep the oldest
    expected["2015-01-01T120000Z"] = ("yearly #1 (oldest)",)
    assert kept(decisions) == expected
    assert len(decisions) == 364


def test_borg_prune_example_with_the_missing_day_present() -> None:
    """"If a backup had been made on that day, it would not keep the one from 2015-12-17"."""
    snaps = daily(date(2015, 1, 1), date(2015, 12, 31), hour=12)
    days = kept_days(plan(snaps, Policy(keep_daily=14, keep_monthly=6, keep_yearly=1),
                          at("2016-01-01 00:00")))
    assert "2015-12-18" in days
    assert "2015-12-17" not in days
    assert len(days) == 21


def test_borg_daily7_weekly4_keeps_iso_weeks_18_to_21() -> None:
    """borg's ``--keep-daily 7 --keep-weekly 4`` ("7 end of day and 4 additional end of week
    archives"), on the dates of borg's prune-example-interval: run on 2026-06-04."""
    snaps = daily(date(2026, 3, 1), date(2026, 6, 4))
    decisions = plan(snaps, Policy(keep_daily=7, keep_weekly=4), at("2026-06-04 16:12"))
    assert kept(decisions) == {
        "2026-06-04T160000Z": ("daily #1", NEWEST),
        "2026-06-03T160000Z": ("daily #2",),
        "2026-06-02T160000Z": ("daily #3",),
        "2026-06-01T160000Z": ("daily #4",),
        "2026-05-31T160000Z": ("daily #5",),  # so week 22 is used up, not counted
        "2026-05-30T160000Z": ("daily #6",),
        "2026-05-29T160000Z": ("daily #7",),
        "2026-05-24T160000Z": ("weekly #1",),  # 2026-W21
        "2026-05-17T160000Z": ("weekly #2",),
        "2026-05-10T160000Z": ("weekly #3",),
        "2026-05-03T160000Z": ("weekly #4",),  # 2026-W18
    }


# --- the original XS server's default --------------------------------------------------

def test_default_policy_is_90_days_then_first_of_each_month() -> None:
    snaps = daily(date(2025, 1, 1), date(2025, 12, 31), hour=3)
    now = at("2025-12-31 12:00")  # window: after 2025-10-02 12:00
    decisions = plan(snaps, DEFAULT_POLICY, now)
    got = kept(decisions)
    window = {i: r for i, r in got.items() if r[0] == "within 90d"}
    assert len(window) == 90
    assert min(window) == "2025-10-03T030000Z"
    assert max(window) == "2025-12-31T030000Z"
    firsts = {i: r for i, r in got.items() if i not in window}
    assert firsts == {f"2025-{m:02d}-01T030000Z": (f"first of 2025-{m:02d}",)
                      for m in range(1, 11)}
    assert got["2025-12-31T030000Z"] == ("within 90d", NEWEST)
    assert len(got) == 100


def test_default_policy_mapping() -> None:
    assert policy_to_mapping(DEFAULT_POLICY) == {
        "keep_last": 0, "keep_within": "90d", "keep_hourly": 0, "keep_daily": 0,
        "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0, "keep_first_monthly": -1}
    assert policy_from_mapping(policy_to_mapping(DEFAULT_POLICY)) == DEFAULT_POLICY


def test_first_monthly_is_stable_as_time_passes() -> None:
    """Planning daily and applying each plan keeps the same firsts as planning once."""
    snaps = daily(date(2025, 1, 1), date(2025, 9, 30), hour=3)
    alive: Snaps = []
    for snap in snaps:
        alive.append(snap)
        keep = {d.id for d in plan(alive, DEFAULT_POLICY, snap[1] + timedelta(hours=1))
                if d.keep}
        alive = [s for s in alive if s[0] in keep]
    once = {d.id for d in plan(snaps, DEFAULT_POLICY, at("2025-09-30 04:00")) if d.keep}
    assert {i for i, _ in alive} == once


def test_docstring_example_table() -> None:
    doc = retention.__doc__ or ""
    table = doc.split("id                    kept  reasons\n", 1)[1].split("\n\n", 1)[0]
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=2) for line in table.splitlines()]
    snaps = [(i, at(f"{i[:10]} {i[11:13]}:{i[13:15]}:{i[15:17]}")) for i, _, _ in rows]
    policy = Policy(keep_within=timedelta(days=3), keep_daily=2, keep_weekly=2,
                    keep_first_monthly=-1)
    decisions = plan(snaps, policy, at("2026-03-10 12:00"))
    assert [(d.id, "yes" if d.keep else "no", ", ".join(d.reasons)) for d in decisions] == [
        tuple(r) for r in rows]


# --- single rules ------------------------------------------------------------------------

def test_keep_last_counts_snapshots_and_orders_collision_ids_naturally() -> None:
    t = at("2026-01-01 00:00")
    snaps = [(f"2026-01-01T000000Z{s}", t) for s in ("", "-1", "-2", "-10")]
    snaps.append(("2025-12-31T235959Z", t - timedelta(seconds=1)))
    got = kept(plan(snaps, Policy(keep_last=3), at("2026-02-01 00:00")))
    assert got == {"2026-01-01T000000Z-10": ("last #1", NEWEST),
                   "2026-01-01T000000Z-2": ("last #2",),
                   "2026-01-01T000000Z-1": ("last #3",)}


def test_keep_last_more_than_there_are_keeps_all() -> None:
    snaps = daily(date(2026, 1, 1), date(2026, 1, 3))
    assert kept_days(plan(snaps, Policy(keep_last=5), at("2026-02-01 00:00"))) == [
        "2026-01-01", "2026-01-02", "2026-01-03"]


def test_keep_within_is_strict_and_keeps_future_snapshots() -> None:
    now = at("2026-03-10 12:00")
    snaps = [(sid(t), t) for t in (now - timedelta(hours=48, seconds=1),
                                    now - timedelta(hours=48),
                                    now - timedelta(hours=47, minutes=59, seconds=59),
                                    now + timedelta(hours=5))]
    decisions = plan(snaps, Policy(keep_within=parse_duration("2d")), now)
    assert [d.reasons for d in decisions] == [
        (PRUNED,), (PRUNED,), ("within 2d",), ("within 2d", NEWEST)]


def test_keep_within_does_not_count_towards_other_rules() -> None:
    snaps = daily(date(2026, 1, 1), date(2026, 1, 10))
    decisions = plan(snaps, Policy(keep_within=timedelta(days=3), keep_daily=2),
                     at("2026-01-10 20:00"))
    assert kept(decisions) == {
        "2026-01-10T160000Z": ("within 3d", NEWEST),
        "2026-01-09T160000Z": ("within 3d",),
        "2026-01-08T160000Z": ("within 3d",),
        "2026-01-07T160000Z": ("daily #1",),
        "2026-01-06T160000Z": ("daily #2",),
    }


def test_keep_hourly_keeps_each_hours_newest() -> None:
    start = at("2026-05-01 09:00")
    snaps = [(sid(start + timedelta(minutes=m)), start + timedelta(minutes=m))
             for m in range(0, 300, 20)]  # 09:00 .. 13:40
    got = kept(plan(snaps, Policy(keep_hourly=3), at("2026-05-02 00:00")))
    assert got == {"2026-05-01T134000Z": ("hourly #1", NEWEST),
                   "2026-05-01T124000Z": ("hourly #2",),
                   "2026-05-01T114000Z": ("hourly #3",)}


@pytest.mark.parametrize(("policy", "expected"), [
    (Policy(keep_daily=3), ["2026-01-29 20", "2026-01-30 20", "2026-01-31 20"]),
    (Policy(keep_weekly=2), ["2026-01-25 20", "2026-01-31 20"]),  # Sundays, then newest
    (Policy(keep_monthly=2), ["2025-12-31 20", "2026-01-31 20"]),
    (Policy(keep_yearly=2), ["2025-12-31 20", "2026-01-31 20"]),
    (Policy(keep_yearly=3), ["2025-12-01 08", "2025-12-31 20", "2026-01-31 20"]),  # oldest
    (Policy(keep_first_monthly=2), ["2025-12-01 08", "2026-01-01 08", "2026-01-31 20"]),
    (Policy(keep_first_monthly=1), ["2026-01-01 08", "2026-01-31 20"]),
])
def test_each_bucket_rule(policy: Policy, expected: list[str]) -> None:
    """Two snapshots a day (08:00 and 20:00), 2025-12-01 .. 2026-01-31."""
    snaps = daily(date(2025, 12, 1), date(2026, 1, 31), hour=8) + daily(
        date(2025, 12, 1), date(2026, 1, 31), hour=20)
    decisions = plan(snaps, policy, at("2026-02-01 00:00"))
    assert [f"{d.id[:10]} {d.id[11:13]}" for d in decisions if d.keep] == expected


def test_unlimited_keeps_every_period_and_no_oldest() -> None:
    snaps = daily(date(2026, 1, 1), date(2026, 1, 3), hour=8) + daily(
        date(2026, 1, 1), date(2026, 1, 3), hour=20)
    got = kept(plan(snaps, Policy(keep_daily=-1), at("2026-02-01 00:00")))
    assert got == {"2026-01-01T200000Z": ("daily #3",), "2026-01-02T200000Z": ("daily #2",),
                   "2026-01-03T200000Z": ("daily #1", NEWEST)}


def test_oldest_fallback_when_a_rule_runs_short() -> None:
    snaps = daily(date(2026, 1, 1), date(2026, 1, 3), hour=8) + daily(
        date(2026, 1, 1), date(2026, 1, 3), hour=20)
    got = kept(plan(snaps, Policy(keep_daily=5), at("2026-02-01 00:00")))
    assert got == {"2026-01-01T080000Z": ("daily #4 (oldest)",),
                   "2026-01-01T200000Z": ("daily #3",), "2026-01-02T200000Z": ("daily #2",),
                   "2026-01-03T200000Z": ("daily #1", NEWEST)}


def test_combination_skips_periods_already_kept() -> None:
    """keep_last takes today's two; daily then skips today and takes the three days before;
    monthly skips January (its candidate is kept) and takes December's last."""
    snaps = daily(date(2025, 12, 20), date(2026, 1, 10), hour=8) + daily(
        date(2025, 12, 20), date(2026, 1, 10), hour=20)
    got = kept(plan(snaps, Policy(keep_last=2, keep_daily=3, keep_monthly=1),
                    at("2026-01-11 00:00")))
    assert got == {"2026-01-10T200000Z": ("last #1", NEWEST),
                   "2026-01-10T080000Z": ("last #2",),
                   "2026-01-09T200000Z": ("daily #1",), "2026-01-08T200000Z": ("daily #2",),
                   "2026-01-07T200000Z": ("daily #3",),
                   "2025-12-31T200000Z": ("monthly #1",)}


# --- calendar edges ------------------------------------------------------------------------

def test_month_ends_leap_february_and_year_change() -> None:
    snaps = daily(date(2023, 12, 15), date(2024, 3, 15))
    now = at("2024-04-01 00:00")
    assert kept_days(plan(snaps, Policy(keep_monthly=-1), now)) == [
        "2023-12-31", "2024-01-31", "2024-02-29", "2024-03-15"]
    assert kept_days(plan(snaps, Policy(keep_first_monthly=-1), now)) == [
        "2023-12-15", "2024-01-01", "2024-02-01", "2024-03-01", "2024-03-15"]
    assert kept_days(plan(snaps, Policy(keep_yearly=-1), now)) == ["2023-12-31", "2024-03-15"]
    plain = daily(date(2025, 2, 20), date(2025, 3, 5))
    assert kept_days(plan(plain, Policy(keep_monthly=-1), now)) == ["2025-02-28", "2025-03-05"]


def test_second_before_and_after_midnight_of_new_year() -> None:
    times = [at("2025-12-31 23:59:59"), at("2026-01-01 00:00:00"), at("2026-01-01 00:00:01")]
    snaps = [(sid(t), t) for t in times]
    now = at("2026-02-01 00:00")
    assert kept(plan(snaps, Policy(keep_yearly=-1), now)) == {
        "2025-12-31T235959Z": ("yearly #2",), "2026-01-01T000001Z": ("yearly #1", NEWEST)}
    assert kept(plan(snaps, Policy(keep_first_monthly=-1), now)) == {
        "2025-12-31T235959Z": ("first of 2025-12",), "2026-01-01T000000Z": ("first of 2026-01",),
        "2026-01-01T000001Z": (NEWEST,)}


@pytest.mark.parametrize(("first", "last", "expected"), [
    # 2020-12-28 .. 2021-01-03 is ISO week 2020-W53: one bucket across the calendar year
    (date(2020, 12, 20), date(2021, 1, 12),
     ["2020-12-20", "2020-12-27", "2021-01-03", "2021-01-10", "2021-01-12"]),
    # 2024-12-30 and 2024-12-31 are in 2025-W01 with 2025-01-01 .. 2025-01-05
    (date(2024, 12, 22), date(2025, 1, 8), ["2024-12-22", "2024-12-29", "2025-01-05",
                                            "2025-01-08"]),
])
def test_weekly_uses_iso_weeks_across_year_ends(first: date, last: date,
                                                expected: list[str]) -> None:
    decisions = plan(daily(first, last), Policy(keep_weekly=-1), at("2025-06-01 00:00"))
    assert kept_days(decisions) == expected


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:  # pragma: no cover - depends on the host's tzdata
        pytest.skip(f"no tzdata for {name}")


@pytest.mark.parametrize(("day", "local_hours", "repeated"), [(date(2026, 3, 29), 23, 0),
                                                               (date(2026, 10, 25), 25, 1)])
def test_dst_transition_days_bucket_in_utc(day: date, local_hours: int, repeated: int) -> None:
    """Around Europe/Berlin's DST changes, every UTC hour and day is exactly one bucket,
    whether the times come in UTC or in local time (they are the same instants)."""
    berlin = _zone("Europe/Berlin")
    start = datetime.combine(day, time(), tzinfo=berlin).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=berlin).astimezone(UTC)
    assert end - start == timedelta(hours=local_hours)
    instants = [start - timedelta(hours=3) + timedelta(minutes=30 * i)
                for i in range(2 * (local_hours + 6))]
    in_utc = [(sid(t), t) for t in instants]
    in_local = [(sid(t), t.astimezone(berlin)) for t in instants]
    now = end + timedelta(days=30)
    for policy in (Policy(keep_hourly=-1), Policy(keep_daily=-1)):
        assert plan(in_local, policy, now) == plan(in_utc, policy, now)
    hourly = [d for d in plan(in_utc, Policy(keep_hourly=-1), now) if d.keep]
    assert len(hourly) == local_hours + 6  # one per UTC hour: none doubled, none missing
    assert all(d.time.minute == 30 for d in hourly)
    local_labels = {t.astimezone(berlin).strftime("%Y-%m-%d %H") for t in instants}
    assert len(local_labels) == len(hourly) - repeated  # local hours would merge two
    daily_kept = [d.time for d in plan(in_utc, Policy(keep_daily=-1), now) if d.keep]
    assert [t.strftime("%H:%M") for t in daily_kept[:-1]] == ["23:30"] * (len(daily_kept) - 1)


# --- safety keeps, degenerate input, validation --------------------------------------

def test_empty_input() -> None:
    assert plan([], DEFAULT_POLICY, at("2026-01-01 00:00")) == []


def test_single_snapshot_is_kept_even_with_no_rule() -> None:
    t = at("2020-01-01 00:00")
    assert plan([("x", t)], Policy(), at("2026-01-01 00:00")) == [
        Decision("x", t, True, (NEWEST,))]
    assert plan([("x", t)], Policy(keep_daily=3), at("2026-01-01 00:00")) == [
        Decision("x", t, True, ("daily #1", NEWEST))]


def test_protected_ids_are_kept_and_unknown_ones_ignored() -> None:
    snaps = daily(date(2026, 1, 1), date(2026, 1, 5))
    decisions = plan(snaps, Policy(keep_last=1), at("2026-02-01 00:00"),
                     protect={"2026-01-02T160000Z", "2026-01-05T160000Z", "nope"})
    assert kept(decisions) == {"2026-01-02T160000Z": (PROTECTED,),
                               "2026-01-05T160000Z": ("last #1", NEWEST, PROTECTED)}
    with pytest.raises(ValueError, match="collection of ids"):
        plan(snaps, Policy(), at("2026-02-01 00:00"), protect="2026-01-02T160000Z")


def test_input_order_does_not_matter_and_output_is_chronological() -> None:
    snaps = daily(date(2026, 1, 1), date(2026, 1, 9))
    forward = plan(snaps, Policy(keep_daily=2), at("2026-02-01 00:00"))
    backward = plan(snaps[::-1], Policy(keep_daily=2), at("2026-02-01 00:00"))
    assert forward == backward
    assert [d.id for d in forward] == [i for i, _ in snaps]


def test_times_are_normalised_to_utc() -> None:
    t = datetime(2026, 1, 1, 1, 0, tzinfo=_zone("Europe/Berlin"))
    (decision,) = plan([("x", t)], Policy(keep_daily=1), at("2026-02-01 00:00"))
    assert decision.time == t
    assert decision.time.tzinfo is UTC


@pytest.mark.parametrize(("snapshots", "now", "message"), [
    ([("a", datetime(2026, 1, 1))], at("2026-01-02 00:00"), "time of 'a'"),
    ([("a", at("2026-01-01 00:00"))], datetime(2026, 1, 2), "now"),
    ([("a", at("2026-01-01 00:00")), ("a", at("2026-01-02 00:00"))], at("2026-01-03 00:00"),
     "duplicate snapshot id 'a'"),
])
def test_plan_rejects_bad_input(snapshots: Snaps, now: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        plan(snapshots, Policy(keep_daily=1), now)


@pytest.mark.parametrize("kwargs", [
    {"keep_daily": -2}, {"keep_last": True}, {"keep_weekly": 1.0}, {"keep_yearly": "3"},
    {"keep_within": timedelta(0)}, {"keep_within": timedelta(hours=-1)},
    {"keep_within": timedelta(minutes=90)}, {"keep_within": "90d"},
])
def test_policy_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Policy(**kwargs)  # type: ignore[arg-type]


# --- durations and the config mapping --------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("12H", timedelta(hours=12)),
    ("2w", timedelta(days=14)), ("1y", timedelta(days=365)), ("6m", timedelta(days=186)),
    ("1m", timedelta(days=31)), ("007d", timedelta(days=7)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", "d", "90", "0d", "00h", "-1d", "+1d", "1.5d", "1 d", " 1d", "1d ", "1dd", "1d2h",
    "1M", "1s", "1D", "1Y", "\u0661d", "90d\n", "999999999999y", "9999999999w",
])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, 90, timedelta(days=1), b"90d"])
def test_parse_duration_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("duration", "text"), [
    (timedelta(days=90), "90d"), (timedelta(hours=36), "36h"), (timedelta(days=365), "365d"),
    (timedelta(weeks=2), "14d"),
])
def test_format_duration(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text
    assert parse_duration(text) == duration


def test_policy_from_mapping_full() -> None:
    policy = policy_from_mapping({
        "keep_last": 2, "keep_within": "12h", "keep_hourly": 24, "keep_daily": 7,
        "keep_weekly": 4, "keep_monthly": 6, "keep_yearly": -1, "keep_first_monthly": 0})
    assert policy == Policy(keep_last=2, keep_within=timedelta(hours=12), keep_hourly=24,
                            keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=-1)


def test_policy_from_mapping_missing_keys_are_off_and_empty_within_is_off() -> None:
    assert policy_from_mapping({"keep_daily": 7}) == Policy(keep_daily=7)
    assert policy_from_mapping({"keep_within": "", "keep_last": 1}) == Policy(keep_last=1)
    nothing = policy_from_mapping({"keep_within": "", "keep_first_monthly": 0})
    assert nothing == Policy()
    assert nothing.keeps_nothing
    assert not DEFAULT_POLICY.keeps_nothing
    assert not Policy(keep_yearly=-1).keeps_nothing


@pytest.mark.parametrize(("mapping", "message"), [
    ({"keep_dayly": 7}, "unknown retention key 'keep_dayly'"),
    ({"keep_daily": "7"}, "keep_daily: must be an integer"),
    ({"keep_daily": 7.0}, "keep_daily: must be an integer"),
    ({"keep_daily": True}, "keep_daily: must be an integer"),
    ({"keep_daily": -2}, "keep_daily: must be an integer >= -1"),
    ({"keep_within": 90}, "keep_within: must be a duration string"),
    ({"keep_within": None}, "keep_within: must be a duration string"),
    ({"keep_within": "90x"}, "keep_within: invalid duration '90x'"),
])
def test_policy_from_mapping_rejects(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        policy_from_mapping(mapping)


# --- properties ------------------------------------------------------------------------

BASE = datetime(2023, 12, 1, tzinfo=UTC)  # spans ISO-week year ends 2023/24, 2024/25
RULE_FIELDS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
               "keep_yearly", "keep_first_monthly")
FORMATS = {"keep_hourly": "%Y-%m-%d %H", "keep_daily": "%Y-%m-%d", "keep_weekly": "%G-%V",
           "keep_monthly": "%Y-%m", "keep_yearly": "%Y", "keep_first_monthly": "%Y-%m"}


@st.composite
def snapshot_sets(draw: st.DrawFn) -> Snaps:
    """Clustered times (several per hour and day, some in the same second), with the
    store's collision ids, in random order."""
    stamps = draw(st.lists(st.tuples(st.integers(0, 800), st.integers(0, 23),
                                     st.sampled_from([0, 1, 1800, 3599])), max_size=40))
    counts: dict[datetime, int] = {}
    out: Snaps = []
    for days, hour, second in stamps:
        t = BASE + timedelta(days=days, hours=hour, seconds=second)
        n = counts.get(t, 0)
        counts[t] = n + 1
        out.append((sid(t) + (f"-{n}" if n else ""), t))
    return draw(st.permutations(out))


counts = st.one_of(st.just(0), st.just(0), st.integers(-1, 5))
policies = st.builds(
    Policy, keep_last=counts, keep_hourly=counts, keep_daily=counts, keep_weekly=counts,
    keep_monthly=counts, keep_yearly=counts, keep_first_monthly=counts,
    keep_within=st.one_of(st.none(), st.integers(1, 24 * 400).map(
        lambda h: timedelta(hours=h))))
nows = st.integers(0, 900 * 86400).map(lambda s: BASE + timedelta(seconds=s))


def natural(item: tuple[str, datetime]) -> tuple[datetime, str, int, str]:
    ident, t = item
    m = re.fullmatch(r"(.*)-([0-9]+)", ident)
    return (t, m[1], int(m[2]), ident) if m else (t, ident, 0, ident)


def oracle(snaps: Snaps, policy: Policy, now: datetime) -> dict[str, str]:
    """An independent, literal reading of the documented rules: id -> rule field."""
    newest_first = sorted(snaps, key=natural, reverse=True)
    why: dict[str, str] = {}
    if policy.keep_within is not None:
        why |= {i: "keep_within" for i, t in newest_first if t > now - policy.keep_within}
    for rule in RULE_FIELDS:
        n = getattr(policy, rule)
        if n == 0:
            continue
        labelled = [(i if rule == "keep_last" else t.strftime(FORMATS[rule]), i)
                    for i, t in newest_first]
        candidates: dict[str, str] = {}
        for period, ident in labelled:
            if rule == "keep_first_monthly" or period not in candidates:
                candidates[period] = ident  # newest-first: last write is the oldest
        got = 0
        for ident in candidates.values():  # dicts keep first-seen (newest period) order
            if ident not in why:
                why[ident] = rule
                got += 1
                if got == n:
                    break
        else:
            last = newest_first[-1][0] if newest_first else None
            if n > 0 and rule != "keep_first_monthly" and last is not None and last not in why:
                why[last] = rule + "(oldest)"
    return why


def rule_of(reason: str) -> str:
    if reason.startswith("within "):
        return "keep_within"
    if reason.startswith("first of "):
        return "keep_first_monthly"
    name = "keep_" + reason.split(" ", 1)[0]
    return name + "(oldest)" if reason.endswith("(oldest)") else name


@settings(max_examples=300)
@given(snapshot_sets(), policies, nows, st.data())
def test_plan_properties(snaps: Snaps, policy: Policy, now: datetime, data: st.DataObject) -> None:
    ids = [i for i, _ in snaps]
    protect = data.draw(st.sets(st.sampled_from(ids)) if ids else st.just(set[str]()))
    decisions = plan(snaps, policy, now, protect=protect)

    # every input id decided exactly once, in chronological order
    assert sorted(d.id for d in decisions) == sorted(ids)
    assert [d.id for d in decisions] == [i for i, _ in sorted(snaps, key=natural)]
    for d in decisions:
        assert d.keep == (d.reasons != (PRUNED,))
        assert PRUNED not in d.reasons or d.reasons == (PRUNED,)
        assert len([r for r in d.reasons if r not in (NEWEST, PROTECTED)]) <= 1
    # safety keeps
    if decisions:
        assert decisions[-1].keep
        assert NEWEST in decisions[-1].reasons
        assert sum(NEWEST in d.reasons for d in decisions) == 1
    assert all(d.keep for d in decisions if d.id in protect)

    # the rules are exactly the documented ones
    by_rule = {d.id: rule_of(d.reasons[0]) for d in decisions
               if d.keep and d.reasons[0] not in (NEWEST, PROTECTED)}
    assert by_rule == oracle(snaps, policy, now)

    # input order does not matter
    assert plan(snaps[::-1], policy, now, protect=protect) == decisions

    # idempotence: planning the survivors again prunes nothing and gives the same reasons
    survivors = [(d.id, d.time) for d in decisions if d.keep]
    assert plan(survivors, policy, now, protect=protect) == [d for d in decisions if d.keep]

    # bound: window + counts (+1 oldest per finite borg rule) + safety keeps
    bound = 1 + len(protect)
    if policy.keep_within is not None:
        bound += sum(t > now - policy.keep_within for _, t in snaps)
    for rule in RULE_FIELDS:
        n = getattr(policy, rule)
        if n == -1:
            bound += len(snaps) if rule == "keep_last" else len(
                {t.strftime(FORMATS[rule]) for _, t in snaps})
        elif n > 0:
            bound += n + (rule != "keep_first_monthly")
    assert sum(d.keep for d in decisions) <= bound


@given(policies)
def test_policy_mapping_round_trip(policy: Policy) -> None:
    assert policy_from_mapping(policy_to_mapping(policy)) == policy


@given(st.integers(1, 10**6), st.sampled_from("hHdwmy"))
def test_duration_round_trip(count: int, unit: str) -> None:
    duration = parse_duration(f"{count}{unit}")
    assert parse_duration(format_duration(duration)) == duration
