"""Content manifests, ``check --read-data`` and ``diff``: what integrity costs.

Four measurements, each side by side with its reference in the same run (interleaved):

* **A, no-change promotion**: ``postprocess.process`` of a no-change snapshot of
  ``--files`` small files with manifests, against the same with the manifest step
  stubbed out (the snapshot's manifest is then written untimed, so the next one can reuse
  it). Target: at most 1.05x.
* **B, 1% changed**: the manifest step's own time inside a real promotion where
  ``--changed`` percent of the files changed (timed by wrapping ``manifest.previous`` and
  ``manifest.keep``, which hashes and writes), plus what the walk spends for the manifest
  (``walk_instructions``: the instructions of a walk with the manifest's bookkeeping
  less without, counted under callgrind, at the walk's own CPU time per instruction; the
  CPU-time difference of the fastest walks, ``walk_bookkeeping``, when valgrind is
  missing), against ``b2sum -l 256`` of just those files. Target: at most 1.1x. Then
  (``--chain``, informative) that many successive 1% changes, each promoted over the
  last with nothing in between: the manifest step of each against ``b2sum`` of its
  changed files, and how its manifest was written (its chain's depth): a step should
  cost the same at every depth.
* **C, check --read-data**: ``xsbackup check SN --read-data`` over a store of
  ``--check-snapshots`` snapshots of a ``--check-mb`` MB, ``--check-files`` file tree
  (each snapshot changes 1% of the files), against ``b2sum -l 256`` of every distinct
  inode, both after ``sync`` and a page-cache drop when ``--drop-caches`` (root), else
  warm. Target: throughput at least 0.8x b2sum's.
* **D, diff**: ``xsbackup diff`` of two ``--files`` snapshots differing in ``--changed``
  percent of the files, against ``diff -rq`` of the same two trees (same change set:
  the bench checks both name the same files). Target: at most 0.5x.

Timings are reported, never asserted. Usage: ``python bench/integrity.py`` (full sizes:
``--files 100000 --check-mb 1024 --check-files 20000``); quick: ``--files 20000
--check-mb 200 --check-files 4000 --runs 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    XSBACKUP,
    exit_on_sigterm,
    finish,
    make_tree,
    median,
    new_result,
    quiet_wait,
    run_args,
    summary,
    temp_dir,
    timed,
)
from bench.snapshot import SN, VOLUME, Promotion, make_small_tree

BREAKDOWN: dict[str, list[float]] = {}  # the manifest step's parts, every timed call
TARGETS = {"promotion_ratio_max": 1.05, "changed_vs_b2sum_max": 1.1,
           "check_throughput_vs_b2sum_min": 0.8, "diff_vs_diff_rq_max": 0.5}


def change_files(src: Path, percent: float, rng: random.Random, stamp: int) -> list[str]:
    """Rewrite ``percent`` of the files of ``src`` (same size, new bytes, new mtime)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    chosen = rng.sample(files, max(1, round(len(files) * percent / 100)))
    for p in chosen:
        body = bytearray(p.read_bytes() or b"\0")
        body[0] ^= 0xFF
        p.write_bytes(bytes(body))
        os.utime(p, (stamp, stamp))
    return sorted(str(p.relative_to(src)) for p in chosen)


def b2sum(paths: list[Path], settle: bool = False) -> float:
    """Wall seconds of ``b2sum -l 256`` over ``paths`` (argument lists of 2000 at most).
    With ``settle``, each list is first read once untimed by ``b2sum`` itself: B times
    it right after the promotion read the same files, which hashes them without
    updating their atime (``O_NOATIME``), so the timed run meets the files as it did
    when the promotion's reads updated the atime: pages cached, atime already written
    (relatime would otherwise make b2sum write every inode: a cost the anchor never
    carried)."""
    t = 0.0
    for i in range(0, len(paths), 2000):
        chunk = [str(p) for p in paths[i:i + 2000]]
        for timed_run in ((False, True) if settle else (True,)):
            t0 = time.perf_counter()
            subprocess.run(["b2sum", "-l", "256", "--", *chunk], check=True,
                           stdout=subprocess.DEVNULL)
            if timed_run:
                t += time.perf_counter() - t0
    return t


