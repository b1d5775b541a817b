"""Prune and du costs on hardlinked snapshot histories, against ``rm -rf`` and ``du -s``.

Part A, deletion. A base snapshot of ``--files`` small files (default 100,000: 1,000
directories of 100 files, 100 B-4 KB each) is the client's newest snapshot; each run makes
fresh ``cp -al`` copies of it (untimed), so every file of a copy is a hardlink of the base,
exactly as ``--link-dest`` leaves an older snapshot. One copy is an older snapshot in the
state root, deleted the way xsbackup does it: ``prune.delete_snapshot`` under the
client's locks (the storage backend's ``delete``: one rename into ``trash/``; timed as
``to_trash``), ``prune.finish_client``, then the backend's ``purge`` (timed as
``delete_trash``; the keys keep their names from before the storage seam); each part and
the whole are timed. An identical copy outside the state root is
deleted with ``rm -rf``; a third with ``shutil.rmtree`` (diagnostic). The cases alternate
which goes first, with an untimed ``sync`` before each.
Target: xsbackup's whole deletion at most 1.2 x ``rm -rf``.

Part B, usage. ``--du-snapshots`` snapshots (30) of ``--du-files`` files (10,000), each a
``cp -al`` of the previous one with ``--du-change`` (1 %) of its files replaced by new
inodes. The hardlink backend's ``measure`` (what ``xsbackup du`` runs; it also computes
every snapshot's exclusive and shared bytes) against ``du -s -B1`` of the snapshots
directory (GNU du also counts each inode once): warm (after one untimed pass of each,
interleaved), and cold (page, dentry and inode caches dropped before each timed call) when
``/proc/sys/vm/drop_caches`` is writable. Also timed once: the ``xsbackup du SN --refresh
--json`` command line, start-up included. Peak RSS and the tracemalloc peak of one
``measure`` call are taken in a child process, with the traced memory at the start of each
snapshot, to show memory follows distinct shared inodes, not paths. Target: ``measure``
at most 1.5 x ``du -s``. Diagnostics: a variant of ``measure`` that skips ``lstat`` for entries
whose inode (``DirEntry.inode()``, from readdir) is already known (checked to give
identical figures), and the bare scandir walk with one ``DirEntry.stat`` per entry and no
bookkeeping (the floor of any walk that stats every path).

When a target is missed (``--profile auto``), one extra untimed run of the slow call is
profiled with cProfile and its hot spots are stored.

Usage: ``python bench/prune.py [--files 100000] [--runs 3] [--du-snapshots 30]``.
Smoke run: ``python bench/prune.py --files 2000 --du-files 500 --du-snapshots 5 --runs 2
--quiet-load 0``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import pstats
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    XSBACKUP,
    exit_on_sigterm,
    finish,
    median,
    new_result,
    quiet_wait,
    run_args,
    run_timed,
    summary,
    temp_dir,
    timed,
    tree_dirs,
)

SN = "SHF00BENCH03"
VOLUME = "documents"
BASE_ID = "2030-01-01T000000Z"  # the newest snapshot: never pruned, the link target
DELETE_TARGET = 1.2
DU_TARGET = 1.5
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
MTIME = 1_700_000_000


# ---- helpers -------------------------------------------------------------------------------


def sync() -> None:
    subprocess.run(["sync"], check=True)


def drop_caches() -> None:
    sync()
    DROP_CACHES.write_text("3\n")


def can_drop_caches() -> str:
    """"" when caches can be dropped, else why not."""
    try:
        drop_caches()
    except OSError as e:
        return f"{DROP_CACHES}: {e.strerror or e}"
    return ""


def run_out(argv: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of one command (raise on failure)."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       check=False)
    t = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{argv} exited {r.returncode}: {r.stderr.strip()}")
    return t, r.stdout


def write_tree(root: Path, n_files: int, per_dir: int, rng: random.Random,
               pool: bytes) -> list[str]:
    """``n_files`` files of 100 B-4 KB in ``tree_dirs`` directories; returns their paths
    relative to ``root``."""
    dirs = tree_dirs(n_files, per_dir=per_dir)
    per = -(-n_files // len(dirs))
    rels = []
    for i in range(n_files):
        d = root / dirs[i // per]
        if i % per == 0:
            d.mkdir(parents=True, exist_ok=True)
        rel = f"{dirs[i // per]}/file{i:06d}.bin"
        write_file(root / rel, rng, pool, MTIME + i)
        rels.append(rel)
    return rels


def write_file(path: Path, rng: random.Random, pool: bytes, mtime: int) -> None:
    size = rng.randrange(100, 4000)
    off = rng.randrange(0, len(pool) - size)
    path.write_bytes(pool[off:off + size])
    os.utime(path, (mtime, mtime))


def tree_facts(root: Path) -> dict[str, int]:
    """Paths, directories, distinct inodes and shared (nlink > 1) inodes under ``root``:
    an independent walk, untimed."""
    files = dirs = 0
    inodes: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            files += 1
            inodes[st.st_ino] = st.st_nlink
    return {"file_paths": files, "directories": dirs, "distinct_file_inodes": len(inodes),
            "shared_inodes_nlink_gt_1": sum(1 for n in inodes.values() if n > 1)}


def top_functions(prof: cProfile.Profile, n: int = 15) -> list[dict[str, Any]]:
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({func})", "ncalls": ncalls,
                     "tottime_s": round(tottime, 4), "cumtime_s": round(cumtime, 4)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:n]


def profiled(fn: Callable[[], Any]) -> tuple[float, list[dict[str, Any]]]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    return time.perf_counter() - t0, top_functions(prof)


def new_store(root: Path) -> Any:
    from xsbackup.clients.registry import Registry
    from xsbackup.store import init_root

    store = init_root(root)
    Registry(store).add(SN, None)
    store.snapshots_dir(SN, VOLUME).mkdir(parents=True)
    return store


def snapshot_id(n: int) -> str:
    when = dt.datetime(2029, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=n)
    return when.strftime("%Y-%m-%dT%H%M%SZ")


# ---- part A: deletion ----------------------------------------------------------------------


class Deletion:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        from xsbackup import config
        from xsbackup.context import Context
        from xsbackup.store import atomic_symlink

        self.store = new_store(tmp / "xsroot")
        self.ctx = Context.open(config.load(self.store.root, environ={}))
        self.snaps = self.store.snapshots_dir(SN, VOLUME)
        self.base = self.snaps / BASE_ID
        self.plain = tmp / "plain"
        self.plain.mkdir()
        rng = random.Random(args.seed)
        t0 = time.perf_counter()
        self.rels = write_tree(self.base, args.files, args.per_dir, rng, rng.randbytes(1 << 16))
        self.build_s = time.perf_counter() - t0
        atomic_symlink(f"snapshots/{BASE_ID}", self.store.volume_dir(SN, VOLUME) / "latest")
        self.sample = self.base / self.rels[len(self.rels) // 2]
        self.n = 0

    def copy(self, dest: Path) -> float:
        return run_timed(["cp", "-al", str(self.base), str(dest)])

    def xsbackup(self, sid: str) -> dict[str, float]:
        from xsbackup.retention import prune

        t0 = time.perf_counter()
        with prune.ClientLocks(self.store, SN):
            t_rename, why = timed(lambda: prune.delete_snapshot(self.ctx, SN, VOLUME, sid))
            if why:
                raise RuntimeError(f"delete_snapshot refused {sid}: {why}")
            t_finish, _ = timed(lambda: prune.finish_client(self.store, SN))
        t_delete, removed = timed(self.ctx.storage.purge)
        total = time.perf_counter() - t0
        if os.listdir(self.store.trash_dir) or sid in self.store.snapshot_ids(SN, VOLUME):
            raise RuntimeError("xsbackup deletion left something behind")
        return {"xsbackup_total": total, "to_trash": t_rename, "finish_client": t_finish,
                "delete_trash": t_delete, "removed_entries": removed}


def bench_deletion(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"deletion: writing a base snapshot of {args.files} files ...", flush=True)
    d = Deletion(tmp, args)
    cases = ["xsbackup", "rm_rf"] + (["shutil_rmtree"] if args.diagnose else [])
    keys = ["xsbackup_total", "to_trash", "finish_client", "delete_trash", "rm_rf"]
    if args.diagnose:
        keys.append("shutil_rmtree")
    times: dict[str, list[float]] = {k: [] for k in keys}
    orders, nlinks, copy_s, loads = [], [], [], []
    for r in range(args.runs):
        sid = snapshot_id(r)
        targets = {"xsbackup": d.snaps / sid, "rm_rf": d.plain / f"rm-{r}",
                   "shutil_rmtree": d.plain / f"rmtree-{r}"}
        copy_s += [d.copy(targets[c]) for c in cases]           # untimed setup
        order = cases[r % len(cases):] + cases[:r % len(cases)]  # rotate who goes first
        orders.append(order)
        seen = {}
        for case in order:
            seen[case] = os.lstat(targets[case] / d.rels[len(d.rels) // 2]).st_nlink
            sync()
            if case == "xsbackup":
                for k, v in d.xsbackup(sid).items():
                    if k in times:
                        times[k].append(v)
            elif case == "rm_rf":
                times["rm_rf"].append(run_timed(["rm", "-rf", str(targets[case])]))
            else:
                t, _ = timed(lambda p=targets[case]: shutil.rmtree(p))
                times["shutil_rmtree"].append(t)
            if targets[case].exists():
                raise RuntimeError(f"{case} left {targets[case]}")
        nlinks.append(seen)
        if os.lstat(d.sample).st_nlink != 1:
            raise RuntimeError("base files still linked after the deletions")
        loads.append(os.getloadavg()[0])
        print(f"  run {r + 1}/{args.runs} ({' > '.join(order)}): " + "  ".join(
            f"{k} {times[k][-1]:.3f}s" for k in keys), flush=True)
    med = {k: median(v) for k, v in times.items()}
    ratio = med["xsbackup_total"] / med["rm_rf"]
    out: dict[str, Any] = {
        "tree": {"files": args.files, "per_dir": args.per_dir,
                 "leaf_dirs": len(tree_dirs(args.files, per_dir=args.per_dir)),
                 "file_bytes": "100 B-4 KB", "base_write_s": d.build_s},
        "cases_order_per_run": orders,
        "nlink_of_a_sample_file_when_deleted": nlinks,
        "untimed_cp_al_s": copy_s,
        "loadavg_1min_after_each_run": loads,
        "timings": times,
        "summary": {k: summary(v) for k, v in times.items()},
        "medians": med,
        "ratios": {"xsbackup_total/rm_rf": ratio,
                   "delete_trash/rm_rf": med["delete_trash"] / med["rm_rf"]},
        "targets": {"xsbackup_over_rm_rf_at_most": DELETE_TARGET,
                    "met": ratio <= DELETE_TARGET},
    }
    if args.diagnose:
        out["ratios"]["shutil_rmtree/rm_rf"] = med["shutil_rmtree"] / med["rm_rf"]
        out["ratios"]["delete_trash/shutil_rmtree"] = med["delete_trash"] / med["shutil_rmtree"]
    if args.profile == "always" or (args.profile == "auto" and ratio > DELETE_TARGET):
        from xsbackup.retention import prune

        sid = snapshot_id(args.runs)
        d.copy(d.snaps / sid)
        with prune.ClientLocks(d.store, SN):
            prune.delete_snapshot(d.ctx, SN, VOLUME, sid)
        sync()
        t, top = profiled(d.ctx.storage.purge)
        out["profile_delete_trash"] = {"wall_s_under_cprofile": t, "top_by_tottime": top}
    return out


# ---- part B: usage -------------------------------------------------------------------------


MEMORY_CHILD = r"""
import json, resource, sys, tracemalloc
from pathlib import Path
import psutil
from xsbackup.storage.hardlink import HardlinkBackend
from xsbackup.store import Store
store, client, mode = Store(Path(sys.argv[1])), sys.argv[2], sys.argv[3]
backend = HardlinkBackend(store)
kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
curve = []
if mode == "tracemalloc":
    tracemalloc.start()
    def progress(volume, sid):
        curve.append(tracemalloc.get_traced_memory()[0])
    r = backend.measure(client, progress)
    curve.append(tracemalloc.get_traced_memory()[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"tracemalloc_peak_bytes": peak, "traced_bytes_at_each_snapshot": curve,
                      "total": r.total}))
