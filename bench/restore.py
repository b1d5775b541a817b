"""Full restore of one snapshot: rsync pull vs the ``archive`` tar stream vs ``git archive
--remote`` vs ``restore push`` vs a local tar copy.

One state root; ``xsbackup --root R serve`` runs on loopback ports (embedded SSH server,
paramiko, and HTTP). A generated tree (``--files`` files, ``--mb`` MB in all, log-normally
varied sizes in nested directories, fixed seed and mtimes, under ``/tmp``) is backed up
ONCE with stock ``rsync -a SRC/ SN@127.0.0.1:documents/`` through the embedded server; the
serve process's own post-processor promotes it. That snapshot, made by the product, is
then restored in full, each run into a fresh empty target directory (removed again,
untimed, after the run is checked):

* ``rsync_pull``: ``rsync -a -e SSH SN@127.0.0.1:documents/latest/ TARGET/`` (the
  forced command runs ``rsync --server --sender --fake-super`` on the snapshot);
* ``tar_stream``: ``SSH SN@127.0.0.1 archive --volume documents | tar -x -C TARGET``
  (``xsbackup.restore.archive.write_tar``: Python ``tarfile`` in stream mode, undoing the
  fake-super recording); the whole pipeline is timed;
* ``git_archive``: the stock ``git archive --remote=ssh://SN@127.0.0.1/documents latest |
  tar -x -C TARGET`` through the embedded SSH server (git's upload-archive protocol,
  ``xsbackup.restore.gitarchive``; target: at most 1.3x ``local_tar``);
* ``restore_push`` and ``restore_push_tar`` (``--no-push`` skips them): ``xsbackup
  restore push SN --to root@127.0.0.1:PORT --dest TARGET --method pull|tar``, the server
  pushing to a loopback "device" (a second OpenSSH sshd with a plain admin key) over
  fabric: space check, then either the device's ``rsync`` pulling from the embedded
  server with a one-time restore key (``pull``, the default) or a tar over the channel
  into ``tar -x`` (``tar``), then the manifest check, all timed. Their yardstick is
  ``rsync_pull``, a plain ``rsync -a`` pull (target: at most 1.2x);
* ``local_tar``, the anchor (the physical bound of copying this tree on this disk):
  ``tar -c -C SNAPSHOT_DIR . | tar -x -C TARGET`` of the same snapshot directory;
* ``http_tar``: ``curl -u bench:PW .../api/v1/clients/SN/volumes/documents/snapshots/ID/
  archive.tar | tar -x -C TARGET`` against the serve process's HTTP port (waitress);
* diagnostics (``--no-diagnose`` skips them), to tell the archive writer's cost from the
  transport's: ``archive_local``, the same forced command run locally with no SSH at all
  (``SSH_ORIGINAL_COMMAND='archive --volume documents' xsbackup ssh-command --client SN |
  tar -x``), and ``openssh_tar_stream`` / ``openssh_rsync_pull``, the same two commands
  through a stock OpenSSH ``sshd`` whose ``authorized_keys`` is the one xsbackup
  generates (forced command ``xsbackup ssh-command --client SN``).

SSH cases use the same client options and cipher (``--cipher``); the negotiated
algorithms are recorded. After ``--warmup`` untimed rounds, ``--runs`` timed rounds are
interleaved round-robin (the first case rotating), each run after an untimed ``sync``.
Every run is checked (file count, total bytes, and content and mtime of a fixed sample
of files against the source tree). While each run goes on, a thread samples every 0.1 s
the RSS of the server process (the serve process, or the sshd listener) and of its
descendants (the forced command and what it runs), and the CPU the server and the
client side spent is recorded. Before the timed rounds the bench waits until the 1-minute
load average is at most ``--quiet-load`` (up to ``--quiet-timeout`` seconds).

Usage: ``python bench/restore.py [--files 20000] [--mb 1000] [--runs 3]``.
Smoke run: ``python bench/restore.py --files 500 --mb 20 --runs 1 --quiet-load 0``.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench._common import (
    XSBACKUP,
    Sshd,
    exit_on_sigterm,
    finish,
    free_port,
    keygen,
    log_warnings,
    login_user,
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

SN = "SHF00RESTORE1"
VOLUME = "documents"
HTTP_USER = "bench"
HTTP_PASSWORD = "bench restore password 1"  # noqa: S105 - a throwaway user of a temp root
TARGETS = {"tar_stream/local_tar": 1.3, "git_archive/local_tar": 1.3,
           "restore_push/rsync_pull": 1.2, "restore_push_tar/rsync_pull": 1.2}
ANCHOR = "local_tar"
MB = 1_000_000


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XSBACKUP_")}


def _xs(root: Path, *args: str, stdin: str | None = None) -> str:
    r = subprocess.run([XSBACKUP, "--root", str(root), *args], capture_output=True, text=True,
                       env=_env(), input=stdin, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"xsbackup {shlex.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        return f"unavailable: {e}"
    return ((r.stdout or r.stderr).splitlines() or [""])[0].strip()


# ---- the serve process ---------------------------------------------------------------------


@dataclass
class Served:
    root: Path
    ssh_port: int
    http_port: int
    proc: subprocess.Popen[str] | None = None
    banner: str = ""
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stderr_path = self.root.parent / "serve.stderr"

    def start(self) -> Served:
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [XSBACKUP, "--root", str(self.root), "serve", "--ssh-port", str(self.ssh_port),
                 "--http-port", str(self.http_port)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                env=_env())
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline().strip()
        if not self.banner.startswith("xsbackup serving"):
            self.stop()
            raise RuntimeError(f"xsbackup serve did not start: {self.stderr_path.read_text()}")
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = None
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
        return rc

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ssh_base(key: Path, port: int, cipher: str, mac: str) -> list[str]:
    """Stock ssh client, no user configuration; the login goes in ``USER@HOST``."""
    argv = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-c", cipher]
    if mac:
        argv += ["-m", mac]
    return [*argv, "-i", str(key), "-p", str(port)]


def negotiated(ssh: list[str], dest: str) -> dict[str, str]:
    """``ssh -v DEST true`` (the forced command answers ``true`` with 0): what was agreed."""
    i = ssh.index("LogLevel=ERROR")
    argv = [ssh[0], "-v", *ssh[1:i - 1], *ssh[i + 1:], dest, "true"]
    r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"ssh true exited {r.returncode}: {r.stderr[-2000:]}")
    out: dict[str, str] = {}
    for ln in r.stderr.splitlines():
        for key, marker in (("kex", "kex: algorithm: "),
                            ("host_key", "kex: host key algorithm: "),
                            ("server_to_client", "kex: server->client cipher: "),
                            ("client_to_server", "kex: client->server cipher: ")):
            if marker in ln and key not in out:
                out[key] = ln.split(marker, 1)[1].strip()
        if "Remote protocol version" in ln and "server" not in out:
            out["server"] = ln.split("remote software version", 1)[-1].strip()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---- memory sampling --------------------------------------------------------------------------


class RssSampler:
    """Every ``interval`` s: RSS of one process and the sum over its descendants (peaks)."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.start_self = 0          # the server's RSS when the run starts
        self.end_self = 0            # ... and once the run is over
        self.peak_self = 0
        self.peak_children = 0       # the sum over all descendants at one instant
        self.peak_child_max = 0      # the largest single descendant
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak_self = max(self.peak_self, proc.memory_info().rss)
        kids = 0
        with contextlib.suppress(psutil.Error):
            for c in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss = c.memory_info().rss
                    kids += rss
                    self.peak_child_max = max(self.peak_child_max, rss)
        self.peak_children = max(self.peak_children, kids)
        self.samples += 1

    def _loop(self) -> None:
        assert self.pid is not None
        try:
            proc = psutil.Process(self.pid)
            self.start_self = proc.memory_info().rss
        except psutil.Error:
            return
        while True:
            self._sample(proc)
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="rss")
            self._thread.start()
            while self._thread.is_alive() and not self.samples:
                time.sleep(0.001)  # the first sample is taken before the run starts
        return self

    def finish(self) -> None:
        """Record the server's RSS after the run (call once its connection is gone)."""
        if self.pid is not None:
            with contextlib.suppress(psutil.Error):
                self.end_self = psutil.Process(self.pid).memory_info().rss

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def as_dict(self) -> dict[str, Any]:
        return {"server_rss_start_mib": self.start_self / 2**20,
                "server_rss_peak_mib": self.peak_self / 2**20,
                "server_rss_growth_mib": (self.peak_self - self.start_self) / 2**20,
                "server_rss_after_mib": self.end_self / 2**20,
                "server_descendants_rss_peak_mib": self.peak_children / 2**20,
                "largest_descendant_rss_peak_mib": self.peak_child_max / 2**20,
                "samples": self.samples}