@contextlib.contextmanager
def manifests_off(p: Promotion) -> Iterator[None]:
    """The manifest step stubbed out of ``postprocess.process``."""
    from xsbackup.snapshots import manifest, postprocess

    class Stub:
        @staticmethod
        def previous(*_: Any) -> None:
            return None

        @staticmethod
        def keep(*_: Any) -> manifest.BuildStats:
            return manifest.BuildStats()

    saved = postprocess.manifest
    postprocess.manifest = Stub  # type: ignore[assignment]
    try:
        yield
    finally:
        postprocess.manifest = saved


@contextlib.contextmanager
def manifest_timer(p: Promotion, into: list[float]) -> Iterator[None]:
    """Time what the manifest adds inside a real ``process``: ``manifest.previous`` +
    ``manifest.keep`` (which hashes, and writes or links through the backend)."""
    from xsbackup.snapshots import manifest, postprocess

    spent = [0.0]

    def wrap(fn: Any) -> Any:
        def inner(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                t = time.perf_counter() - t0
                spent[0] += t
                BREAKDOWN.setdefault(fn.__name__, []).append(t)
        return inner

    class Timed:
        previous = staticmethod(wrap(manifest.previous))
        keep = staticmethod(wrap(manifest.keep))

    saved = postprocess.manifest
    postprocess.manifest = Timed  # type: ignore[assignment]
    try:
        yield
    finally:
        postprocess.manifest = saved
        into.append(spent[0])


def walk_bookkeeping(p: Promotion, snap: Path, reps: int = 5) -> dict[str, float]:
    """What the walk spends on the manifest's behalf (``compute_stats`` with ``changes``,
    less without), over a promoted snapshot and its previous one, timed: B's step is
    timed apart from the walk, so this is added to it. ``reps`` interleaved pairs, the
    walks' CPU time (the walking thread's) and wall time. The difference of two walks
    of 0.4-0.8 s each swings by more than B's whole budget on a shared machine, so these
    are kept for comparison only; ``walk_instructions`` is the estimator. Returns the
    difference of the fastest CPU times (last session's estimator), the same in wall
    time, the median of the pairs' wall differences (the one before), and the median
    CPU time of a walk without the bookkeeping (``walk_instructions``' rate)."""
    from xsbackup.snapshots import postprocess
    from xsbackup.snapshots.snapshot import Changes, compute_stats, since_ns

    prev = postprocess.previous_snapshot(p.store, SN, VOLUME, snap.name)
    cpu: dict[bool, list[float]] = {True: [], False: []}
    wall: dict[bool, list[float]] = {True: [], False: []}
    for r in range(reps):
        for bookkeeping in ((True, False) if r % 2 == 0 else (False, True)):
            c0, t0 = time.thread_time(), time.perf_counter()
            compute_stats(snap, prev, changes=Changes(since_ns=since_ns(prev))
                          if bookkeeping else None)
            cpu[bookkeeping].append(time.thread_time() - c0)
            wall[bookkeeping].append(time.perf_counter() - t0)
    return {"cpu_fastest": max(0.0, min(cpu[True]) - min(cpu[False])),
            "wall_fastest": max(0.0, min(wall[True]) - min(wall[False])),
            "wall_median_of_pairs": max(0.0, median(
                [a - b for a, b in zip(wall[True], wall[False], strict=True)])),
            "walk_cpu": median(cpu[False])}


WALK = """
import sys
from pathlib import Path
from xsbackup.snapshots.snapshot import Changes, compute_stats, since_ns
snap, prev, pad = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[4])
padding = [str(i) * 3 for i in range(pad)]
since = since_ns(prev)  # both ways: its first call imports _strptime
for _ in range(int(sys.argv[5])):
    compute_stats(snap, prev, changes=Changes(since_ns=since) if sys.argv[3] == "with"
                  else None)
"""


def walk_instructions(p: Promotion, snap: Path, walk_cpu: float,
                      pads: tuple[int, ...] = (0, 2000)) -> dict[str, Any] | None:
    """B's walk bookkeeping by instruction count: the user-space instructions of one
    ``compute_stats`` of ``snap`` against its previous snapshot with the manifest's
    ``Changes`` and without, each less the same process walking nothing, under
    callgrind with the hash seed fixed (a count repeats to the instruction). The
    allocator makes a count move by about a million with the heap's layout, so it is
    taken at each of ``pads`` (that many small objects allocated first) and the largest
    difference kept. Turned into time at the walk's own rate, ``walk_cpu`` (its CPU
    time, kernel included) over its instructions (user space only): an overestimate,
    on purpose. None without valgrind."""
    from xsbackup.snapshots import postprocess

    if shutil.which("valgrind") is None:
        return None
    prev = postprocess.previous_snapshot(p.store, SN, VOLUME, snap.name)
    assert prev is not None
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def count(mode: str, pad: int, walks: int) -> int:
        res = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, "-c", WALK, str(snap), str(prev), mode,
                              str(pad), str(walks)], env=env, capture_output=True,
                             text=True, check=True)
        found = re.search(r"Collected : (\d+)", res.stderr)
        if found is None:
            raise RuntimeError(f"callgrind printed no count: {res.stderr[-300:]}")
        return int(found.group(1))

    walks = {str(pad): {mode: count(mode, pad, 1) - count(mode, pad, 0)
                   for mode in ("with", "without")} for pad in pads}
    extra = max(w["with"] - w["without"] for w in walks.values())
    walk = min(w["without"] for w in walks.values())
    return {"walks": walks, "instructions": extra, "walk_instructions": walk,
            "seconds": max(0, extra) * walk_cpu / walk}


