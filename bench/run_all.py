"""Every benchmark, one after another, and one summary table of their figures.

``bench/run-all quick`` (a few minutes: small sizes, one or two runs) or
``bench/run-all full`` (the sizes bench/README.md reports). Before each benchmark it waits
until the 1-minute load average is at most ``--quiet-load`` (up to ``--quiet-timeout``
seconds; each benchmark records what it found), runs it with ``--out
run-all-MODE-NAME.json``, and at the end writes ``bench/results/summary.md`` (and
``summary.json``): one row per figure with its anchor, the ratio, the target and whether
it was met. A benchmark that fails is named in the table, and the others still run.

Every figure and its anchor come from one benchmark's own JSON, measured side by side in
that one run; nothing is compared across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# name -> (quick arguments, full arguments)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "ingest": (["--files", "2000", "--mb", "40", "--runs", "3", "--full-runs", "2",
                "--startup-runs", "10"], []),
    "serve": (["--mb", "64", "--runs", "1", "--duration", "3", "--http-runs", "1"], []),
    "snapshot": (["--files", "2000", "--runs", "2", "--cjson-mb", "2", "--cjson-nested-mb",
                  "1", "--wait-cjson", "0"], []),
    "prune": (["--files", "2000", "--du-files", "500", "--du-snapshots", "5", "--runs",
               "2"], []),
    "restore": (["--files", "500", "--mb", "20", "--runs", "1"], []),
    "registration": (["--count", "30", "--window", "5", "--rounds", "1"], []),
    "integrity": (["--files", "20000", "--check-files", "4000", "--check-mb", "200", "--runs",
                   "2"], []),
    "offsite": (["--files", "2000", "--mb", "40", "--runs", "2"], []),
    "backends": (["--files", "15000", "--mb", "60", "--runs", "2"], []),
    "fleet": (["--servers", "4", "--files", "5000", "--mb", "20", "--snapshots", "5", "--runs",
               "2"], []),
}


@dataclass
class Row:
    bench: str
    figure: str
    value: str
    anchor: str
    ratio: float | None
    target: str
    met: bool | None


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _ms(s: float | None) -> str:
    return "?" if s is None else f"{1e3 * s:.1f} ms"


def _s(s: float | None) -> str:
    return "?" if s is None else f"{s:.3f} s"


def _ratio_row(bench: str, figure: str, value: float | None, anchor_name: str,
               anchor: float | None, limit: float, fmt: Callable[[float | None], str],
               ) -> Row:
    ratio = value / anchor if value is not None and anchor else None
    return Row(bench, figure, fmt(value), f"{anchor_name} {fmt(anchor)}", ratio,
               f"≤ {limit:g}x", None if ratio is None else ratio <= limit)


def ingest_rows(r: dict[str, Any]) -> list[Row]:
    cases, full, start = r.get("cases", {}), r.get("full_backup", {}), r.get("startup", {})
    med = lambda d, k: _get(d, k, "median")  # noqa: E731 - a local shorthand
    rows = [
        _ratio_row("ingest", "no-change backup, xsbackup", med(cases, "xsbackup"),
                   "raw rsync --link-dest", med(cases, "raw"), 1.05, _s),
        _ratio_row("ingest", "no-change backup, xsbackup", med(cases, "xsbackup"),
                   "raw + the wrapper's options", med(cases, "raw+fake-super+confine-root"),
                   1.05, _s),
        _ratio_row("ingest", "no-change backup, xsbackup", med(cases, "xsbackup"),
                   "raw + the wrapper's options and --timeout",
                   med(cases, "raw+fake-super+confine-root+timeout"), 1.05, _s),
        _ratio_row("ingest", "first full backup, xsbackup", med(full, "xsbackup"),
                   "raw rsync", med(full, "raw"), 1.15, _s),
        _ratio_row("ingest", "first full backup, xsbackup", med(full, "xsbackup"),
                   "raw + the wrapper's options",
                   med(full, "raw+fake-super+confine-root+partial-dir"), 1.15, _s),
        _ratio_row("ingest", "first full backup, xsbackup", med(full, "xsbackup"),
                   "raw + the wrapper's options and --timeout",
                   med(full, "raw+fake-super+confine-root+partial-dir+timeout"), 1.15, _s),
        _ratio_row("ingest", "forced command start-up (`true`), wall",
                   med(start, "xsbackup_ssh_command_true"), "rrsync",
                   med(start, "rrsync_true"), 1.0, _ms),
    ]
    instr = start.get("instructions")
    if instr:
        ratio = instr["xsbackup_ssh_command_true"] / instr["rrsync_true"]
        rows.append(Row("ingest", "forced command start-up (`true`), instructions",
                        f"{instr['xsbackup_ssh_command_true'] / 1e6:.1f} M",
                        f"rrsync {instr['rrsync_true'] / 1e6:.1f} M "
                        f"(python -c pass {instr['python_c_pass'] / 1e6:.1f} M)",
                        ratio, "≤ 1x", ratio <= 1.0))
    alone = med(cases, "xsbackup-no-serve")
    if alone is not None:  # informative: the forced command without serve's server
        raw = med(cases, "raw")
        rows.append(Row("ingest", "no-change backup, xsbackup without serve (forced "
                        "command alone)", _s(alone), f"raw rsync --link-dest {_s(raw)}",
                        alone / raw if raw else None, "-", None))
    request = r.get("request", {})
    forked, no_serve = med(request, "xsbackup_list_forked"), med(request,
                                                                 "xsbackup_list_no_serve")
    if forked is not None and no_serve is not None:  # informative: one request's cost
        rows.append(Row("ingest", "one forced command request (`list`), wall",
                        f"forked {_ms(forked)}", f"alone {_ms(no_serve)}",
                        forked / no_serve, "-", None))
    upload = r.get("upload_instructions", {}).get("xsbackup")
    if upload:  # diagnostic: the wrapper's own work per backup, load-independent
        rows.append(Row("ingest", "forced command of a no-change backup, instructions",
                        f"{upload / 1e6:.1f} M", "(rsync not traced)", None, "-", None))
    return rows


def serve_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    targets = r.get("targets", {})
    for case, label in (("rotating_serials", "availability, 500 rotating serials"),
                        ("fixed_serial", "availability, one serial")):
        c = _get(r, "http", case)
        if c is None:
            continue
        rps, p99 = c.get("requests_per_s"), _get(c, "latency_ms", "p99")
        want_rps, want_p99 = targets.get("http_requests_per_s"), targets.get("http_p99_ms")
        met = None if rps is None or p99 is None else (
            rps >= want_rps and p99 < want_p99 and not c.get("errors"))
        rows.append(Row("serve", label, f"{rps:,.0f} req/s, p99 {p99:.1f} ms, "
                        f"{c.get('errors', '?')} errors", "-", None,
                        f"≥ {want_rps:,.0f} req/s, p99 < {want_p99:g} ms", met))
    up = r.get("upload")
    if up:
        ratio = up.get("ratio_embedded_over_openssh")
        limit = targets.get("upload_ratio_embedded_over_openssh", 0.8)
        rows.append(Row("serve", "upload MiB/s, embedded SSH", "", "OpenSSH", ratio,
                        f"≥ {limit:g}x", None if ratio is None else ratio >= limit))
    return rows


def snapshot_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    promo = r.get("promotion") or {}
    promote = _get(promo, "summary", "promote", "median") or _get(promo, "promote", "median")
    if promote is not None:
        rows.append(Row("snapshot", "promotion (rename + latest)", _ms(promote), "-", None,
                        "< 50 ms", promote < 0.05))
    mbps = _get(r, "cjson", "mb_per_s", "cjson.validate")
    if mbps is not None:
        orj = _get(r, "cjson", "mb_per_s", "orjson.loads")
        rows.append(Row("snapshot", "CJSON validation", f"{mbps:.0f} MB/s",
                        f"orjson.loads {orj:.0f} MB/s" if orj else "-",
                        _get(r, "cjson", "validate_vs_orjson"), "≥ 50 MB/s", mbps >= 50))
    return rows


def prune_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    med = _get(r, "delete", "medians") or {}
    if med:
        rows.append(_ratio_row("prune", "delete a snapshot", med.get("xsbackup_total"),
                               "rm -rf", med.get("rm_rf"), 1.2, _s))
    ratios = _get(r, "du", "ratios") or {}
    for temp in ("warm", "cold"):
        ratio = ratios.get(f"measure/du_s ({temp})")
        if ratio is not None:
            rows.append(Row("prune", f"hardlink-aware usage ({temp})", "", "du -s", ratio,
                            "≤ 1.5x", ratio <= 1.5))
    return rows


def restore_rows(r: dict[str, Any]) -> list[Row]:
    targets = r.get("targets") or {}
    rows = []
    for case, anchor, figure, anchor_name, limit in (
            ("tar_stream", "local_tar", "full restore, tar stream over SSH", "local tar", 1.3),
            ("git_archive", "local_tar", "full restore, git archive --remote",
             "local tar", 1.3),
            ("restore_push", "rsync_pull", "restore push to a device (pull)", "rsync pull",
             1.2),
            ("restore_push_tar", "rsync_pull", "restore push to a device (tar)",
             "rsync pull", 1.2)):
        secs = _get(r, "cases", case, "seconds", "median")
        if secs is not None:
            rows.append(_ratio_row("restore", figure, secs, anchor_name,
                                   _get(r, "cases", anchor, "seconds", "median"),
                                   targets.get(f"{case}/{anchor}", limit), _s))
    return rows


def registration_rows(r: dict[str, Any]) -> list[Row]:
    ratio = _get(r, "cpu", "ratio_last_over_first")
    if ratio is None:
        return []
    return [Row("registration", "CPU of the last registrations", "", "the first ones", ratio,
                "- (flat)", None)]


def integrity_rows(r: dict[str, Any]) -> list[Row]:
    t = r.get("targets") or {}
    rows = []
    promo = r.get("promotion")
    if promo:
        s = promo["summary"]
        rows.append(_ratio_row("integrity", "no-change promotion, with manifests",
                               _get(s, "with", "median"), "without",
                               _get(s, "without", "median"),
                               t.get("promotion_ratio_max", 1.05), _s))
        rows.append(_ratio_row("integrity",
                               f"{promo.get('changed_percent', 1):g}% changed, manifest step",
                               _get(s, "changed_added", "median") or
                               _get(s, "changed_manifest_step", "median"),
                               "b2sum of the changed files", _get(s, "changed_b2sum", "median"),
                               t.get("changed_vs_b2sum_max", 1.1), _s))
    check = r.get("check")
    if check:
        mbps = check["throughput_mb_s"]
        ratio = _get(check, "ratios", "check/b2sum_throughput")
        limit = t.get("check_throughput_vs_b2sum_min", 0.8)
        rows.append(Row("integrity", "check --read-data throughput",
                        f"{mbps['check_read_data']:.0f} MB/s",
                        f"b2sum over distinct inodes {mbps['b2sum_distinct_inodes']:.0f} MB/s",
                        ratio, f"≥ {limit:g}x", None if ratio is None else ratio >= limit))
    diff = r.get("diff")
    if diff:
        s = diff["summary"]
        rows.append(_ratio_row("integrity", "diff of two snapshots",
                               _get(s, "xsbackup_diff", "median"), "diff -rq",
                               _get(s, "diff_rq", "median"),
                               t.get("diff_vs_diff_rq_max", 0.5), _s))
    return rows


def offsite_rows(r: dict[str, Any]) -> list[Row]:
    s = r.get("summary") or {}
    limit = _get(r, "ratios", "target") or 1.1
    return [_ratio_row("offsite", f"{label} snapshot replication (serve)",
                       _get(s, f"serve_{when}", "median"), "restic by hand",
                       _get(s, f"restic_{when}", "median"), limit, _s)
            for when, label in (("first", "first"), ("second", "no-change"))]


def backends_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    bt = r.get("btrfs")
    if bt:
        nc = bt["no_change"]
        btrfs = _get(nc, "btrfs", "median")
        rows += [
            _ratio_row("backends", "no-change backup, btrfs", btrfs,
                       "ds-backup rsync + cp -al", _get(nc, "ds-backup", "median"), 0.5, _s),
            _ratio_row("backends", "no-change backup, btrfs", btrfs,
                       "hardlink backend", _get(nc, "hardlink", "median"), 0.3, _s),
            _ratio_row("backends", "first full backup, btrfs", _get(bt, "first_full", "btrfs"),
                       "raw rsync", _get(bt, "first_full", "raw"), 1.1, _s),
        ]
    xfs = r.get("xfs")
    if xfs:
        nc = xfs["no_change"]
        rows.append(_ratio_row("backends", "no-change backup, reflink on XFS",
                               _get(nc, "reflink", "median"), "ds-backup rsync + cp -al",
                               _get(nc, "ds-backup", "median"), 1.0, _s))
    return rows


def fleet_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    st = r.get("status")
    if st:
        rows.append(_ratio_row("fleet", f"fleet status, {st['servers']} servers",
                               _get(st, "fleet_status", "median"), "slowest single status",
                               _get(st, "slowest_single", "median"), st.get("target", 1.5),
                               _s))
    mv = r.get("move")
    if mv:
        rows.append(_ratio_row("fleet", f"move-client, {mv['snapshots']} snapshots",
                               _get(mv, "move_client", "median"), "rsync -aH",
                               _get(mv, "rsync_aH", "median"), mv.get("target", 1.3), _s))
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "ingest": ingest_rows, "serve": serve_rows, "snapshot": snapshot_rows,
    "prune": prune_rows, "restore": restore_rows, "registration": registration_rows,
    "integrity": integrity_rows, "offsite": offsite_rows, "backends": backends_rows,
    "fleet": fleet_rows,
}


def run_one(name: str, args: list[str], mode: str, quiet_load: float,
            quiet_timeout: float) -> tuple[Path, int, float]:
    out = f"run-all-{mode}-{name}.json"
    argv = [sys.executable, str(BENCH_DIR / f"{name}.py"), *args, "--quiet-load",
            str(quiet_load), "--quiet-timeout", str(quiet_timeout), "--out", out]
    print(f"== {name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    rc = subprocess.run(argv, check=False).returncode
    return RESULTS_DIR / out, rc, time.monotonic() - started


QUICK_CAVEAT = ("Quick mode runs small trees once or twice: fixed costs (process "
                "start-up, a flush) weigh more there, so its *met* column compares these "
                "small sizes only. Whether an issue's target is met is decided at the "
                "issue's own size, in `bench/README.md`.")


def table(rows: list[Row], mode: str, notes: list[str]) -> str:
    lines = [f"# Benchmark summary ({mode} mode)", "",
             f"Written by `bench/run-all {mode}` at "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each figure and its "
             "anchor were measured side by side in one benchmark run "
             "(`bench/results/run-all-" + mode + "-*.json`).", "",
             *([QUICK_CAVEAT, ""] if mode == "quick" else []),
             "| bench | figure | value | anchor | ratio | target | met |",
             "|---|---|---|---|---:|---|---|"]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        lines.append(f"| {r.bench} | {r.figure} | {r.value or '-'} | {r.anchor} | {ratio} | "
                     f"{r.target} | {met} |")
    return "\n".join([*lines, "", *notes, ""])


def _load(result: dict[str, Any]) -> Any:
    return _get(result, "machine", "loadavg_at_start") or _get(
        result, "load_1min_when_started")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("quick", "full"))
    ap.add_argument("--only", default="", help="comma-separated benchmarks (default: all); "
                    "the others' rows come from their last results, marked so")
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: rewrite the summary from the last results")
    ap.add_argument("--quiet-load", type=float, default=1.0,
                    help="wait before each benchmark until the 1-min load is at most this")
    ap.add_argument("--quiet-timeout", type=float, default=600,
                    help="wait at most this many seconds for it (600)")
    args = ap.parse_args(argv)
    names = [] if args.no_run else \
        [n for n in BENCHES if not args.only or n in args.only.split(",")]
    rows: list[Row] = []
    notes: list[str] = []
    for name, (quick, full) in BENCHES.items():
        path = RESULTS_DIR / f"run-all-{args.mode}-{name}.json"
        if name not in names:
            # Not run this time (--only): its last result, said to be one.
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            rows += ROWS[name](result)
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
            notes.append(f"- {name}: not run this time; its result from {when}, load at "
                         f"start {_load(result)}")
            continue
        started = time.time()
        path, rc, took = run_one(name, quick if args.mode == "quick" else full, args.mode,
                                 args.quiet_load, args.quiet_timeout)
        try:
            if path.stat().st_mtime < started:
                raise ValueError("left from an earlier run")
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            notes.append(f"- {name}: no result (exit {rc}, {took:.0f} s)")
            continue
        rows += ROWS[name](result)
        notes.append(f"- {name}: exit {rc}, {took:.0f} s, load at start {_load(result)}")
    text = table(rows, args.mode, ["Runs:", *notes])
    (RESULTS_DIR / "summary.md").write_text(text)
    (RESULTS_DIR / "summary.json").write_text(json.dumps(
        {"mode": args.mode, "rows": [r.__dict__ for r in rows], "notes": notes}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