# ---- running one restore ---------------------------------------------------------------------


def run_pipeline(stages: list[list[str]], env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``stages[0] | stages[1] | ...``; raise with stderr if any fails."""
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in stages]
        try:
            return _run_stages(stages, env, errs, procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _run_stages(stages: list[list[str]], env: dict[str, str] | None, errs: list[Any],
                procs: list[subprocess.Popen[bytes]]) -> float:
    t0 = time.perf_counter()
    prev = None
    for i, argv in enumerate(stages):
        last = i == len(stages) - 1
        p = subprocess.Popen(argv, stdin=prev if prev is not None else subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                             stderr=errs[i], env=env if i == 0 else None)
        if prev is not None:
            prev.close()  # only the next stage holds the read end
        prev = p.stdout
        procs.append(p)
    rcs = [p.wait() for p in reversed(procs)][::-1]
    seconds = time.perf_counter() - t0
    bad = [(shlex.join(argv), rc, e) for argv, rc, e in zip(stages, rcs, errs, strict=True)
           if rc != 0]
    if bad:
        msgs = []
        for cmd, rc, e in bad:
            e.seek(0)
            msgs.append(f"{cmd} exited {rc}: "
                        f"{e.read().decode(errors='replace').strip()[-1500:]}")
        raise RuntimeError("; ".join(msgs))
    return seconds


@dataclass
class Case:
    name: str
    what: str
    stages: Callable[[Path], list[list[str]]]
    server_pid: int | None = None        # whose RSS/CPU is "the server"
    env: dict[str, str] | None = None
    diagnostic: bool = False

    def command(self) -> str:
        return " | ".join(shlex.join(s) for s in self.stages(Path("TARGET")))


def check_target(target: Path, src: Path, tree: dict[str, Any],
                 sample: list[str]) -> dict[str, Any]:
    """Count files and bytes; compare content and mtime of the sampled files."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(target):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            files += 1
            size += st.st_size
    content_bad = mtime_bad = mode_bad = 0
    for rel in sample:
        a, b = src / rel, target / rel
        try:
            sb = b.stat()
        except FileNotFoundError:
            content_bad += 1
            continue
        sa = a.stat()
        if hashlib.sha256(a.read_bytes()).digest() != hashlib.sha256(b.read_bytes()).digest():
            content_bad += 1
        if int(sa.st_mtime) != int(sb.st_mtime):
            mtime_bad += 1
        if (sa.st_mode & 0o7777) != (sb.st_mode & 0o7777):
            mode_bad += 1
    out = {"files": files, "bytes": size, "sampled": len(sample),
           "content_mismatches": content_bad, "mtime_mismatches": mtime_bad,
           "mode_mismatches": mode_bad}
    out["complete"] = (files == tree["files"] and size == tree["bytes"] and content_bad == 0)
    return out


def run_case(case: Case, target: Path, src: Path, tree: dict[str, Any],
             sample: list[str]) -> dict[str, Any]:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    os.sync()  # no writeback of the previous run inside this one
    srv0 = cpu_seconds(case.server_pid) if case.server_pid else 0.0
    cli0 = children_cpu()
    with RssSampler(case.server_pid) as rss:
        seconds = run_pipeline(case.stages(target), env=case.env)
    cli1 = children_cpu()
    time.sleep(0.2)  # let the server reap its per-connection processes
    srv1 = cpu_seconds(case.server_pid) if case.server_pid else 0.0
    rss.finish()
    check = check_target(target, src, tree, sample)
    shutil.rmtree(target)
    if not check["complete"]:
        raise RuntimeError(f"{case.name}: incomplete restore: {check}")
    out: dict[str, Any] = {"seconds": seconds, "mb_per_s": tree["bytes"] / MB / seconds,
                           "client_cpu_s": cli1 - cli0, "check": check}
    if case.server_pid:
        out["server_cpu_s"] = srv1 - srv0
        out["rss"] = rss.as_dict()
    return out


# ---- the one backup ---------------------------------------------------------------------------


def wait_promoted(root: Path, timeout: float = 600) -> float:
    """Wait until the serve process's post-processor has promoted the upload."""
    from xsbackup.store import Store

    store = Store(root)
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    incoming = store.volume_dir(SN, VOLUME) / "incoming"
    while (any(f".{SN}." in n for n in os.listdir(store.queue_dir))
           or (incoming.is_dir() and os.listdir(incoming))
           or store.latest_id(SN, VOLUME) is None):
        if time.monotonic() > deadline:
            raise RuntimeError(f"upload not post-processed in {timeout:g} s")
        time.sleep(0.05)
    return time.perf_counter() - t0


def backup_once(root: Path, ssh: list[str], src: Path, tree: dict[str, Any]) -> dict[str, Any]:
    from xsbackup.snapshots.snapshot import read_facts
    from xsbackup.store import Store

    argv = ["rsync", "-a", "-e", shlex.join(ssh), f"{src}/", f"{SN}@127.0.0.1:{VOLUME}/"]
    os.sync()
    seconds = run_timed(argv)
    wait = wait_promoted(root)
    store = Store(root)
    sid = store.latest_id(SN, VOLUME)
    assert sid is not None
    snap = store.snapshots_dir(SN, VOLUME) / sid
    files = size = 0
    for dirpath, _dirs, names in os.walk(snap):
        for n in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, n)).st_size
    if files != tree["files"] or size != tree["bytes"]:
        raise RuntimeError(f"snapshot {sid} has {files} files / {size} bytes, expected "
                           f"{tree['files']} / {tree['bytes']}")
    facts = {k: v if isinstance(v, str | int | float | bool | list | dict) else str(v)
             for k, v in read_facts(snap).items()}
    return {"command": shlex.join(argv), "seconds": seconds,
            "mb_per_s": tree["bytes"] / MB / seconds, "postprocess_wait_s": wait,
            "snapshot": sid, "snapshot_dir": str(snap), "files": files, "bytes": size,
            "facts": facts}