def process_once(p: Promotion) -> tuple[float, dict[str, Any]]:
    from xsbackup.snapshots.snapshot import read_facts

    t, _ = p.process()
    sid = p.store.latest_id(SN, VOLUME)
    assert sid is not None
    facts = read_facts(p.store.snapshots_dir(SN, VOLUME) / sid)
    return t, facts.get("manifest") or {}


def bench_promotion(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from xsbackup.integrity import check

    src = tmp / "src"
    print(f"A/B: generating {args.files} small files ...", flush=True)
    tree = make_small_tree(src, args.files, 0.1, args.seed)
    p = Promotion(tmp, src)
    p.ingest()
    process_once(p)
    times: dict[str, list[float]] = {"with": [], "without": [], "manifest_step_no_change": [],
                                     "changed_manifest_step": [], "changed_b2sum": [],
                                     "changed_walk_bookkeeping": [], "changed_added": [],
                                     "changed_walk_bookkeeping_cpu_fastest": [],
                                     "changed_walk_bookkeeping_wall_fastest": [],
                                     "changed_walk_bookkeeping_wall_median_of_pairs": []}
    counts = []
    counted: dict[str, Any] | None = None
    rng = random.Random(args.seed)
    for r in range(args.runs):
        order = ("with", "without") if r % 2 == 0 else ("without", "with")
        for case in order:
            p.ingest()
            os.sync()
            if case == "with":
                with manifest_timer(p, times["manifest_step_no_change"]):
                    t, stats = process_once(p)
                counts.append(stats)
            else:
                with manifests_off(p):
                    t, _ = process_once(p)
                check.repair_manifests(p.ctx, SN, VOLUME)  # untimed: the next one reuses it
            times[case].append(t)
        changed = change_files(src, args.changed, rng, 1_800_000_000 + r)
        p.ingest()
        os.sync()
        with manifest_timer(p, times["changed_manifest_step"]):
            _, stats = process_once(p)
        counts.append(stats)
        sid = p.store.latest_id(SN, VOLUME)
        assert sid is not None
        snap = p.store.snapshots_dir(SN, VOLUME) / sid
        times["changed_b2sum"].append(b2sum([snap / c for c in changed], settle=True))
        walked = walk_bookkeeping(p, snap)
        times["changed_walk_bookkeeping_cpu_fastest"].append(walked["cpu_fastest"])
        times["changed_walk_bookkeeping_wall_fastest"].append(walked["wall_fastest"])
        times["changed_walk_bookkeeping_wall_median_of_pairs"].append(
            walked["wall_median_of_pairs"])
        if r == 0:  # a count repeats: once, on the first round's 1% change
            counted = walk_instructions(p, snap, walked["walk_cpu"])
        times["changed_walk_bookkeeping"].append(
            counted["seconds"] if counted is not None else walked["cpu_fastest"])
        times["changed_added"].append(times["changed_manifest_step"][-1] +
                                      times["changed_walk_bookkeeping"][-1])
        print(f"round {r + 1}: with {times['with'][-1]:.3f}s without "
              f"{times['without'][-1]:.3f}s; {len(changed)} changed: manifest step "
              f"{times['changed_manifest_step'][-1] * 1e3:.1f}ms, b2sum "
              f"{times['changed_b2sum'][-1] * 1e3:.1f}ms", flush=True)
    chain = successive_changes(p, src, args, rng)
    return {"tree": tree, "timings": times, "summary": {k: summary(v) for k, v in
                                                          times.items()},
            "chain": chain,
            "walk_bookkeeping_estimator": "instructions" if counted is not None else
            "cpu_fastest", "walk_bookkeeping_instructions": counted,
            "manifest_counts": counts, "changed_percent": args.changed,
            "manifest_step_parts": {k: summary(v) for k, v in BREAKDOWN.items()},
            "ratios": {"promotion_with/without": median(times["with"]) /
                       median(times["without"]),
                       "changed_manifest_step/b2sum": median(times["changed_added"]) /
                       median(times["changed_b2sum"]),
                       "changed_manifest_step_alone/b2sum": median(
                           times["changed_manifest_step"]) / median(times["changed_b2sum"])}}


def successive_changes(p: Promotion, src: Path, args: argparse.Namespace,
                       rng: random.Random) -> dict[str, Any]:
    """``args.chain`` successive ``args.changed`` percent changes, each promoted over the
    one before (nothing rewrites a manifest in between, so deltas chain up): per step the
    manifest step's time, ``b2sum`` of its changed files, and the manifest's header."""
    import orjson

    out: dict[str, list[Any]] = {"manifest_step": [], "b2sum": [], "how": [], "head": []}
    for r in range(args.chain):
        changed = change_files(src, args.changed, rng, 1_900_000_000 + r)
        p.ingest()
        os.sync()
        with manifest_timer(p, out["manifest_step"]):
            _, stats = process_once(p)
        sid = p.store.latest_id(SN, VOLUME)
        assert sid is not None
        snap = p.store.snapshots_dir(SN, VOLUME) / sid
        out["b2sum"].append(b2sum([snap / c for c in changed], settle=True))
        out["how"].append(stats.get("how"))
        with (p.store.volume_dir(SN, VOLUME) / "manifests" / f"{sid}.jsonl").open("rb") as fh:
            head = orjson.loads(fh.readline())
        out["head"].append({k: head.get(k) for k in ("version", "records", "gone", "depth",
                                                      "lines")})
        print(f"chain step {r + 1}: manifest step {out['manifest_step'][-1] * 1e3:.1f}ms "
              f"({stats.get('how')}, {out['head'][-1]}), b2sum {out['b2sum'][-1] * 1e3:.1f}ms",
              flush=True)
    out["step/b2sum"] = [a / b for a, b in zip(out["manifest_step"], out["b2sum"],
                                                strict=True)]
    return out


def process_env(p: Promotion) -> dict[str, str]:
    """The timed ``xsbackup`` processes' environment: this state root, and bytecode
    written and read as an installed package's is (``PYTHONDONTWRITEBYTECODE`` dropped,
    as ``bench/resolver.py`` does; each variant runs once untimed first)."""
    return {**{k: v for k, v in p.env.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "XSBACKUP_ROOT": str(p.root)}


def variants(env: dict[str, str], baseline: str | None) -> dict[str, dict[str, str]]:
    """The xsbackup code to time: this checkout, and with ``--baseline`` another source
    tree (a ``git archive`` of an older commit) first on ``PYTHONPATH``, interleaved."""
    out = {"": env}
    if baseline:
        out["_baseline"] = {**env, "PYTHONPATH": str(Path(baseline).resolve())}
    return out


def drop_caches(enabled: bool) -> None:
    os.sync()
    if enabled:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def bench_check(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    src = tmp / "check-src"
    print(f"C: {args.check_files} files, {args.check_mb} MB, {args.check_snapshots} "
          "snapshots ...", flush=True)
    tree = make_tree(src, args.check_files, args.check_mb << 20, args.seed)
    (tmp / "c").mkdir()
    p = Promotion(tmp / "c", src)
    rng = random.Random(args.seed + 1)
    for n in range(args.check_snapshots):
        if n:
            change_files(src, 1.0, rng, 1_800_000_000 + n)
        p.ingest()
        process_once(p)
    inodes: dict[int, Path] = {}
    for sid in p.store.snapshot_ids(SN, VOLUME):
        for f in (p.store.snapshots_dir(SN, VOLUME) / sid).rglob("*"):
            st = f.lstat()
            if f.is_file():
                inodes.setdefault(st.st_ino, f)
    total = sum(f.stat().st_size for f in inodes.values())
    envs = variants(process_env(p), args.baseline)
    times: dict[str, list[float]] = {"check_read_data": [], "b2sum_distinct_inodes": []}
    times |= {f"check_read_data{v}": [] for v in envs}

    def check_once(env: dict[str, str]) -> float:
        t0 = time.perf_counter()
        res = subprocess.run([XSBACKUP, "check", SN, "--read-data", "--json"],
                             check=False, capture_output=True, env=env)
        t = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"check exited {res.returncode}: {res.stderr[-300:]!r}")
        return t

    for env in envs.values():
        check_once(env)  # untimed: bytecode written, page cache warm
    for r in range(args.runs):
        cases = [*envs, "b2sum"]
        for case in cases if r % 2 == 0 else cases[::-1]:
            drop_caches(args.drop_caches)
            if case == "b2sum":
                times["b2sum_distinct_inodes"].append(b2sum(list(inodes.values())))
            else:
                times[f"check_read_data{case}"].append(check_once(envs[case]))
        base = f", baseline {times['check_read_data_baseline'][-1]:.2f}s" \
            if args.baseline else ""
        print(f"round {r + 1}: check {times['check_read_data'][-1]:.2f}s{base}, b2sum "
              f"{times['b2sum_distinct_inodes'][-1]:.2f}s", flush=True)
    mbs = {k: total / median(v) / 1e6 for k, v in times.items()}
    ratios = {f"check{v}/b2sum_throughput": mbs[f"check_read_data{v}"] /
              mbs["b2sum_distinct_inodes"] for v in envs}
    return {"tree": tree, "distinct_inodes": len(inodes), "distinct_bytes": total,
            "page_cache_dropped": args.drop_caches, "baseline": args.baseline,
            "timings": times, "throughput_mb_s": mbs, "ratios": ratios}


def bench_diff(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import orjson

    src = tmp / "diff-src"
    print(f"D: two snapshots of {args.files} files, {args.changed}% changed ...", flush=True)
    make_small_tree(src, args.files, 0.0, args.seed + 2)
    (tmp / "d").mkdir()
    p = Promotion(tmp / "d", src)
    p.ingest()
    process_once(p)
    changed = change_files(src, args.changed, random.Random(args.seed + 3), 1_800_000_000)
    p.ingest()
    process_once(p)
    a, b = p.store.snapshot_ids(SN, VOLUME)
    da, db = (p.store.snapshots_dir(SN, VOLUME) / s for s in (a, b))
    envs = variants(process_env(p), args.baseline)
    times: dict[str, list[float]] = {"diff_rq": [], "xsbackup_diff_in_process": []}
    times |= {f"xsbackup_diff{v}": [] for v in envs}

    def diff_once(env: dict[str, str]) -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        res = subprocess.run([XSBACKUP, "diff", SN, a, b, "--json"], capture_output=True,
                             env=env, check=True)
        t = time.perf_counter() - t0
        return t, sorted(c["path"] for c in orjson.loads(res.stdout)["changes"])

    for env in envs.values():
        diff_once(env)  # untimed: bytecode written
    same = True
    for r in range(args.runs):
        for v in (list(envs) if r % 2 == 0 else list(envs)[::-1]):
            os.sync()
            t, ours = diff_once(envs[v])
            times[f"xsbackup_diff{v}"].append(t)
            same = same and ours == changed
        os.sync()
        t0 = time.perf_counter()
        rq = subprocess.run(["diff", "-rq", str(da), str(db)], check=False,
                            capture_output=True)
        times["diff_rq"].append(time.perf_counter() - t0)
        theirs = sorted(line.split(" and ")[0].removeprefix(f"Files {da}/")
                        for line in rq.stdout.decode().splitlines())
        same = same and theirs == changed
        from xsbackup.integrity import diff

        t, _ = timed(lambda: diff.diff(p.ctx, SN, a, b))
        times["xsbackup_diff_in_process"].append(t)
        base = f", baseline {times['xsbackup_diff_baseline'][-1]:.3f}s" \
            if args.baseline else ""
        print(f"round {r + 1}: xsbackup diff {times['xsbackup_diff'][-1]:.3f}s "
              f"(in process {t:.3f}s){base}, diff -rq {times['diff_rq'][-1]:.3f}s",
              flush=True)
    ratios = {f"xsbackup_diff{v}/diff_rq": median(times[f"xsbackup_diff{v}"]) /
              median(times["diff_rq"]) for v in envs}
    ratios["in_process/diff_rq"] = median(times["xsbackup_diff_in_process"]) / \
        median(times["diff_rq"])
    return {"files": args.files, "changed": len(changed), "same_change_set": same,
            "baseline": args.baseline, "timings": times,
            "summary": {k: summary(v) for k, v in times.items()}, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--changed", type=float, default=1.0, help="percent changed (B, D)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chain", type=int, default=8,
                    help="successive changes promoted one over the other after B (0: none)")
    ap.add_argument("--check-files", type=int, default=20_000)
    ap.add_argument("--check-mb", type=int, default=1024)
    ap.add_argument("--check-snapshots", type=int, default=10)
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each C run (root)")
    ap.add_argument("--parts", default="ABCD", help="which parts to run (ABCD)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time C and D with the xsbackup package of the source tree "
                         "DIR (e.g. a git archive of main), interleaved")
    run_args(ap, out="integrity.json", quiet_load=1.5, quiet_timeout=0)
    args = ap.parse_args(argv)
    exit_on_sigterm()
    result = new_result("integrity", ["snapshots.manifest", "snapshots.postprocess",
                                      "integrity.check", "integrity.diff"])
    result["config"] = vars(args)
    result["quiet"] = quiet_wait(args.quiet_load, args.quiet_timeout)
    result["targets"] = TARGETS
    with temp_dir("xsb-integrity-") as tmp:
        if "A" in args.parts or "B" in args.parts:
            (tmp / "ab").mkdir()
            result["promotion"] = bench_promotion(tmp / "ab", args)
        if "C" in args.parts:
            result["check"] = bench_check(tmp, args)
        if "D" in args.parts:
            result["diff"] = bench_diff(tmp, args)
    return finish(result, args.out, print_table)


def print_table(r: dict[str, Any]) -> None:
    rows = []
    if "promotion" in r:
        ratios = r["promotion"]["ratios"]
        rows.append(("A promotion with/without manifests", ratios["promotion_with/without"],
                     TARGETS["promotion_ratio_max"], "<="))
        rows.append(("B 1% changed: manifest step / b2sum", ratios[
            "changed_manifest_step/b2sum"], TARGETS["changed_vs_b2sum_max"], "<="))
    if "check" in r:
        rows.append(("C check --read-data / b2sum throughput",
                     r["check"]["ratios"]["check/b2sum_throughput"],
                     TARGETS["check_throughput_vs_b2sum_min"], ">="))
    if "diff" in r:
        rows.append(("D xsbackup diff / diff -rq", r["diff"]["ratios"]["xsbackup_diff/diff_rq"],
                     TARGETS["diff_vs_diff_rq_max"], "<="))
    for part, key, name in (("check", "check_baseline/b2sum_throughput", "C baseline"),
                            ("diff", "xsbackup_diff_baseline/diff_rq", "D baseline")):
        if key in r.get(part, {}).get("ratios", {}):
            print(f"{name + ' (' + str(r[part]['baseline']) + ')':<44} "
                  f"{r[part]['ratios'][key]:7.3f}")
    chain = r.get("promotion", {}).get("chain") or {}
    if chain.get("step/b2sum"):
        print(f"{'B successive changes, step/b2sum by depth':<44} "
              + " ".join(f"{x:.2f}" for x in chain["step/b2sum"]))
    for name, value, target, sense in rows:
        ok = value <= target if sense == "<=" else value >= target
        print(f"{name:<44} {value:7.3f}  target {sense} {target}  {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
