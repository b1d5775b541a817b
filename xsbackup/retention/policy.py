"""Retention: which snapshots a policy keeps. Pure functions: no filesystem, no clock.

``plan(snapshots, policy, now)`` decides, for every ``(id, time)`` given, keep or prune and
why. A separate executor (``prune``) carries a plan out; this module never deletes.

Semantics: borg's ordered buckets
---------------------------------

The rules are borg prune's (1.2 and later: ``--keep-within``, ``--keep-last``,
``--keep-hourly`` ... ``--keep-yearly``), applied exactly as borg applies them, plus one
rule of ours, ``keep_first_monthly``, for the original school server's default.

1. Snapshots are sorted by time, then by id in natural order (``...Z`` < ``...Z-1`` <
   ``...Z-2`` < ``...Z-10``, so same-second collision ids order as the store made them),
   then by the id itself. The input's order does not matter; ids must be unique.
2. ``keep_within`` (say 90d) keeps every snapshot with ``time > now - 90d`` (strictly,
   like borg: one exactly 90 days old is outside), and any snapshot dated after ``now``.
3. Then each count rule, in this fixed order::

       keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly,
       keep_first_monthly

   walks the periods (buckets) that hold at least one snapshot, newest period first.
   Each period has one candidate: its newest snapshot (for ``keep_first_monthly``: its
   oldest). If an earlier rule (or ``keep_within``) already keeps the candidate, the
   period is used up without counting and the rule does NOT fall back to another snapshot
   of that period. Otherwise the rule keeps the candidate and counts it; it stops after
   ``N`` kept. Periods without snapshots do not count: ``keep_daily=7`` keeps the 7 most
   recent days *that have snapshots*. ``-1`` means no limit, ``0`` turns the rule off.
4. "Oldest" fallback (borg >= 1.2): when a borg rule (last ... yearly) with a finite
   ``N`` runs out of periods before keeping ``N``, it also keeps the oldest snapshot of
   all, unless something already keeps it; that counts as the rule's next one and is
   labelled ``(oldest)``. ``keep_first_monthly`` needs no fallback: if it runs out, it has
   visited the oldest month, whose candidate is the oldest snapshot.
5. Safety keeps, applied after the rules and never influencing them (so rule counts stay
   exactly borg's): the newest snapshot is always kept (``"newest"``), and so is every id
   in ``protect`` (``"protected"``: a snapshot being read, the base of a transfer in
   progress). Ids in ``protect`` that are not among the snapshots are ignored.

Periods, computed on the UTC time (borg uses local time; we use UTC so that a plan does
not depend on the server's time zone, and daylight saving time cannot create a 23- or
25-hour day or a repeated hour: UTC has neither): ``keep_last``: every snapshot is its
own period (borg's ``--keep-last`` is ``--keep-secondly``, which would merge two
snapshots of the same second; our collision ids ``...Z-1`` make that possible, so we
count snapshots); hourly ``%Y-%m-%d %H``; daily ``%Y-%m-%d``; weekly ISO week
``%G-%V`` (Monday to Sunday; 2020-12-31 and 2021-01-03 are both in 2020-W53, and
2024-12-30 is in 2025-W01); monthly and first-monthly ``%Y-%m``; yearly ``%Y``. So a
school at UTC+3 has its "day" end at 03:00 local time.

Reasons: a kept snapshot's ``reasons`` are the rule that kept it (``"within 90d"``,
``"last #1"``, ``"daily #3"``, ``"yearly #1 (oldest)"``, ``"first of 2026-01"``), then
``"newest"`` and ``"protected"`` where they apply. A pruned one has ``("no rule keeps
it",)``. At most one rule keeps a snapshot, as in borg.

Re-planning is stable: dropping the pruned snapshots and planning again with the same
``now`` and ``protect`` prunes nothing more and gives the same reasons, for every rule
(each rule sees the same periods with the same candidates, since every candidate it
visited was kept). With a later ``now``, snapshots leave the ``keep_within`` window and
are thinned, which is the point.

The default: the original XS server
-----------------------------------

ds-backup's server kept every snapshot for 90 days, and after that the first snapshot of
each month. ``DEFAULT_POLICY`` is ``keep_within=90d, keep_first_monthly=-1``. Months
whose first snapshot is inside the window are used up by ``keep_within`` (rule 3), so
the first-of-month keeps are exactly those of snapshots older than 90 days, with no
separate "after" setting. Borg's ``keep_monthly`` keeps the *last* of each month; a first
of a month never changes once the month has begun, and never depends on ``now``.

Example, ``now = 2026-03-10T12:00:00Z`` and ``Policy(keep_within=3d, keep_daily=2,
keep_weekly=2, keep_first_monthly=-1)``::

    id                    kept  reasons
    2025-12-20T080000Z    yes   first of 2025-12
    2025-12-31T080000Z    no    no rule keeps it
    2026-01-03T080000Z    yes   first of 2026-01
    2026-02-03T080000Z    yes   first of 2026-02
    2026-02-20T080000Z    yes   weekly #2
    2026-03-01T080000Z    yes   weekly #1
    2026-03-05T080000Z    no    no rule keeps it
    2026-03-05T200000Z    yes   daily #2
    2026-03-06T080000Z    yes   daily #1
    2026-03-08T080000Z    yes   within 3d
    2026-03-10T080000Z    yes   within 3d
    2026-03-10T080000Z-1  yes   within 3d, newest

The window starts at 03-07 12:00. Days 03-10 and 03-08 have their candidates kept by
the window already, so daily #1 is 03-06 and #2 is 03-05 at 20:00 (the day's newest; the
08:00 one goes). The weeks of 03-09 and 03-02 are used up the same way (candidates
03-10-1 and 03-08), so weekly #1 is Sunday 03-01 and #2 is 02-20 (week of 02-16).
03-01 is also the first of March, but ``keep_weekly`` took it, so ``keep_first_monthly``
skips March. ``tests/unit/test_retention.py`` checks this table against ``plan``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

# The duration text (``"90d"``) has one owner, shared with the configuration's checks.
from xsbackup.units import check_whole_hours, format_duration, parse_duration

PRUNED = "no rule keeps it"
NEWEST = "newest"
PROTECTED = "protected"

_SUFFIX_RE = re.compile(r"(.*)-([0-9]{1,9})", re.DOTALL)


@dataclass(frozen=True)
class Policy:
    """Rule counts: ``0`` off, ``N`` keep N periods, ``-1`` every period. See the module."""

    keep_last: int = 0
    keep_within: timedelta | None = None
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_first_monthly: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "keep_within":
                if value is not None:
                    check_whole_hours(value, f.name)
            elif isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"{f.name}: must be an integer >= -1 (-1: no limit), "
                                 f"got {value!r}")

    @property
    def keeps_nothing(self) -> bool:
        """True when no rule is on: only the safety keeps remain (callers may warn)."""
        return self.keep_within is None and not any(
            getattr(self, name) for name, *_ in _RULES)


DEFAULT_POLICY = Policy(keep_within=timedelta(days=90), keep_first_monthly=-1)

POLICY_KEYS = tuple(f.name for f in fields(Policy))


def policy_from_mapping(mapping: Mapping[str, object]) -> Policy:
    """A ``Policy`` from config-file keys; a missing key leaves that rule off.

    Counts are integers >= -1; ``keep_within`` is a duration string (``"90d"``) or ``""``
    for off. Unknown keys and wrong types raise ``ValueError`` naming the key. A policy
    with every rule off is accepted (see ``Policy.keeps_nothing``): borg refuses to prune
    without a rule, but here the config's defaults always supply ``keep_within`` and
    ``keep_first_monthly``, so every rule is off only when the admin turned each one off,
    and the newest snapshot survives anyway.
    """
    values: dict[str, object] = {}
    for key, value in mapping.items():
        if key not in POLICY_KEYS:
            raise ValueError(f"unknown retention key {key!r}: expected one of "
                             f"{', '.join(POLICY_KEYS)}")
        if key == "keep_within":
            if not isinstance(value, str):
                raise ValueError(f"keep_within: must be a duration string such as '90d' "
                                 f"or '' for off, got {value!r}")
            try:
                values[key] = parse_duration(value) if value else None
            except ValueError as e:
                raise ValueError(f"keep_within: {e}") from None
        elif isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ValueError(f"{key}: must be an integer >= -1 (-1: no limit), got {value!r}")
        else:
            values[key] = value
    return Policy(**values)  # type: ignore[arg-type]  # each value checked above


def policy_to_mapping(policy: Policy) -> dict[str, int | str]:
    """Every config-file key of ``policy``; ``policy_from_mapping`` reads it back."""
    out: dict[str, int | str] = {}
    for name in POLICY_KEYS:
        value = getattr(policy, name)
        if name == "keep_within":
            out[name] = "" if value is None else format_duration(value)
        else:
            out[name] = int(value)
    return out


@dataclass(frozen=True)
class Decision:
    """One snapshot's fate; ``time`` is in UTC."""

    id: str
    time: datetime
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class _Snap:
    id: str
    time: datetime  # UTC
    order: tuple[datetime, str, int, str]