else:
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return None
    try:  # reset the peak (VmHWM) so it covers the measure call only, not the imports
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    rss = psutil.Process().memory_info().rss // 1024
    before = kib()
    r = backend.measure(client)
    print(json.dumps({"rss_kib_before": rss, "vmhwm_reset_before_call": reset,
                      "vmhwm_kib_after": status("VmHWM"), "ru_maxrss_kib_before": before,
                      "ru_maxrss_kib_after": kib(), "total": r.total}))
"""


def measure_memory(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("rss", "tracemalloc"):
        r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(root), SN, mode],
                           capture_output=True, text=True, check=True)
        out.update(json.loads(r.stdout))
    # Peak RSS during the call over the RSS just before it (the interpreter and imports):
    # VmHWM, reset just before the call through /proc/self/clear_refs; else ru_maxrss, which
    # also covers the import-time peak and so can only overstate the growth.
    peak = (out["vmhwm_kib_after"] if out["vmhwm_reset_before_call"]
            else out["ru_maxrss_kib_after"])
    out["peak_rss_kib_during_call"] = peak
    out["peak_rss_growth_kib"] = peak - out["rss_kib_before"]
    curve = out["traced_bytes_at_each_snapshot"]
    if len(curve) > 2:
        out["traced_bytes_after_first_snapshot"] = curve[1]
        out["traced_bytes_before_result_returned"] = curve[-2]
        out["traced_growth_per_later_snapshot"] = (curve[-2] - curve[1]) / max(1, len(curve) - 3)
    return out


def walk_stat_floor(top: str) -> int:
    """Diagnostic floor: the same scandir walk with one ``DirEntry.stat`` per entry and no
    bookkeeping at all."""
    n = 0
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n


def build_history(root: Path, args: argparse.Namespace) -> tuple[Any, list[str]]:
    from xsbackup.store import atomic_symlink

    store = new_store(root)
    snaps = store.snapshots_dir(SN, VOLUME)
    rng = random.Random(args.seed + 1)
    pool = rng.randbytes(1 << 16)
    ids = [snapshot_id(k * 24) for k in range(args.du_snapshots)]
    rels = write_tree(snaps / ids[0], args.du_files, args.per_dir, rng, pool)
    n_change = max(1, round(args.du_files * args.du_change))
    for k in range(1, len(ids)):
        prev, new = snaps / ids[k - 1], snaps / ids[k]
        subprocess.run(["cp", "-al", str(prev), str(new)], check=True)
        for rel in rng.sample(rels, n_change):  # rsync writes a changed file as a new inode
            (new / rel).unlink()
            write_file(new / rel, rng, pool, MTIME + 86_400 * k)
    atomic_symlink(f"snapshots/{ids[-1]}", store.volume_dir(SN, VOLUME) / "latest")
    return store, ids


def bench_usage(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from xsbackup.storage.hardlink import HardlinkBackend

    print(f"du: building {args.du_snapshots} snapshots of {args.du_files} files ...",
          flush=True)
    t_build, (store, ids) = timed(lambda: build_history(tmp / "duroot", args))
    snaps = store.snapshots_dir(SN, VOLUME)
    backend = HardlinkBackend(store)
    facts = tree_facts(snaps)
    du_argv = ["du", "-s", "-B1", str(snaps)]

    def run_measure() -> tuple[float, Any]:
        return timed(lambda: backend.measure(SN))

    def run_du() -> tuple[float, int]:
        t, text = run_out(du_argv)
        return t, int(text.split()[0])

    cases: dict[str, Callable[[], tuple[float, Any]]] = {"measure": run_measure, "du_s": run_du}
    if args.diagnose:
        cases["walk_stat_floor"] = lambda: timed(lambda: walk_stat_floor(str(snaps)))
    names = list(cases)

    # Untimed warm-up, and the checks: du's total is measure's plus the snapshot roots.
    _, ref = run_measure()
    _, du_bytes = run_du()
    roots = os.lstat(snaps).st_blocks * 512 + sum(os.lstat(snaps / s).st_blocks * 512
                                                  for s in ids)
    checks: dict[str, Any] = {
        "measure_total": ref.total, "du_s_bytes": du_bytes,
        "snapshot_root_dirs_bytes": roots,
        "du_equals_measure_total_plus_root_dirs": du_bytes == ref.total + roots,
        "measure_files": sum(s.files for s in ref.snapshots),
    }

    def rounds(label: str, cold: bool) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.runs):
            order = names[r % len(names):] + names[:r % len(names)]
            for case in order:
                if cold:
                    drop_caches()
                times[case].append(cases[case]()[0])
            print(f"  {label} run {r + 1}/{args.runs} ({' > '.join(order)}): " + "  ".join(
                f"{k} {times[k][-1]:.3f}s" for k in names), flush=True)
        return times

    out: dict[str, Any] = {
        "tree": {"snapshots": args.du_snapshots, "files_per_snapshot": args.du_files,
                 "changed_per_snapshot": max(1, round(args.du_files * args.du_change)),
                 "build_s": t_build, **facts},
        "du_argv": ["du", "-s", "-B1", "SNAPSHOTS_DIR"],
        "checks": checks,
    }
    warm = rounds("warm", cold=False)
    out["warm"] = {"timings": warm, "summary": {k: summary(v) for k, v in warm.items()}}
    why_not = can_drop_caches() if args.cold else "--no-cold"
    if why_not:
        out["cold"] = {"skipped": why_not}
    else:
        cold = rounds("cold", cold=True)
        out["cold"] = {"caches": "sync; echo 3 > /proc/sys/vm/drop_caches before each call",
                       "timings": cold, "summary": {k: summary(v) for k, v in cold.items()}}
        run_measure()  # warm again for what follows
        run_du()

    # The command line once (warm): start-up, registry, measure, cache write, JSON.
    t_cli, text = run_out([XSBACKUP, "--root", str(store.root), "du", SN, "--refresh",
                           "--json"])
    rows = orjson.loads(text)
    t_py = median([run_timed([sys.executable, "-c", "pass"]) for _ in range(3)])
    out["cli"] = {"argv": ["xsbackup", "--root", "R", "du", SN, "--refresh", "--json"],
                  "wall_s": t_cli, "python_c_pass_s": t_py,
                  "total_matches_measure": rows[0]["total"] == ref.total,
                  "ratio_to_du_s_warm_median": t_cli / median(warm["du_s"])}
    out["memory_of_one_measure"] = measure_memory(store.root)
    mem = out["memory_of_one_measure"]
    mem["tracemalloc_peak_bytes_per_shared_inode"] = (
        mem["tracemalloc_peak_bytes"] / max(1, facts["shared_inodes_nlink_gt_1"]))
    mem["tracemalloc_peak_bytes_per_path"] = mem["tracemalloc_peak_bytes"] / max(
        1, facts["file_paths"])

    ratios: dict[str, float] = {"measure/du_s (warm)": median(warm["measure"])
                                / median(warm["du_s"])}
    if "timings" in out["cold"]:
        c = out["cold"]["timings"]
        ratios["measure/du_s (cold)"] = median(c["measure"]) / median(c["du_s"])
    if args.diagnose:
        for k in ("walk_stat_floor",):
            ratios[f"{k}/du_s (warm)"] = median(warm[k]) / median(warm["du_s"])
            if "timings" in out["cold"]:
                c = out["cold"]["timings"]
                ratios[f"{k}/du_s (cold)"] = median(c[k]) / median(c["du_s"])
    out["ratios"] = ratios
    out["targets"] = {"measure_over_du_s_at_most": DU_TARGET,
                      "met_warm": ratios["measure/du_s (warm)"] <= DU_TARGET}
    if "measure/du_s (cold)" in ratios:
        out["targets"]["met_cold"] = ratios["measure/du_s (cold)"] <= DU_TARGET
    if args.profile == "always" or (args.profile == "auto" and not all(
            v for k, v in out["targets"].items() if k.startswith("met"))):
        t, top = profiled(lambda: backend.measure(SN))
        out["profile_measure_warm"] = {"wall_s_under_cprofile": t, "top_by_tottime": top}
    return out


# ---- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000,
                    help="files in the snapshot deleted (100000)")
    ap.add_argument("--per-dir", type=int, default=100, help="files per directory (100)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each case (3)")
    ap.add_argument("--du-snapshots", type=int, default=30, help="snapshots for du (30)")
    ap.add_argument("--du-files", type=int, default=10_000, help="files per snapshot (10000)")
    ap.add_argument("--du-change", type=float, default=0.01,
                    help="share of files replaced in each snapshot (0.01)")
    ap.add_argument("--no-cold", dest="cold", action="store_false",
                    help="skip the cold-cache du runs")
    ap.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                    help="skip the diagnostic cases (shutil.rmtree, walk_stat_floor)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="cProfile the xsbackup call when its target is missed (auto)")
    ap.add_argument("--skip-delete", action="store_true")
    ap.add_argument("--skip-du", action="store_true")
    run_args(ap, out="prune.json", quiet_load=1.0, quiet_timeout=300)
    args = ap.parse_args(argv)
    exit_on_sigterm()

    quiet = quiet_wait(args.quiet_load, args.quiet_timeout)
    result = new_result("prune", ("retention.prune", "snapshots.usage", "store", "locking"))
    result |= {"quiet_wait": quiet,
               "config": {k: v for k, v in vars(args).items() if k != "out"}}
    with temp_dir("xsbench-prune-") as tmp:
        if not args.skip_delete:
            (tmp / "a").mkdir()
            result["delete"] = bench_deletion(tmp / "a", args)
        if not args.skip_du:
            (tmp / "b").mkdir()
            result["du"] = bench_usage(tmp / "b", args)
    return finish(result, args.out, print_table)


def print_table(r: dict[str, Any]) -> None:
    if "delete" in r:
        d = r["delete"]
        print(f"\ndeleting a {d['tree']['files']}-file hardlinked snapshot "
              f"({r['config']['runs']} runs, after sync)")
        print(f"{'case':<28} {'median s':>9} {'min s':>8} {'max s':>8}")
        labels = {"xsbackup_total": "xsbackup to_trash+delete", "to_trash": "  to_trash (rename)",
                  "finish_client": "  finish_client", "delete_trash": "  delete_trash",
                  "rm_rf": "rm -rf", "shutil_rmtree": "shutil.rmtree (diagnostic)"}
        for k, label in labels.items():
            if k in d["summary"]:
                s = d["summary"][k]
                print(f"{label:<28} {s['median']:>9.3f} {s['min']:>8.3f} {s['max']:>8.3f}")
        ratio = d["ratios"]["xsbackup_total/rm_rf"]
        print(f"xsbackup / rm -rf = {ratio:.2f} (target <= {DELETE_TARGET}: "
              f"{'met' if d['targets']['met'] else 'NOT met'})")
    if "du" in r:
        u = r["du"]
        t = u["tree"]
        print(f"\nusage of {t['snapshots']} snapshots x {t['files_per_snapshot']} files "
              f"({t['file_paths']} paths, {t['distinct_file_inodes']} distinct inodes)")
        print(f"{'case':<26} {'warm med s':>10} {'cold med s':>10}")
        cold = u["cold"].get("summary", {})
        for k, s in u["warm"]["summary"].items():
            c = f"{cold[k]['median']:>10.3f}" if k in cold else f"{'-':>10}"
            print(f"{k:<26} {s['median']:>10.3f} {c}")
        print(f"{'xsbackup du CLI (warm, once)':<26} {u['cli']['wall_s']:>10.3f}")
        for k, v in u["ratios"].items():
            print(f"  {k:<32} {v:.2f}")
        tg = u["targets"]
        print(f"target measure <= {DU_TARGET} x du -s: warm "
              f"{'met' if tg['met_warm'] else 'NOT met'}" + (
                  f", cold {'met' if tg['met_cold'] else 'NOT met'}" if "met_cold" in tg
                  else f" (cold skipped: {u['cold'].get('skipped')})"))
        m = u["memory_of_one_measure"]
        print(f"measure memory: peak RSS +{m['peak_rss_growth_kib'] / 1024:.1f} MiB, "
              f"tracemalloc peak {m['tracemalloc_peak_bytes'] / 1e6:.2f} MB "
              f"({m['tracemalloc_peak_bytes_per_shared_inode']:.0f} B per shared inode, "
              f"{m['tracemalloc_peak_bytes_per_path']:.0f} B per path)")


if __name__ == "__main__":
    sys.exit(main())
