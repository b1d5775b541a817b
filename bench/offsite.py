"""Off-site replication into a local restic repository, against restic run by hand.

A tree (default 10,000 files, 200 MB) is pushed twice through the real forced command
(``rsync -e FAKE_RSH``, no ssh), so the store holds a full snapshot and a no-change one
whose files are all hardlinks to the first. Each timed round starts from fresh, empty
repositories and measures, for each snapshot in turn:

* ``serve``: one pass of ``replicate.run_once`` in the benchmark's process, as serve's
  scheduler runs it: the backup from the staging link and the state writes (the
  repository is not listed: nothing needs it). The registry's copy, made once per
  change of the registry rather than per snapshot, is made before the passes and timed
  on its own (``registry_copy``);
* ``xsbackup`` (the command line): ``xsbackup offsite run --once --limit 1``, the same
  plus the program's start-up;
* ``restic``: plain ``restic backup`` by hand, done well: from inside the snapshot
  directory, ``--host``, ``--ignore-ctime`` and ``--parent`` (the first snapshot's id) for
  the second, so restic skips unchanged files as xsbackup makes it do;
* ``restic-naive`` (diagnostic): ``restic backup <snapshot dir>`` of each directory,
  nothing else: the second snapshot has another path, so restic finds no parent and reads
  every file again.

Ratios are ``serve`` over ``restic`` per snapshot (target at most 1.10x for both), and
the command line's over ``restic``. The
repository's size on disk is reported against the store's exclusive bytes
(``Backend.measure``). Timings are reported, never asserted.

Usage: ``python bench/offsite.py [--files 10000] [--mb 200] [--runs 3]``.
Smoke run: ``python bench/offsite.py --files 500 --mb 10 --runs 1``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

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
    run_timed,
    summary,
    temp_dir,
    write_bench_config,
)

SN = "SHF00BENCH13"
VOLUME = "documents"
TARGET_RATIO = 1.10
RESTIC = shutil.which("restic") or "/usr/bin/restic"


def fake_rsh(path: Path, root: Path) -> Path:
    forced = shlex.join([XSBACKUP, "--root", str(root), "ssh-command", "--client", SN])
    path.write_text("#!/bin/sh\nshift\nSSH_ORIGINAL_COMMAND=\"$*\"\n"
                    f"export SSH_ORIGINAL_COMMAND\nexec {forced}\n")
    path.chmod(0o755)
    return path


def xsb(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSBACKUP, "--root", str(root), *args], capture_output=True,
                          text=True, check=True)


def restic_env(repo: Path, password: Path, cache: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC",
            "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(password),
            "RESTIC_CACHE_DIR": str(cache)}


def restic(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    r = subprocess.run([RESTIC, *args], capture_output=True, text=True, env=env, cwd=cwd,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"restic {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def timed_restic(env: dict[str, str], args: list[str], cwd: Path | None = None) -> float:
    import time

    t0 = time.perf_counter()
    restic(env, *args, cwd=cwd)
    return time.perf_counter() - t0


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def fresh_offsite(work: Path, root: Path, name: str, password: Path) -> tuple[Path, float]:
    """A new, empty repository for ``root``, whose off-site state is forgotten, with the
    registry's copy made (untimed by the passes: it is made once, not per snapshot).
    Returns the repository and the seconds the registry copy took."""
    import time

    from xsbackup import config
    from xsbackup.context import Context
    from xsbackup.offsite import registry_copy
    from xsbackup.offsite.restic import Restic

    repo = work / name
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(root / "offsite" / "clients", ignore_errors=True)
    (root / "offsite" / "registry.sha256").unlink(missing_ok=True)
    write_bench_config(root, f'[offsite]\nrepository = "{repo}"\n'
                             f'password_file = "{password}"\n')
    xsb(root, "offsite", "init")
    ctx = Context.open(config.load(root, environ={}))
    t0 = time.perf_counter()
    registry_copy.replicate(ctx, Restic(ctx.settings.offsite, ctx.store))
    return repo, time.perf_counter() - t0


def serve_pass(root: Path) -> float:
    """One pass in this process, as serve's scheduler runs it (no program start-up)."""
    import time

    from xsbackup import config
    from xsbackup.context import Context
    from xsbackup.offsite import replicate

    ctx = Context.open(config.load(root, environ={}))
    t0 = time.perf_counter()
    report = replicate.run_once(ctx, limit=1)
    took = time.perf_counter() - t0
    if len(report.replicated) != 1:
        raise RuntimeError(f"serve pass replicated {report.replicated}: {report.failed}")
    return took


def two_passes(work: Path, snaps: list[Path], timed_pass: Any) -> tuple[float, float]:
    """Only the first snapshot is visible to the first pass (the second waits aside)."""
    aside = work / "aside"
    os.rename(snaps[1], aside)
    try:
        first = timed_pass()
    finally:
        os.rename(aside, snaps[1])
    return first, timed_pass()


def case_serve(work: Path, root: Path, snaps: list[Path], password: Path) -> dict[str, Any]:
    """xsbackup as serve runs it: a fresh repository, the previous state forgotten."""
    repo, registry = fresh_offsite(work, root, "repo-serve", password)
    first, second = two_passes(work, snaps, lambda: serve_pass(root))
    return {"serve_first": first, "serve_second": second, "registry_copy": registry,
            "repo_bytes_serve": du_bytes(repo)}