def _order(sid: str, time: datetime) -> tuple[datetime, str, int, str]:
    match = _SUFFIX_RE.fullmatch(sid)
    if match is None:
        return (time, sid, 0, sid)
    return (time, match[1], int(match[2]), sid)


# (policy field, label, period of a snapshot, candidate is the period's oldest)
_Period = Callable[[_Snap], Hashable]
_RULES: tuple[tuple[str, str, _Period, bool], ...] = (
    ("keep_last", "last", lambda s: s.order, False),
    ("keep_hourly", "hourly", lambda s: (s.time.date(), s.time.hour), False),
    ("keep_daily", "daily", lambda s: s.time.date(), False),
    ("keep_weekly", "weekly", lambda s: s.time.isocalendar()[:2], False),
    ("keep_monthly", "monthly", lambda s: (s.time.year, s.time.month), False),
    ("keep_yearly", "yearly", lambda s: s.time.year, False),
    ("keep_first_monthly", "first", lambda s: (s.time.year, s.time.month), True),
)


def _buckets(newest_first: list[_Snap], period: _Period) -> list[list[_Snap]]:
    """Group into periods, newest period first; periods are contiguous in time."""
    out: list[list[_Snap]] = []
    last: Hashable = object()
    for snap in newest_first:
        key = period(snap)
        if not out or key != last:
            out.append([])
            last = key
        out[-1].append(snap)
    return out


