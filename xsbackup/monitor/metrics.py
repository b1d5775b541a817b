"""Prometheus metrics, read from durable state on every scrape.

Events happen in many processes (one forced command per SSH connection, the
post-processor, cron jobs), so nothing here counts in memory. A custom collector reads
at scrape time:

* ``<root>/log/counters.json`` (``counters.py``), whose keys ``name{label="v",...}``
  become counters: ``transfers`` → ``xsbackup_transfers_total{result}``,
  ``admissions`` → ``xsbackup_admissions_total{path,result,reason}``, ``promotions`` →
  ``xsbackup_snapshot_promotions_total``, ``bytes_received`` / ``files_received`` →
  ``xsbackup_{bytes,files}_received_total``; any other name ``n`` → ``xsbackup_n_total``;
* the queue directory (``xsbackup_queue_depth``);
* each client directory's status xattrs, one ``listxattr`` per client and no tree walk
  (``xsbackup_client_seconds_since_last_success{client}``, ``xsbackup_snapshots{client}``);
* one ``statvfs`` of the state root (``xsbackup_disk_{blocks,inodes}_used_ratio``);
* each client's last integrity check, from the same xattrs
  (``xsbackup_check_damaged_files{client}``, ``xsbackup_check_last_time_seconds{client}``,
  ``xsbackup_check_covered_time_seconds{client}``: epoch times).

A private ``CollectorRegistry`` is used, never the global default one, so importing
this module registers nothing and two apps in one process never clash.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from xsbackup import counters
from xsbackup.offsite import replicate, state
from xsbackup.snapshots import queue
from xsbackup.store import Store, disk_use, get_xattrs, iter_clients

CONTENT_TYPE = CONTENT_TYPE_LATEST

# counters.json name -> (metric name without _total, its labels, help)
KNOWN: dict[str, tuple[str, tuple[str, ...], str]] = {
    "transfers": ("xsbackup_transfers", ("result",), "Uploads finished, by result."),
    "admissions": ("xsbackup_admissions", ("path", "reason", "result"),
                   "Admission decisions, by path (ssh or http), result and reason."),
    "promotions": ("xsbackup_snapshot_promotions", (), "Snapshots made visible."),
    "bytes_received": ("xsbackup_bytes_received", (),
                       "Bytes of new files stored (not shared with an earlier snapshot)."),
    "files_received": ("xsbackup_files_received", (),
                       "New files stored (not shared with an earlier snapshot)."),
    "offsite_failures": ("xsbackup_offsite_failures", ("reason",),
                         "Failed off-site replications and runs, by reason."),
}
_KEY_RE = re.compile(r"([a-z_][a-z0-9_]*)(?:\{(.*)\})?")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"(?:,|$)')


def parse_key(text: str) -> tuple[str, dict[str, str]] | None:
    """``name{a="x",b="y"}`` → (name, labels); None for a key we cannot read."""
    m = _KEY_RE.fullmatch(text)
    if m is None:
        return None
    labels: dict[str, str] = {}
    inner = m.group(2)
    if inner:
        pos = 0
        while pos < len(inner):
            lm = _LABEL_RE.match(inner, pos)
            if lm is None:
                return None
            labels[lm.group(1)] = lm.group(2)
            pos = lm.end()
    return m.group(1), labels


def _counter_families(store: Store) -> list[Metric]:
    grouped: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for k, v in counters.read(store).items():
        parsed = parse_key(k)
        if parsed is not None:
            grouped[parsed[0]].append((parsed[1], v))
    # The well-known families are always present (a plain one at 0), so a dashboard
    # never sees a metric appear late.
    for name in KNOWN:
        grouped.setdefault(name, [])
    out: list[Metric] = []
    for name, samples in sorted(grouped.items()):
        metric, known_labels, help_text = KNOWN.get(
            name, (f"xsbackup_{name}", (), f"Events counted as {name}."))
        label_names = sorted(set(known_labels) | {ln for labels, _ in samples for ln in labels})
        fam = CounterMetricFamily(metric, help_text, labels=label_names)
        if not samples and not label_names:
            fam.add_metric([], 0.0)
        sums: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in samples:
            sums[tuple(labels.get(ln, "") for ln in label_names)] += value
        for values, total in sorted(sums.items()):
            fam.add_metric(list(values), total)
        out.append(fam)
    return out


def queue_depth(store: Store) -> int:
    return queue.depth(store)


def _parse_time(text: str) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _snapshot_count(store: Store, client: str, facts: dict[str, str]) -> int:
    text = facts.get("snapshot_count", "")
    if text.isdigit():
        return int(text)
    return sum(len(store.snapshot_ids(client, v)) for v in store.volumes(client))


def _client_families(store: Store, now: dt.datetime) -> list[Metric]:
    since = GaugeMetricFamily("xsbackup_client_seconds_since_last_success",
                              "Seconds since the client's last successful backup.",
                              labels=["client"])
    snaps = GaugeMetricFamily("xsbackup_snapshots", "Visible snapshots of the client.",
                              labels=["client"])
    for client in iter_clients(store):
        directory = store.client_dir(client)
        if not (directory / "client.json").is_file():
            continue
        facts = get_xattrs(directory)
        last = _parse_time(facts.get("last_success", ""))
        if last is not None:
            since.add_metric([client], max(0.0, (now - last).total_seconds()))
        snaps.add_metric([client], float(_snapshot_count(store, client, facts)))
    return [since, snaps]


def _check_families(store: Store) -> list[Metric]:
    damaged = GaugeMetricFamily("xsbackup_check_damaged_files",
                                "Damaged files the client's last integrity check found.",
                                labels=["client"])
    last = GaugeMetricFamily("xsbackup_check_last_time_seconds",
                             "When the client's last integrity check ran (epoch).",
                             labels=["client"])
    covered = GaugeMetricFamily("xsbackup_check_covered_time_seconds",
                                "When the rotating sample last covered every inode of the "
                                "client (epoch).", labels=["client"])
    for client in iter_clients(store):
        facts = get_xattrs(store.client_dir(client))
        when = _parse_time(facts.get("check_at", ""))
        if when is None:
            continue
        last.add_metric([client], when.timestamp())
        text = facts.get("check_damaged", "")
        damaged.add_metric([client], float(text) if text.isdigit() else 0.0)
        full = _parse_time(facts.get("check_covered_at", ""))
        if full is not None:
            covered.add_metric([client], full.timestamp())
    return [damaged, last, covered]
def _offsite_families(store: Store, now: dt.datetime) -> list[Metric]:
    """``xsbackup_offsite_lag_seconds{client}`` once replication has run: seconds since
    the oldest snapshot not yet off-site was taken (0: all off-site)."""
    repo = state.load_repo(store)
    if not repo.last_run:
        return []
    lag = GaugeMetricFamily("xsbackup_offsite_lag_seconds",
                            "Seconds since the client's oldest snapshot not yet off-site "
                            "was taken (0: every snapshot is off-site).", labels=["client"])
    for row in replicate.client_status(store, repo.volumes, now):
        lag.add_metric([row["client"]], row["lag_seconds"])
    return [lag]


class StateCollector:
    """Reads the state root on each ``collect()`` (one scrape)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        store = self.store
        yield from _counter_families(store)
        yield GaugeMetricFamily("xsbackup_queue_depth",
                                "Completed transfers waiting for the post-processor.",
                                value=float(queue_depth(store)))
        yield from _client_families(store, dt.datetime.now(dt.UTC))
        yield from _check_families(store)
        yield from _offsite_families(store, dt.datetime.now(dt.UTC))
        use = disk_use(Path(store.root))
        yield GaugeMetricFamily("xsbackup_disk_blocks_used_ratio",
                                "Share of the state root's usable disk blocks in use.",
                                value=use.blocks_pct / 100.0)
        yield GaugeMetricFamily("xsbackup_disk_inodes_used_ratio",
                                "Share of the state root's inodes in use.",
                                value=use.inodes_pct / 100.0)


def make_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(store))
    return registry


def render(store: Store) -> bytes:
    """The text exposition format of every metric, read now."""
    return generate_latest(make_registry(store))
