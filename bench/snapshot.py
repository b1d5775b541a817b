"""Snapshot promotion and Canonical JSON validation throughput.

Part A, promotion of a large tree (default 100,000 small files, a tenth of them Sugar-like
``*.metadata`` files). Real transfers are made by running the forced command locally:
``rsync -e FAKE_RSH`` where FAKE_RSH drops the host, puts the remote command in
``SSH_ORIGINAL_COMMAND`` and execs ``xsbackup --root R ssh-command --client SN`` (no ssh,
no network). So every ``incoming/<id>`` and queue entry is written by xsbackup itself.
After a first full backup (post-processed), each round does three no-change ingests and
times:

* ``promote``: the storage backend's ``promote`` alone (the rename and the ``latest`` swap,
  after ``sync``) -- the target is under 50 ms whatever the tree size;
* ``process``: the whole ``postprocess.process`` of one queue entry (CJSON validation of the
  metadata files, the stats walk against the previous snapshot, xattrs, fsync, rename,
  ``latest``, client status, dequeue), both right after its ingest and after ``sync``;
  plus its one walk (``compute_stats``, which also finds the metadata files) and the
  validation of those files (``validate_metadata``) timed separately;
* ``cp -al`` of the same tree (the original XS server's way of making a snapshot);
* ``rsync -a --link-dest=prev src/ new/`` locally, no ssh: the link-dest ingest cost of
  the same tree; and the xsbackup ingest itself through the fake rsh.

Part B, CJSON validation throughput: an in-memory corpus (default 50 MB) of canonical
Sugar-like metadata objects, 0.5-5 KB each; MB/s of ``xsbackup.snapshots.cjson.validate`` against
``orjson.loads`` (and stdlib ``json.loads``) on the same bytes, plus ``cjson.check_file`` on
the corpus written to disk (what the post-processor calls). Target: at least 50 MB/s.

``xsbackup/cjson.py`` may not exist yet when this runs: the script then polls for it for
up to ``--wait-cjson`` seconds. Timings are reported, never asserted.

Usage: ``python bench/snapshot.py [--files 100000] [--runs 5] [--cjson-mb 50]``.
Smoke run: ``python bench/snapshot.py --files 2000 --runs 2 --cjson-mb 2``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    XSBACKUP,
    cjson_encode,
    exit_on_sigterm,
    finish,
    keygen,
    median,
    new_result,
    quiet_wait,
    run_args,
    run_timed,
    sugar_metadata,
    summary,
    temp_dir,
    timed,
    tree_dirs,
    write_bench_config,
)

SN = "SHF00BENCH02"
VOLUME = "datastore"
PROMOTE_TARGET_S = 0.050
CJSON_TARGET_MBS = 50.0


# ---- waiting for xsbackup.snapshots.cjson --------------------------------------------------


def wait_for_cjson(seconds: float) -> types.ModuleType | None:
    deadline = time.monotonic() + seconds
    announced = False
    while True:
        importlib.invalidate_caches()
        try:
            return importlib.import_module("xsbackup.snapshots.cjson")
        except ImportError as e:
            if time.monotonic() >= deadline:
                print(f"xsbackup.snapshots.cjson still not importable ({e}); giving up", flush=True)
                return None
            if not announced:
                print(f"xsbackup.snapshots.cjson not importable yet ({e}); polling for up to "
                      f"{seconds:.0f} s ...", flush=True)
                announced = True
            time.sleep(15)


# ---- part A: promotion ---------------------------------------------------------------------


def make_small_tree(root: Path, n_files: int, metadata_fraction: float,
                    seed: int) -> dict[str, int]:
    """``n_files`` small files (100 B-4 KB data, 0.5-2 KB canonical ``.metadata``)."""
    rng = random.Random(seed)
    dirs = tree_dirs(n_files, per_dir=100)
    per_dir = -(-n_files // len(dirs))
    pool = rng.randbytes(1 << 16)
    every = round(1 / metadata_fraction) if metadata_fraction > 0 else 0
    total = n_meta = 0
    mtime = 1_700_000_000
    for i in range(n_files):
        d = root / dirs[i // per_dir]
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        if every and i % every == 0:
            body = sugar_metadata(rng, rng.randrange(500, 2000))
            p = d / f"entry{i:06d}.metadata"
            n_meta += 1
        else:
            size = rng.randrange(100, 4000)
            off = rng.randrange(0, len(pool) - size)
            body = pool[off:off + size]
            p = d / f"entry{i:06d}.bin"
        p.write_bytes(body)
        os.utime(p, (mtime, mtime + i))
        total += len(body)
    return {"files": n_files, "metadata_files": n_meta, "bytes": total, "dirs": len(dirs)}


def write_fake_rsh(path: Path, root: Path) -> Path:
    """rsync runs ``FAKE_RSH HOST rsync --server ...``: become the forced command locally."""
    forced = shlex.join([XSBACKUP, "--root", str(root), "ssh-command", "--client", SN])
    path.write_text("#!/bin/sh\n"
                    "# Drop the host; the rest is what sshd would put in SSH_ORIGINAL_COMMAND.\n"
                    "shift\n"
                    'SSH_ORIGINAL_COMMAND="$*"\n'
                    "export SSH_ORIGINAL_COMMAND\n"
                    f"exec {forced}\n")
    path.chmod(0o755)
    return path


class Promotion:
    def __init__(self, tmp: Path, src: Path) -> None:
        from xsbackup import config
        from xsbackup.context import Context
        from xsbackup.store import Store

        self.tmp, self.src = tmp, src
        self.root = tmp / "xsroot"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XSBACKUP_")}
        subprocess.run([XSBACKUP, "--root", str(self.root), "init"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        write_bench_config(self.root)
        key = keygen(tmp / "id_client", SN)
        subprocess.run([XSBACKUP, "--root", str(self.root), "clients", "add", SN, "--pubkey",
                        str(key.with_suffix(".pub"))], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        self.env = env
        self.store = Store(self.root)
        self.settings = config.load(self.root, environ={})
        self.ctx = Context.open(self.settings)
        self.rsh = write_fake_rsh(tmp / "fake-rsh", self.root)
        self.plain = tmp / "plain"
        self.plain.mkdir()
        self.cpal = tmp / "cpal"
        self.cpal.mkdir()
        self.n_plain = 0

    def ingest(self) -> float:
        return run_timed(["rsync", "-a", "--delete", "-e", str(self.rsh), f"{self.src}/",
                          "localhost:datastore-current/"], self.env)

    def entry(self) -> Any:
        from xsbackup.snapshots import queue

        entries = queue.pending(self.store)
        if len(entries) != 1:
            raise RuntimeError(f"expected one queue entry, found {len(entries)}")
        return entries[0]

    def process(self) -> tuple[float, dict[str, Any]]:
        from xsbackup.snapshots import postprocess
        from xsbackup.snapshots.snapshot import read_facts

        e = self.entry()
        t, outcome = timed(lambda: postprocess.process(self.ctx, e))
        if outcome != "promoted":
            raise RuntimeError(f"process returned {outcome!r}")
        facts = read_facts(self.store.snapshots_dir(SN, VOLUME) / e.id)
        keep = ("files", "linked_files", "new_bytes", "bytes", "cjson")
        return t, {k: facts.get(k) for k in keep}

    def breakdown_and_promote(self) -> dict[str, float]:
        """On a fresh incoming: time the two walks, then the rename step alone."""
        from xsbackup.snapshots import postprocess
        from xsbackup.snapshots.snapshot import compute_stats

        e = self.entry()
        incoming = self.store.incoming_dir(SN, VOLUME) / e.id
        prev = postprocess.previous_snapshot(self.store, SN, VOLUME, e.id)
        os.sync()
        found: list[str] = []
        rx = postprocess._pattern_re(self.settings.postprocess.cjson_patterns)
        # The post-processor's one walk (stats + finding metadata), then the validation.
        t_stats, _ = timed(lambda: compute_stats(incoming, prev, rx, found))
        t_cjson, _ = timed(lambda: postprocess.validate_metadata(incoming, found,
                                                                 self.settings))
        os.sync()

        def rename() -> None:
            self.ctx.storage.promote(SN, VOLUME, e.id)

        t_promote, _ = timed(rename)
        if self.store.latest_id(SN, VOLUME) != e.id:
            raise RuntimeError("latest does not name the promoted snapshot")
        postprocess.process(self.ctx, e)  # finish the entry (untimed)
        return {"validate_metadata": t_cjson, "compute_stats": t_stats, "promote": t_promote}

    def plain_first(self) -> float:
        return run_timed(["rsync", "-a", f"{self.src}/", f"{self.plain / 's000'}/"])

    def rsync_link_dest(self) -> float:
        prev = self.plain / f"s{self.n_plain:03d}"
        new = self.plain / f"s{self.n_plain + 1:03d}"
        self.n_plain += 1
        os.sync()
        return run_timed(["rsync", "-a", f"--link-dest={prev}", f"{self.src}/", f"{new}/"])

    def cp_al(self, n: int) -> float:
        sid = self.store.latest_id(SN, VOLUME)
        assert sid is not None
        os.sync()
        return run_timed(["cp", "-al", str(self.store.snapshots_dir(SN, VOLUME) / sid),
                          str(self.cpal / f"c{n:03d}")])


def bench_promotion(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    src = tmp / "src"
    print(f"generating {args.files} small files ...", flush=True)
    tree = make_small_tree(src, args.files, args.metadata_fraction, args.seed)
    p = Promotion(tmp, src)
    out: dict[str, Any] = {"tree": tree}
    print("first full ingest + process ...", flush=True)
    out["first_full_ingest_s"] = p.ingest()
    t, facts = p.process()
    out["first_process_no_previous_s"] = t
    out["first_facts"] = facts
    out["plain_first_rsync_s"] = p.plain_first()

    keys = ("ingest", "process_right_after_ingest", "process_after_sync", "validate_metadata",
            "compute_stats", "promote", "rsync_link_dest", "cp_al")
    times: dict[str, list[float]] = {k: [] for k in keys}
    facts_seen = []
    for r in range(args.runs):
        times["ingest"].append(p.ingest())
        t, facts = p.process()
        times["process_right_after_ingest"].append(t)
        facts_seen.append(facts)
        times["ingest"].append(p.ingest())
        os.sync()
        t, facts = p.process()
        times["process_after_sync"].append(t)
        facts_seen.append(facts)
        times["ingest"].append(p.ingest())
        for k, v in p.breakdown_and_promote().items():
            times[k].append(v)
        times["rsync_link_dest"].append(p.rsync_link_dest())
        times["cp_al"].append(p.cp_al(r))
        out.setdefault("loadavg_1min_after_each_round", []).append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.runs}: " + "  ".join(
            f"{k} {times[k][-1] * 1e3:.1f}ms" for k in keys), flush=True)
    out["timings"] = times
    out["summary"] = {k: summary(v) for k, v in times.items()}
    out["facts_of_processed_snapshots"] = facts_seen
    promote_med = median(times["promote"])
    out["targets"] = {
        "promote_under_s": PROMOTE_TARGET_S,
        "promote_median_s": promote_med,
        "promote_meets_target": promote_med < PROMOTE_TARGET_S,
        "process_median_s": median(times["process_after_sync"]),
        "process_meets_promote_target": median(times["process_after_sync"]) < PROMOTE_TARGET_S,
    }
    out["ratios"] = {
        "cp_al/promote": median(times["cp_al"]) / promote_med,
        "cp_al/process_after_sync": median(times["cp_al"]) / median(times["process_after_sync"]),
        "xsbackup_ingest_local/rsync_link_dest_local":
            median(times["ingest"]) / median(times["rsync_link_dest"]),
    }
    warnings = []
    for f in sorted((p.root / "log").glob("*")):
        warnings += [ln for ln in f.read_text(errors="replace").splitlines()
                     if " WARNING " in ln or " ERROR " in ln]
    out["xsbackup_log_warnings"] = warnings[-20:]
    return out


# ---- part B: CJSON throughput ----------------------------------------------------------------


def make_corpus(total_bytes: int, seed: int, nested: bool = False) -> list[bytes]:
    rng = random.Random(seed)
    docs, size = [], 0
    while size < total_bytes:
        d = sugar_metadata(rng, rng.randrange(500, 5001), nested)
        docs.append(d)
        size += len(d)
    return docs


def bench_cjson(tmp: Path, cjson: types.ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    print(f"generating a {args.cjson_mb} MB CJSON corpus ...", flush=True)
    docs = make_corpus(int(args.cjson_mb * 1_000_000), args.seed)
    total = sum(len(d) for d in docs)
    mb = total / 1e6
    validate = cjson.validate

    # The corpus is canonical by construction: every document must parse and re-encode to
    # the same bytes with the bench's own encoder; validate() must accept all of them.
    not_canonical = sum(1 for d in docs if cjson_encode(orjson.loads(d)) != d)
    violations = [(i, v) for i, d in enumerate(docs) if (v := validate(d)) is not None]

    def loop(fn: Any) -> float:
        t0 = time.perf_counter()
        for d in docs:
            fn(d)
        return time.perf_counter() - t0

    fns = {"cjson.validate": validate, "orjson.loads": orjson.loads, "json.loads": json.loads}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k, fn in fns.items():  # warm-up
        loop(fn)
        del k
    for _ in range(args.cjson_runs):
        for k, fn in fns.items():
            times[k].append(loop(fn))
    out: dict[str, Any] = {
        "corpus": {"documents": len(docs), "bytes": total,
                   "min_doc": min(len(d) for d in docs), "max_doc": max(len(d) for d in docs)},
        "violations_reported_on_canonical_corpus": len(violations),
        "first_violations": [f"doc {i}: {v!r}" for i, v in violations[:5]],
        "corpus_docs_not_canonical_by_bench_encoder": not_canonical,
        "timings": times,
        "mb_per_s": {k: mb / median(v) for k, v in times.items()},
    }

    if hasattr(cjson, "check_file"):
        d = tmp / "corpus"
        d.mkdir()
        paths = []
        for i, doc in enumerate(docs):
            pth = d / f"{i:06d}.metadata"
            pth.write_bytes(doc)
            paths.append(pth)
        max_bytes = 1 << 20
        statuses: dict[str, int] = {}
        for pth in paths:
            s = str(cjson.check_file(pth, max_bytes).get("status"))
            statuses[s] = statuses.get(s, 0) + 1
        cf_times = []
        for _ in range(args.cjson_runs):
            t0 = time.perf_counter()
            for pth in paths:
                cjson.check_file(pth, max_bytes)
            cf_times.append(time.perf_counter() - t0)
        out["check_file"] = {"timings": cf_times, "mb_per_s": mb / median(cf_times),
                             "statuses": statuses}
    # The same shape with a list and a nested object: the general scanner, not the
    # flat-object fast path.
    nested = make_corpus(int(args.cjson_nested_mb * 1_000_000), args.seed + 1, nested=True)
    nb = sum(len(d) for d in nested) / 1e6
    bad = sum(1 for d in nested if validate(d) is not None)
    n_times: dict[str, list[float]] = {"cjson.validate": [], "orjson.loads": []}
    for _ in range(max(1, args.cjson_runs // 2)):
        for k, fn in (("cjson.validate", validate), ("orjson.loads", orjson.loads)):
            t0 = time.perf_counter()
            for d in nested:
                fn(d)
            n_times[k].append(time.perf_counter() - t0)
    out["nested_corpus"] = {"documents": len(nested), "mb": nb, "violations": bad,
                            "timings": n_times,
                            "mb_per_s": {k: nb / median(v) for k, v in n_times.items()}}
    ratio = out["mb_per_s"]["cjson.validate"] / out["mb_per_s"]["orjson.loads"]
    out["validate_vs_orjson"] = ratio
    out["targets"] = {"validate_at_least_mb_per_s": CJSON_TARGET_MBS,
                      "validate_meets_target": out["mb_per_s"]["cjson.validate"]
                      >= CJSON_TARGET_MBS}
    return out


# ---- main -------------------------------------------------------------------------------


def _stub_cjson() -> None:
    stub = types.ModuleType("xsbackup.snapshots.cjson")

    def check_file(path: Path, max_bytes: int) -> dict[str, Any]:
        return {"status": "skipped", "reason": "bench stand-in: xsbackup.snapshots.cjson missing"}

    stub.check_file = check_file  # type: ignore[attr-defined]
    sys.modules["xsbackup.snapshots.cjson"] = stub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="files in the tree (100000)")
    ap.add_argument("--metadata-fraction", type=float, default=0.1,
                    help="share of the files that are *.metadata (0.1)")
    ap.add_argument("--runs", type=int, default=5, help="rounds of part A (5)")
    ap.add_argument("--cjson-mb", type=float, default=50, help="CJSON corpus size in MB (50)")
    ap.add_argument("--cjson-nested-mb", type=float, default=5,
                    help="size of the second corpus with nested values, in MB (5)")
    ap.add_argument("--cjson-runs", type=int, default=5, help="timed passes over the corpus (5)")
    ap.add_argument("--wait-cjson", type=float, default=1200,
                    help="seconds to poll for xsbackup/cjson.py when it is missing (1200)")
    ap.add_argument("--skip-promotion", action="store_true")
    ap.add_argument("--skip-cjson", action="store_true")
    run_args(ap, out="snapshot.json", quiet_load=0, quiet_timeout=900)
    args = ap.parse_args(argv)
    exit_on_sigterm()

    cjson = wait_for_cjson(args.wait_cjson)
    quiet = quiet_wait(args.quiet_load, args.quiet_timeout)
    if cjson is None:
        _stub_cjson()
    result = new_result("snapshot", ("snapshots.cjson", "snapshots.postprocess",
                                     "snapshots.snapshot", "ingest.upload"))
    result |= {"quiet_wait": quiet,
               "config": {k: v for k, v in vars(args).items() if k != "out"},
               "cjson_module_present": cjson is not None}
    with temp_dir("xsbench-snapshot-") as tmp:
        if not args.skip_promotion:
            (tmp / "a").mkdir()
            result["promotion"] = bench_promotion(tmp / "a", args)
        if not args.skip_cjson and cjson is not None:
            if not hasattr(cjson, "validate"):
                result["cjson"] = {"error": "xsbackup.snapshots.cjson has no validate()"}
            else:
                (tmp / "b").mkdir()
                result["cjson"] = bench_cjson(tmp / "b", cjson, args)
    return finish(result, args.out, print_table)


def print_table(r: dict[str, Any]) -> None:
    if "promotion" in r:
        p = r["promotion"]
        t = p["tree"]
        print(f"\npromotion of {t['files']} files ({t['metadata_files']} .metadata, "
              f"{t['bytes'] / 1e6:.1f} MB, {t['dirs']} dirs), {r['config']['runs']} rounds")
        print(f"{'step':<30} {'median ms':>10} {'min ms':>9} {'max ms':>9}")
        labels = {
            "promote": "promote+update_latest",
            "process_after_sync": "postprocess.process (synced)",
            "process_right_after_ingest": "postprocess.process (no sync)",
            "validate_metadata": "  of which CJSON validation",
            "compute_stats": "  of which stats walk",
            "cp_al": "cp -al (original XS)",
            "rsync_link_dest": "rsync --link-dest local",
            "ingest": "xsbackup ingest (fake rsh)",
        }
        for k, label in labels.items():
            s = p["summary"][k]
            print(f"{label:<30} {s['median'] * 1e3:>10.1f} {s['min'] * 1e3:>9.1f} "
                  f"{s['max'] * 1e3:>9.1f}")
        tg = p["targets"]
        print(f"target promote < {tg['promote_under_s'] * 1e3:.0f} ms: "
              f"{'met' if tg['promote_meets_target'] else 'NOT met'} (rename step); "
              f"whole process {'met' if tg['process_meets_promote_target'] else 'NOT met'}")
    if "cjson" in r and "mb_per_s" in r["cjson"]:
        c = r["cjson"]
        print(f"\nCJSON throughput, {c['corpus']['documents']} docs, "
              f"{c['corpus']['bytes'] / 1e6:.1f} MB (median MB/s)")
        for k, v in c["mb_per_s"].items():
            print(f"  {k:<16} {v:>8.1f}")
        if "check_file" in c:
            print(f"  {'cjson.check_file':<16} {c['check_file']['mb_per_s']:>8.1f}  (from disk)")
        n = c["nested_corpus"]
        print(f"  nested-value corpus ({n['mb']:.1f} MB): cjson.validate "
              f"{n['mb_per_s']['cjson.validate']:.1f}, orjson.loads "
              f"{n['mb_per_s']['orjson.loads']:.1f}")
        print(f"  violations on a canonical corpus: {c['violations_reported_on_canonical_corpus']}"
              f"; target >= {c['targets']['validate_at_least_mb_per_s']:.0f} MB/s: "
              f"{'met' if c['targets']['validate_meets_target'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