def _apply_rule(newest_first: list[_Snap], label: str, count: int, period: _Period,
                first: bool, claimed: dict[str, str]) -> None:
    if count == 0:
        return
    kept = 0
    for bucket in _buckets(newest_first, period):
        candidate = bucket[-1] if first else bucket[0]
        if candidate.id in claimed:
            continue
        kept += 1
        if first:
            claimed[candidate.id] = f"first of {candidate.time:%Y-%m}"
        else:
            claimed[candidate.id] = f"{label} #{kept}"
        if kept == count:
            return
    if count > 0 and not first and newest_first and newest_first[-1].id not in claimed:
        claimed[newest_first[-1].id] = f"{label} #{kept + 1} (oldest)"


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{what}: expected a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def plan(snapshots: Sequence[tuple[str, datetime]], policy: Policy, now: datetime, *,
         protect: Collection[str] = ()) -> list[Decision]:
    """Keep or prune each snapshot, oldest first. See the module docstring."""
    if isinstance(protect, str):
        raise ValueError("protect: expected a collection of ids, got a string")
    now = _utc(now, "now")
    snaps: list[_Snap] = []
    seen: set[str] = set()
    for sid, time in snapshots:
        if sid in seen:
            raise ValueError(f"duplicate snapshot id {sid!r}")
        seen.add(sid)
        utc = _utc(time, f"time of {sid!r}")
        snaps.append(_Snap(sid, utc, _order(sid, utc)))
    snaps.sort(key=lambda s: s.order)

    claimed: dict[str, str] = {}
    if policy.keep_within is not None:
        cutoff = now - policy.keep_within
        label = f"within {format_duration(policy.keep_within)}"
        for snap in snaps:
            if snap.time > cutoff:
                claimed[snap.id] = label
    newest_first = snaps[::-1]
    for name, label, period, first in _RULES:
        _apply_rule(newest_first, label, getattr(policy, name), period, first, claimed)

    protected = set(protect)
    newest = snaps[-1].id if snaps else None
    decisions: list[Decision] = []
    for snap in snaps:
        reasons = [claimed[snap.id]] if snap.id in claimed else []
        if snap.id == newest:
            reasons.append(NEWEST)
        if snap.id in protected:
            reasons.append(PROTECTED)
        decisions.append(Decision(snap.id, snap.time, bool(reasons),
                                  tuple(reasons) if reasons else (PRUNED,)))
    return decisions