def ssh_true_costs(dests: dict[str, list[str]], runs: int) -> dict[str, Any]:
    """``ssh DEST true`` end to end: the fixed connection cost inside every SSH restore."""
    times: dict[str, list[float]] = {k: [] for k in dests}
    for i in range(runs + 1):
        for k, argv in dests.items():
            t = run_timed(argv)
            if i:  # the first round is a warm-up
                times[k].append(t)
    return {k: {**summary(v), "timings": v} for k, v in times.items()}


def forced_command_env() -> dict[str, str]:
    """The environment the embedded server gives the forced command (``sshserver._run``),
    with the ``archive`` request in ``SSH_ORIGINAL_COMMAND``."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
            "SSH_ORIGINAL_COMMAND": f"archive --volume {VOLUME}"}


def writer_diagnostic(root: Path, runs: int) -> dict[str, Any]:
    """The forced command's ``archive`` to /dev/null (no transport, no ``tar -x``): as
    shipped, and with ``xsbackup.restore.archive.CHUNK`` (``tarfile.open(bufsize=...)``) set to
    64 KiB in that process only. Same interpreter, ``python -c`` for both."""
    variants = {"as_shipped": "",
                "chunk_64k": "import xsbackup.restore.archive as r; r.CHUNK = 65536; "}
    argv0 = f"sys.argv = ['xsbackup', '--root', {str(root)!r}, 'ssh-command', '--client', {SN!r}]"
    env = forced_command_env()
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(runs + 1):
        for k, patch in variants.items():
            code = (f"import sys; {argv0}; {patch}"
                    "from xsbackup.cli.main import main; sys.exit(main())")
            c0 = children_cpu()
            with open(os.devnull, "wb") as null:
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-c", code], env=env, stdout=null,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   check=False)
                t = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"archive writer {k} exited {r.returncode}: "
                                   f"{r.stderr.decode(errors='replace')[-1500:]}")
            if i:  # the first round is a warm-up
                times[k].append(t)
                cpu[k].append(children_cpu() - c0)
    out: dict[str, Any] = {k: {**summary(v), "timings": v, "cpu_s": cpu[k]}
                           for k, v in times.items()}
    out["ratio_as_shipped/chunk_64k"] = (median(times["as_shipped"])
                                         / median(times["chunk_64k"]))
    out["what"] = ("xsbackup ssh-command archive > /dev/null; chunk_64k patches "
                   "restore.archive.CHUNK (the tarfile stream bufsize) in that process only")
    return out


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20_000, help="files in the tree (20000)")
    ap.add_argument("--mb", type=float, default=1000, help="tree size in MB, 10^6 B (1000)")
    ap.add_argument("--runs", type=int, default=3, help="timed restores per case (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com",
                    help="ssh -c for every SSH case (aes128-gcm@openssh.com)")
    ap.add_argument("--mac", default="", help="ssh -m (default: negotiated)")
    ap.add_argument("--no-http", dest="http", action="store_false", help="skip http_tar")
    ap.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                    help="skip archive_local and the OpenSSH cases")
    ap.add_argument("--no-push", dest="push", action="store_false",
                    help="skip restore_push (it needs a second sshd for the device)")
    ap.add_argument("--sample", type=int, default=200,
                    help="files whose content and mtime each run checks (200)")
    run_args(ap, out="restore.json", quiet_load=1.0, quiet_timeout=300)
    args = ap.parse_args(argv)
    exit_on_sigterm()
    if not shutil.which("curl"):
        args.http = False
    total_bytes = int(args.mb * MB)
    import paramiko

    result = new_result("restore", ("restore.archive", "ingest.dispatch", "ingest.command",
                                    "ingest.upload", "server.sshserver", "restore.downloads",
                                    "web.app", "server.service"),
                        paramiko=paramiko.__version__, tar=_version(["tar", "--version"]),
                        curl=_version(["curl", "--version"]) if args.http else None)
    result |= {
        "config": {"files": args.files, "mb": args.mb, "bytes": total_bytes,
                   "runs": args.runs, "warmup": args.warmup, "cipher": args.cipher,
                   "mac": args.mac or "negotiated", "http": args.http,
                   "diagnose": args.diagnose, "push": args.push, "sample": args.sample,
                   "seed": args.seed,
                   "quiet_load": args.quiet_load, "quiet_timeout": args.quiet_timeout,
                   "mb_unit": "10^6 bytes", "rss_sample_interval_s": 0.1},
        "targets": dict(TARGETS),
    }
    with temp_dir("xsbench-restore-") as tmp, contextlib.ExitStack() as stack:
        print(f"generating {args.files} files, {total_bytes / MB:.0f} MB under {tmp} ...",
              flush=True)
        src = tmp / "src"
        t0 = time.perf_counter()
        tree = make_tree(src, args.files, total_bytes, args.seed)
        tree["generate_s"] = time.perf_counter() - t0
        result["tree"] = tree
        names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
        sample = sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))

        root = tmp / "xsroot"
        _xs(root, "init")
        result["config"]["xsbackup_toml"] = write_bench_config(root)
        keys = tmp / "keys"
        keys.mkdir()
        key = keygen(keys / "id_client", SN)
        _xs(root, "clients", "add", SN, "--pubkey", f"{key}.pub")
        if args.http:
            _xs(root, "admin", "add-user", HTTP_USER, "--password-stdin",
                stdin=HTTP_PASSWORD + "\n")
        ak = Path(_xs(root, "keys").strip())

        served = stack.enter_context(Served(root, free_port(), free_port()))
        assert served.proc is not None
        serve_pid = served.proc.pid
        result["serve_banner"] = served.banner
        print(served.banner, flush=True)
        emb = ssh_base(key, served.ssh_port, args.cipher, args.mac)
        emb_dest = f"{SN}@127.0.0.1"

        print("backing up once through the embedded SSH server ...", flush=True)
        backup = backup_once(root, emb, src, tree)
        result["backup"] = backup
        snap = Path(backup["snapshot_dir"])
        sid = backup["snapshot"]
        print(f"snapshot {sid}: {backup['files']} files, {backup['bytes'] / MB:.0f} MB, "
              f"upload {backup['seconds']:.1f} s", flush=True)

        cases = [
            Case("rsync_pull", "rsync pull through the embedded SSH server",
                 lambda t: [["rsync", "-a", "-e", shlex.join(emb),
                             f"{emb_dest}:{VOLUME}/latest/", f"{t}/"]], serve_pid),
            Case("tar_stream", "archive verb over the embedded SSH server, piped to tar -x",
                 lambda t: [[*emb, emb_dest, "archive", "--volume", VOLUME],
                            ["tar", "-x", "-C", str(t)]], serve_pid),
            Case(ANCHOR, "local tar -c | tar -x of the snapshot directory",
                 lambda t: [["tar", "-c", "-C", str(snap), "."], ["tar", "-x", "-C", str(t)]]),
        ]
        git_env = {**_env(), "GIT_SSH_COMMAND": shlex.join(emb)}
        cases.append(Case(
            "git_archive", "stock git archive --remote through the embedded SSH server, "
            "piped to tar -x",
            lambda t: [["git", "archive", f"--remote=ssh://{emb_dest}/{VOLUME}", "latest"],
                       ["tar", "-x", "-C", str(t)]], serve_pid, git_env))
        if args.push:
            admin = keygen(keys / "id_admin", "admin")
            device_keys = tmp / "device_authorized_keys"
            shutil.copy(f"{admin}.pub", device_keys)
            device = stack.enter_context(Sshd(tmp / "device-sshd", keygen(
                keys / "device_host_key", "device"), device_keys, "prohibit-password"))
            device_to = f"{login_user()}@127.0.0.1:{device.port}"
            for name, method, how in (
                    ("restore_push", "pull", "the device's rsync pulls from the embedded "
                     "server with a one-time restore key"),
                    ("restore_push_tar", "tar", "tar over the channel")):
                cases.append(Case(
                    name, "xsbackup restore push to a loopback device (OpenSSH sshd, "
                    f"fabric): space check, {how}, manifest check",
                    lambda t, m=method: [[
                        XSBACKUP, "--root", str(root), "restore", "push", SN, "--to",
                        device_to, "--volume", VOLUME, "--dest", str(t), "-i", str(admin),
                        "--host-keys", "ignore", "--method", m,
                        "--server", f"127.0.0.1:{served.ssh_port}"]], None, _env()))
        transports: dict[str, Any] = {"embedded": {
            "transport": "xsbackup serve's embedded SSH server (paramiko), login SN",
            "negotiated": negotiated(emb, emb_dest)}}
        ssh_true = {"embedded": [*emb, emb_dest, "true"]}
        if args.http:
            url = (f"http://127.0.0.1:{served.http_port}/api/v1/clients/{SN}/volumes/"
                   f"{VOLUME}/snapshots/{sid}/archive.tar")
            cases.append(Case(
                "http_tar", "GET .../archive.tar from serve's HTTP port (waitress), curl | tar -x",
                lambda t: [["curl", "-sS", "--fail", "-u", f"{HTTP_USER}:{HTTP_PASSWORD}", url],
                           ["tar", "-x", "-C", str(t)]], serve_pid))
        if args.diagnose:
            env = forced_command_env()
            cases.append(Case(
                "archive_local", "the forced command's archive verb run locally, no SSH",
                lambda t: [[XSBACKUP, "--root", str(root), "ssh-command", "--client", SN],
                           ["tar", "-x", "-C", str(t)]], None, env, diagnostic=True))
            host_key = keygen(keys / "ssh_host_ed25519_key", "host")
            sshd = stack.enter_context(Sshd(tmp / "sshd", host_key, ak))
            assert sshd.proc is not None
            ossh = ssh_base(key, sshd.port, args.cipher, args.mac)
            ossh_dest = f"{login_user()}@127.0.0.1"
            transports["openssh"] = {
                "transport": "stock OpenSSH sshd, authorized_keys generated by xsbackup "
                             "(forced command xsbackup ssh-command --client SN)",
                "negotiated": negotiated(ossh, ossh_dest)}
            ssh_true["openssh"] = [*ossh, ossh_dest, "true"]
            cases += [
                Case("openssh_rsync_pull", "rsync pull through OpenSSH's forced command",
                     lambda t: [["rsync", "-a", "-e", shlex.join(ossh),
                                 f"{ossh_dest}:{VOLUME}/latest/", f"{t}/"]], sshd.proc.pid,
                     diagnostic=True),
                Case("openssh_tar_stream", "archive verb through OpenSSH's forced command",
                     lambda t: [[*ossh, ossh_dest, "archive", "--volume", VOLUME],
                                ["tar", "-x", "-C", str(t)]], sshd.proc.pid,
                     diagnostic=True),
            ]
        result["transports"] = transports
        result["commands"] = {c.name: c.command() for c in cases}
        result["ssh_true"] = ssh_true_costs(ssh_true, 5)

        with contextlib.suppress(psutil.Error):
            result["serve_rss_before_runs_mib"] = (psutil.Process(serve_pid).memory_info().rss
                                                   / 2**20)
        targets = tmp / "targets"
        targets.mkdir()
        del names

        result["machine"]["quiet_wait"] = quiet_wait(args.quiet_load, args.quiet_timeout)
        warm: dict[str, list[float]] = {c.name: [] for c in cases}
        for i in range(args.warmup):
            for c in cases[i % len(cases):] + cases[:i % len(cases)]:
                r = run_case(c, targets / f"{c.name}-warm{i}", src, tree, sample)
                warm[c.name].append(r["seconds"])
            print("warm-up: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in warm.items()),
                  flush=True)
        raw: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cases}
        loads: list[tuple[float, float, float]] = []
        for i in range(args.runs):
            order = cases[i % len(cases):] + cases[:i % len(cases)]
            for c in order:
                raw[c.name].append(run_case(c, targets / f"{c.name}-{i}", src, tree, sample))
            loads.append(os.getloadavg())
            print(f"run {i + 1}/{args.runs}: " + "  ".join(
                f"{c.name} {raw[c.name][-1]['seconds']:.2f}s" for c in order), flush=True)
        result["machine"]["loadavg_after_each_round"] = loads

        out: dict[str, Any] = {}
        for c in cases:
            rs = raw[c.name]
            d: dict[str, Any] = {
                "what": c.what, "diagnostic": c.diagnostic,
                "seconds": {**summary([r["seconds"] for r in rs]),
                            "runs": [r["seconds"] for r in rs]},
                "mb_per_s": {**summary([r["mb_per_s"] for r in rs]),
                             "runs": [r["mb_per_s"] for r in rs]},
                "client_cpu_s": {**summary([r["client_cpu_s"] for r in rs]),
                                 "runs": [r["client_cpu_s"] for r in rs]},
                "warmup_seconds": warm[c.name],
                "checks": [r["check"] for r in rs],
            }
            if c.server_pid:
                d["server_cpu_s"] = {**summary([r["server_cpu_s"] for r in rs]),
                                     "runs": [r["server_cpu_s"] for r in rs]}
                d["rss"] = {k: {"max": max(r["rss"][k] for r in rs),
                                "median": median([r["rss"][k] for r in rs]),
                                "runs": [r["rss"][k] for r in rs]}
                            for k in rs[0]["rss"]}
            out[c.name] = d
        result["cases"] = out
        anchor = out[ANCHOR]["seconds"]["median"]
        ratios = {f"{c.name}/{ANCHOR}": out[c.name]["seconds"]["median"] / anchor
                  for c in cases if c.name != ANCHOR}
        ratios["tar_stream/rsync_pull"] = (out["tar_stream"]["seconds"]["median"]
                                           / out["rsync_pull"]["seconds"]["median"])
        if args.push:
            for name in ("restore_push", "restore_push_tar"):
                ratios[f"{name}/rsync_pull"] = (out[name]["seconds"]["median"]
                                                / out["rsync_pull"]["seconds"]["median"])
            ratios["restore_push_tar/restore_push"] = (
                out["restore_push_tar"]["seconds"]["median"]
                / out["restore_push"]["seconds"]["median"])
        if args.diagnose:
            ratios["archive_local/local_tar"] = ratios.pop("archive_local/local_tar")
            ratios["tar_stream/archive_local"] = (out["tar_stream"]["seconds"]["median"]
                                                  / out["archive_local"]["seconds"]["median"])
            ratios["tar_stream/openssh_tar_stream"] = (
                out["tar_stream"]["seconds"]["median"]
                / out["openssh_tar_stream"]["seconds"]["median"])
        result["ratios"] = ratios
        result["ratio_note"] = "ratios of median wall seconds (higher is slower)"
        result["targets_met"] = {k: ratios[k] <= v for k, v in TARGETS.items() if k in ratios}
        ts = out["tar_stream"]["rss"]
        with contextlib.suppress(psutil.Error):
            result["serve_rss_after_runs_mib"] = (psutil.Process(serve_pid).memory_info().rss
                                                  / 2**20)
        result["serve_rss_during_tar_stream_mib"] = {
            "peak": ts["server_rss_peak_mib"]["max"],
            "growth_during_stream_max": ts["server_rss_growth_mib"]["max"],
            "at_stream_start": ts["server_rss_start_mib"]["runs"],
            "before_runs": result.get("serve_rss_before_runs_mib"),
            "after_runs": result.get("serve_rss_after_runs_mib"),
            "forced_command_peak": ts["largest_descendant_rss_peak_mib"]["max"],
            "note": "serve process alone; the archive is written by its child "
                    "(xsbackup ssh-command), reported separately as forced_command_peak. "
                    "The serve process also serves the other cases between tar streams, "
                    "so its RSS at a stream's start includes what they left behind; "
                    "growth = peak - start of the same run"}
        if args.diagnose:
            print("archive writer alone, to /dev/null ...", flush=True)
            result["archive_writer"] = writer_diagnostic(root, args.runs)

        rc = served.stop()
        result["serve_exit_code"] = rc
        err = served.stderr_path.read_text(errors="replace").strip()
        if err:
            result["serve_stderr_tail"] = err[-2000:]
        result["xsbackup_log_warnings"] = log_warnings(root)
    return finish(result, args.out, print_table)


def print_table(r: dict[str, Any]) -> None:
    cfg = r["config"]
    print(f"\nfull restore of {cfg['files']} files, {cfg['bytes'] / MB:.0f} MB into an empty "
          f"directory ({cfg['runs']} runs, median; cipher {cfg['cipher']})")
    print(f"{'case':<20} {'seconds':>8} {'min':>7} {'max':>7} {'MB/s':>7} {'vs local':>8} "
          f"{'srv CPU s':>9} {'cli CPU s':>9} {'srv RSS':>8} {'child RSS':>9}")
    for name, c in r["cases"].items():
        s = c["seconds"]
        ratio = s["median"] / r["cases"][ANCHOR]["seconds"]["median"]
        srv = f"{c['server_cpu_s']['median']:>9.2f}" if "server_cpu_s" in c else f"{'-':>9}"
        rss = (f"{c['rss']['server_rss_peak_mib']['max']:>7.0f}M "
               f"{c['rss']['largest_descendant_rss_peak_mib']['max']:>8.0f}M"
               if "rss" in c else f"{'-':>8} {'-':>9}")
        print(f"{name:<20} {s['median']:>8.2f} {s['min']:>7.2f} {s['max']:>7.2f} "
              f"{c['mb_per_s']['median']:>7.1f} {ratio:>7.2f}x {srv} "
              f"{c['client_cpu_s']['median']:>9.2f} {rss}")
    ratios = r["ratios"]
    print(f"tar_stream/local_tar {ratios['tar_stream/local_tar']:.2f}x (target <= "
          f"{TARGETS['tar_stream/local_tar']}: "
          f"{'met' if r['targets_met']['tar_stream/local_tar'] else 'NOT met'}); "
          f"rsync_pull/local_tar {ratios['rsync_pull/local_tar']:.2f}x")
    for key in ("git_archive/local_tar", "restore_push/rsync_pull",
                "restore_push_tar/rsync_pull"):
        if key in ratios:
            print(f"{key} {ratios[key]:.2f}x (target <= {TARGETS[key]}: "
                  f"{'met' if r['targets_met'][key] else 'NOT met'})")
    rss = r["serve_rss_during_tar_stream_mib"]
    print(f"serve RSS during tar_stream: peak {rss['peak']:.0f} MiB, at most "
          f"{rss['growth_during_stream_max']:.0f} MiB above the stream's start (serve "
          f"{rss['before_runs'] or float('nan'):.0f} MiB before the runs, "
          f"{rss['after_runs'] or float('nan'):.0f} MiB after); forced command (archive "
          f"writer) peak {rss['forced_command_peak']:.0f} MiB")
    if "archive_writer" in r:
        w = r["archive_writer"]
        print(f"archive writer alone > /dev/null (median s): as shipped "
              f"{w['as_shipped']['median']:.2f}, with tarfile bufsize 64 KiB "
              f"{w['chunk_64k']['median']:.2f} ({w['ratio_as_shipped/chunk_64k']:.2f}x)")
    for k, v in r["transports"].items():
        n = v["negotiated"]
        print(f"  {k}: {n.get('server', '?')}; kex {n.get('kex', '?')}; server->client "
              f"{n.get('server_to_client', '?')}; ssh HOST true "
              f"{r['ssh_true'][k]['median'] * 1e3:.0f} ms")
    q = r["machine"]["quiet_wait"]
    print(f"load average: {q['loadavg_before_wait'][0]:.2f} before the quiet wait, "
          f"{q['loadavg_after_wait'][0]:.2f} after {q['waited_s']:.0f} s, "
          f"{r['machine']['loadavg_at_end'][0]:.2f} at end")


if __name__ == "__main__":
    sys.exit(main())