def case_cli(work: Path, root: Path, snaps: list[Path], password: Path) -> dict[str, Any]:
    """The command line: xsbackup offsite run --once (with the program's start-up)."""
    repo, _ = fresh_offsite(work, root, "repo-xsbackup", password)
    argv = [XSBACKUP, "--root", str(root), "offsite", "run", "--once", "--limit", "1"]
    first, second = two_passes(work, snaps, lambda: run_timed(argv))
    return {"xsbackup_first": first, "xsbackup_second": second,
            "repo_bytes_xsbackup": du_bytes(repo)}


def case_restic(work: Path, root: Path, snaps: list[Path], password: Path) -> dict[str, Any]:
    """restic by hand, done well."""
    hand = work / "repo-restic"
    shutil.rmtree(hand, ignore_errors=True)
    env = restic_env(hand, password, work / "cache-restic")
    restic(env, "init")
    base = ["backup", "--json", "--host", SN, "--ignore-ctime"]
    first_s = timed_restic(env, [*base, "."], cwd=snaps[0])
    first = orjson.loads(restic(env, "snapshots", "--json"))[0]["id"]
    second_s = timed_restic(env, [*base, "--parent", first, "."], cwd=snaps[1])
    return {"restic_first": first_s, "restic_second": second_s,
            "repo_bytes_restic": du_bytes(hand)}


def case_naive(work: Path, root: Path, snaps: list[Path], password: Path) -> dict[str, Any]:
    """restic, naive: each directory by its own path."""
    naive = work / "repo-naive"
    shutil.rmtree(naive, ignore_errors=True)
    env = restic_env(naive, password, work / "cache-naive")
    restic(env, "init")
    return {"naive_first": timed_restic(env, ["backup", str(snaps[0])]),
            "naive_second": timed_restic(env, ["backup", str(snaps[1])])}


CASES = (case_serve, case_restic, case_cli, case_naive)


def one_round(work: Path, root: Path, ids: list[str], password: Path,
              n: int) -> dict[str, Any]:
    """Every case once; odd rounds run them in the reverse order, so neither side always
    goes first (a warmer page cache, a quieter moment)."""
    snaps = [root / "clients" / SN / "volumes" / VOLUME / "snapshots" / i for i in ids]
    out: dict[str, Any] = {}
    for case in (CASES if n % 2 == 0 else tuple(reversed(CASES))):
        out.update(case(work, root, snaps, password))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--runs", type=int, default=3)
    run_args(ap, out="offsite.json", quiet_load=0, quiet_timeout=0)
    args = ap.parse_args()
    exit_on_sigterm()
    result = new_result("offsite", ["offsite.__init__", "offsite.replicate",
                                    "offsite.restic", "offsite.registry_copy"],
                        restic=subprocess.run([RESTIC, "version"], capture_output=True,
                                              check=False,
                                              text=True).stdout.strip())
    result["quiet_wait"] = quiet_wait(args.quiet_load, args.quiet_timeout)
    result["config"] = {"files": args.files, "mb": args.mb, "runs": args.runs}
    with temp_dir("xsb-bench-offsite-") as work:
        root = work / "state"
        subprocess.run([XSBACKUP, "--root", str(root), "init"], check=True,
                       capture_output=True)
        write_bench_config(root)
        key = work / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        xsb(root, "clients", "add", SN, "--pubkey", f"{key}.pub")
        src = work / "src"
        result["tree"] = make_tree(src, args.files, int(args.mb * 1_000_000), args.seed)
        rsh = fake_rsh(work / "rsh", root)
        ids = []
        for _ in range(2):
            subprocess.run(["rsync", "-e", str(rsh), "-a", "--delete", f"{src}/",
                            f"host:{VOLUME}/"], check=True, capture_output=True)
            xsb(root, "postprocess", "--once")
            ids.append(sorted(os.listdir(root / "clients" / SN / "volumes" / VOLUME /
                                         "snapshots"))[-1])
        password = work / "password"
        password.write_text("bench\n")
        password.chmod(0o600)
        rounds = [one_round(work, root, ids, password, n) for n in range(args.runs)]
        [usage] = orjson.loads(xsb(root, "du", SN, "--refresh", "--json").stdout)
        # The client's allocated bytes: both snapshots, each shared inode counted once.
        result["store_bytes"] = usage["total"]
    result["rounds"] = rounds
    med = {k: median([r[k] for r in rounds]) for k in rounds[0]}
    result["summary"] = {k: summary([r[k] for r in rounds]) for k in rounds[0]}
    result["ratios"] = {
        "first": med["serve_first"] / med["restic_first"],
        "second": med["serve_second"] / med["restic_second"],
        "cli_first": med["xsbackup_first"] / med["restic_first"],
        "cli_second": med["xsbackup_second"] / med["restic_second"],
        "naive_second_over_xsbackup_second": med["naive_second"] / med["xsbackup_second"],
        "target": TARGET_RATIO}
    return finish(result, args.out, print_table)


def print_table(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(f"{'case':<18}{'first (s)':>12}{'no-change (s)':>16}")
    for case in ("serve", "xsbackup", "restic", "naive"):
        print(f"{case:<18}{s[case + '_first']['median']:>12.2f}"
              f"{s[case + '_second']['median']:>16.2f}")
    r = result["ratios"]
    print(f"serve/restic: first {r['first']:.2f}x, no-change {r['second']:.2f}x "
          f"(target <= {TARGET_RATIO:.2f}x); the command line: first "
          f"{r['cli_first']:.2f}x, no-change {r['cli_second']:.2f}x")
    print(f"repository {s['repo_bytes_xsbackup']['median'] / 1e6:.1f} MB "
          f"(restic by hand {s['repo_bytes_restic']['median'] / 1e6:.1f} MB); the store "
          f"holds {result['store_bytes'] / 1e6:.1f} MB for both snapshots")


if __name__ == "__main__":
    sys.exit(main())
