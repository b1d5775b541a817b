"""Storage backends side by side: a no-change nightly backup over OpenSSH, end to end.

On one loop-mounted btrfs image (a sparse file under /tmp) and, for the reflink backend,
one XFS image (``mkfs.xfs -m reflink=1``), each case pushes the same tree with stock
``rsync -a --delete SRC/ HOST:DEST/`` over stock ``ssh``, and a run ends when the new
snapshot is visible:

| case | server side of one backup |
|---|---|
| ``btrfs`` | xsbackup's forced command (btrfs backend), then the post-processor |
| ``hardlink`` | xsbackup's forced command (hardlink backend), then the post-processor |
| ``reflink`` (XFS) | xsbackup's forced command (reflink backend), then the post-processor |
| ``ds-backup`` (both images) | ``rsync`` into a persistent tree, then ``cp -al`` of it |
| ``ds-backup+fake-super`` (both) | the same with ``--fake-super`` on the receiving rsync |

Every case first makes one timed full backup (``first_full``), as does ``raw`` (plain
rsync into an empty directory, the reference for the first full backup); then the timed
no-change runs are interleaved round-robin, with an untimed ``sync`` before each. The
``ds-backup`` case is the issue's anchor; ``ds-backup+fake-super`` is informational: the
receiving rsync with the ``--fake-super`` xsbackup always gives it (owners, devices and
setuid bits recorded, never applied), which in rsync 3.5 resolves every stored file's
path component by component and reads its record (bench/README.md). xsbackup's runs are
split into transfer and post-processing, and post-processing into its steps. Also
timed: deleting one snapshot (``storage.delete`` and ``purge``, for btrfs including the
wait for the cleaner) and measuring usage (``Backend.measure``) against ``btrfs filesystem
du -s`` of the same snapshots. Reports; never asserts a timing. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    XSBACKUP,
    Sshd,
    exit_on_sigterm,
    finish,
    keygen,
    make_tree,
    new_result,
    quiet_wait,
    run_args,
    run_timed,
    summary,
    temp_dir,
    timed,
    write_bench_config,
)

SN = "SHF00BENCH02"
MKFS = {"btrfs": ["mkfs.btrfs", "-q"], "xfs": ["mkfs.xfs", "-q", "-m", "reflink=1"]}


@contextlib.contextmanager
def loop_fs(kind: str, base: Path, size: int) -> Iterator[Path]:
    image, mnt = base / f"{kind}.img", base / f"{kind}-mnt"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(size)
    subprocess.run([*MKFS[kind], str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink(missing_ok=True)


class Case:
    def __init__(self, name: str, rsh: str, src: Path) -> None:
        self.name, self.rsh, self.src = name, rsh, src

    def push(self, dest: str) -> float:
        return run_timed(["rsync", "-a", "--delete", "-e", self.rsh, f"{self.src}/",
                          f"127.0.0.1:{dest}"])

    def first(self) -> float:
        return self.run()

    def run(self) -> float:
        raise RuntimeError("a case defines run")


class XsbackupCase(Case):
    def __init__(self, name: str, rsh: str, src: Path, root: Path) -> None:
        super().__init__(name, rsh, src)
        from xsbackup import config

        self.settings = config.load(root, environ={})
        self.parts: list[tuple[float, float]] = []  # (transfer, post-processing) per run
        self.phases: list[dict[str, float]] = []    # post-processing's steps per run

    def run(self) -> float:
        from xsbackup.context import Context
        from xsbackup.snapshots import postprocess

        t = self.push("documents/")
        with PhaseTimer() as phases:
            dt_pp, counts = timed(lambda: postprocess.run_once(Context.open(self.settings)))
        if counts.get("promoted") != 1:
            raise RuntimeError(f"{self.name}: postprocess promoted {counts}")
        self.parts.append((t, dt_pp))
        self.phases.append(phases.seconds)
        return t + dt_pp


class PhaseTimer:
    """Seconds spent in the post-processor's steps during one ``run_once`` (this process
    only): the stats walk (``compute_stats``, which also tightens modes), the content
    manifest (``manifest.previous`` + ``keep``, which builds, merges or links it and
    hands it to the backend), and
    the backend's ``promote``. The functions are wrapped where ``postprocess`` calls them
    and restored on exit."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, attr: str, key: str) -> None:
        import time

        inner = getattr(owner, attr)

        def timed_call(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

        self._undo.append((owner, attr, inner))
        setattr(owner, attr, timed_call)

    def __enter__(self) -> PhaseTimer:
        from xsbackup.snapshots import manifest, postprocess
        from xsbackup.storage import btrfs, hardlink, reflink

        self._wrap(postprocess, "compute_stats", "stats_walk")
        self._wrap(manifest, "previous", "manifest")
        self._wrap(manifest, "keep", "manifest")
        for cls in (btrfs.BtrfsBackend, reflink.ReflinkBackend, hardlink.HardlinkBackend):
            self._wrap(cls, "promote", "promote")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, inner in reversed(self._undo):
            setattr(owner, attr, inner)


class DsBackupCase(Case):
    """rsync into a persistent tree, then ``cp -al`` of it. ``rsync_path``: the server's
    rsync command (``rsync --fake-super`` for the informational ``ds-backup+fake-super``
    case: the option xsbackup must give its receiving rsync, which the issue's anchor
    does not pay)."""

    def __init__(self, name: str, rsh: str, src: Path, base: Path,
                 rsync_path: str = "") -> None:
        super().__init__(name, rsh, src)
        self.base, self.n, self.rsync_path = base, 0, rsync_path
        self.parts: list[tuple[float, float]] = []  # (rsync, cp -al) per run
        (base / "snapshots").mkdir(parents=True)

    def push(self, dest: str) -> float:
        extra = [f"--rsync-path={self.rsync_path}"] if self.rsync_path else []
        return run_timed(["rsync", "-a", "--delete", *extra, "-e", self.rsh,
                          f"{self.src}/", f"127.0.0.1:{dest}"])

    def run(self) -> float:
        t = self.push(f"{self.base / 'current'}/")
        self.n += 1
        cp = run_timed(["cp", "-al", str(self.base / "current"),
                        str(self.base / "snapshots" / f"s{self.n:03d}")])
        self.parts.append((t, cp))
        return t + cp


def xsbackup_root(root: Path, backend: str, pub: Path, env: dict[str, str]) -> Path:
    subprocess.run([XSBACKUP, "--root", str(root), "init", "--backend", backend], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    write_bench_config(root)
    subprocess.run([XSBACKUP, "--root", str(root), "clients", "add", SN, "--pubkey",
                    str(pub)], check=True, env=env, stdout=subprocess.DEVNULL)
    return root / "ssh" / "authorized_keys"


def interleave(cases: list[Case], runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {c.name: [] for c in cases}
    for i in range(runs):
        for c in cases[i % len(cases):] + cases[:i % len(cases)]:
            subprocess.run(["sync"], check=False)
            out[c.name].append(c.run())
    return out


def storage_costs(root: Path) -> dict[str, Any]:
    """Measure usage and delete the oldest snapshot through the backend of ``root``."""
    from xsbackup import config
    from xsbackup.context import Context

    ctx = Context.open(config.load(root, environ={}))
    snaps = ctx.store.snapshots_dir(SN, "documents")
    ids = ctx.store.snapshot_ids(SN, "documents")
    out: dict[str, Any] = {"backend": ctx.storage.describe().name}
    out["measure_s"], usage = timed(lambda: ctx.storage.measure(SN))
    out["measure_method"] = usage.method
    if out["backend"] != "reflink":
        out["btrfs_filesystem_du_s"] = run_timed(
            ["btrfs", "filesystem", "du", "-s", *(str(snaps / i) for i in ids)])
    subprocess.run(["sync"], check=False)
    out["delete_s"], why = timed(lambda: ctx.storage.delete(SN, "documents", ids[0]))
    out["purge_s"], _ = timed(ctx.storage.purge)
    out["delete_outcome"] = why or "deleted"
    return out


def one_filesystem(kind: str, base: Path, src: Path, key: Path, host_key: Path,
                   env: dict[str, str], runs: int, size: int,
                   stack: contextlib.ExitStack) -> dict[str, Any]:
    mnt = stack.enter_context(loop_fs(kind, base, size))
    rsh_for: Callable[[Sshd], str] = lambda s: s.rsh(key)  # noqa: E731
    pub = key.with_suffix(".pub")
    backends = ("btrfs", "hardlink") if kind == "btrfs" else ("reflink",)
    cases: list[Case] = []
    for backend in backends:
        ak = xsbackup_root(mnt / backend, backend, pub, env)
        sshd = stack.enter_context(Sshd(base / f"sshd-{kind}-{backend}", host_key, ak))
        cases.append(XsbackupCase(backend, rsh_for(sshd), src, mnt / backend))
    raw_ak = base / f"authorized_keys.{kind}"
    raw_ak.write_text(pub.read_text())
    raw = stack.enter_context(Sshd(base / f"sshd-{kind}-raw", host_key, raw_ak,
                                   permit_root="prohibit-password"))
    cases.append(DsBackupCase("ds-backup", rsh_for(raw), src, mnt / "ds-backup"))
    cases.append(DsBackupCase("ds-backup+fake-super", rsh_for(raw), src,
                              mnt / "ds-backup-fake-super", "rsync --fake-super"))
    out: dict[str, Any] = {"first_full": {}}
    if kind == "btrfs":
        out["first_full"]["raw"] = Case("raw", rsh_for(raw), src).push(f"{mnt / 'raw'}/")
    for c in cases:
        print(f"{kind}: first full backup, {c.name} ...", flush=True)
        out["first_full"][c.name] = c.first()
    print(f"{kind}: {runs} no-change runs per case ...", flush=True)
    timings = interleave(cases, runs)
    out["no_change"] = {name: summary(ts) | {"raw": ts} for name, ts in timings.items()}
    out["first_full_split"] = {}
    for c in cases:  # the first entry is the first full backup
        nc = out["no_change"][c.name]
        if isinstance(c, XsbackupCase):
            out["first_full_split"][c.name] = {"transfer": c.parts[0][0],
                                               "postprocess": c.parts[0][1],
                                               "postprocess_phases": c.phases[0]}
            nc["transfer_median"] = summary([t for t, _ in c.parts[1:]])["median"]
            nc["postprocess_median"] = summary([p for _, p in c.parts[1:]])["median"]
            nc["postprocess_phases_median"] = {
                k: summary([ph.get(k, 0.0) for ph in c.phases[1:]])["median"]
                for k in sorted({k for ph in c.phases for k in ph})}
        elif isinstance(c, DsBackupCase):
            nc["rsync_median"] = summary([t for t, _ in c.parts[1:]])["median"]
            nc["cp_al_median"] = summary([p for _, p in c.parts[1:]])["median"]
    med = {name: out["no_change"][name]["median"] for name in timings}
    out["ratios"] = {f"{b}/ds-backup": med[b] / med["ds-backup"] for b in backends}
    # Informational, not a target: against the anchor's method with the receiving
    # rsync's --fake-super, which xsbackup always gives and the anchor does not.
    out["ratios"] |= {f"{b}/ds-backup+fake-super": med[b] / med["ds-backup+fake-super"]
                      for b in backends}
    if kind == "btrfs":
        out["ratios"]["btrfs/hardlink"] = med["btrfs"] / med["hardlink"]
        out["ratios"]["first_full btrfs/raw"] = (out["first_full"]["btrfs"]
                                                 / out["first_full"]["raw"])
    out["storage"] = {b: storage_costs(mnt / b) for b in backends}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="files in the tree (100000)")
    ap.add_argument("--mb", type=float, default=393, help="total size in MB (393)")
    ap.add_argument("--runs", type=int, default=3, help="timed no-change runs per case (3)")
    ap.add_argument("--no-xfs", dest="xfs", action="store_false", help="skip the XFS image")
    run_args(ap, out="backends.json", quiet_load=0, quiet_timeout=900)
    args = ap.parse_args(argv)
    exit_on_sigterm()
    if os.geteuid() != 0:
        print("bench/backends.py needs root (loop mounts, sshd)")
        return 2
    quiet = quiet_wait(args.quiet_load, args.quiet_timeout)
    total = int(args.mb * 1_000_000)
    result = new_result("backends", ("storage.btrfs", "storage.reflink", "storage.mirror",
                                     "storage.clonetree", "storage.hardlink",
                                     "ingest.upload"))
    result |= {"quiet_wait": quiet, "config": {"files": args.files, "bytes": total,
                                               "runs": args.runs, "seed": args.seed}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSBACKUP_")}
    with temp_dir("xsbench-backends-") as tmp, contextlib.ExitStack() as stack:
        print(f"generating {args.files} files, {total / 1e6:.0f} MB ...", flush=True)
        src = tmp / "src"
        result["tree"] = make_tree(src, args.files, total, args.seed)
        keys = tmp / "keys"
        keys.mkdir()
        key = keygen(keys / "id_client", SN)
        host_key = keygen(keys / "ssh_host_ed25519_key", "host")
        # Sparse: room for six full copies and every hardlinked tree's metadata (btrfs
        # keeps it twice), which a tight image runs out of before its data does.
        size = max(4 << 30, 10 * total + (args.runs + 4) * args.files * 16384)
        result["btrfs"] = one_filesystem("btrfs", tmp, src, key, host_key, env, args.runs,
                                         size, stack)
        if args.xfs:
            result["xfs"] = one_filesystem("xfs", tmp, src, key, host_key, env, args.runs,
                                           size, stack)
        stack.close()
        shutil.rmtree(src, ignore_errors=True)
    return finish(result, args.out, print_table)


def print_table(r: dict[str, Any]) -> None:
    for kind in ("btrfs", "xfs"):
        if kind not in r:
            continue
        fs = r[kind]
        print(f"{kind}: no-change backup, end to end (median s)")
        for name, s in fs["no_change"].items():
            split = ""
            if "transfer_median" in s:
                phases = ", ".join(f"{k} {v:.3f}"
                                   for k, v in s.get("postprocess_phases_median", {}).items())
                split = (f"   (transfer {s['transfer_median']:.3f} + post-processing "
                         f"{s['postprocess_median']:.3f}: {phases})")
            elif "rsync_median" in s:
                split = f"   (rsync {s['rsync_median']:.3f} + cp -al {s['cp_al_median']:.3f})"
            print(f"  {name:<21} {s['median']:8.3f}   first full "
                  f"{fs['first_full'][name]:8.3f}{split}")
        for name, ratio in fs["ratios"].items():
            print(f"  {name:<32} {ratio:6.2f}x")
        for name, s in fs["storage"].items():
            du = f", btrfs filesystem du {s['btrfs_filesystem_du_s']:.3f}" \
                if "btrfs_filesystem_du_s" in s else ""
            print(f"  {name}: measure {s['measure_s']:.3f} s ({s['measure_method']}){du}; "
                  f"delete {s['delete_s']:.3f} s + purge {s['purge_s']:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
