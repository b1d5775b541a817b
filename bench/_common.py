"""Shared helpers for the benchmarks: a run's frame (common options, machine facts, the
code measured, the result file), trees, timing and a loopback sshd.

Nothing here imports pytest. The sshd helper follows ``tests/conftest.py``: a real OpenSSH
``sshd -D -e`` on a free 127.0.0.1 port with its own config, host key and
``AuthorizedKeysFile``; it is always stopped by ``Sshd.stop`` (use it as a context manager).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import os
import platform
import pwd
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# The installed console script next to this interpreter (not a pyenv shim), as the tests do.
XSBACKUP = str(Path(sys.executable).with_name("xsbackup"))
SSHD = "/usr/sbin/sshd"


# ---- timing -------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one command; raise with its stderr when it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, env=env, stdin=subprocess.DEVNULL,
                       check=False)
    dt_s = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return dt_s


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ---- machine facts -------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        return f"unavailable: {e}"
    return ((r.stdout or r.stderr).splitlines() or [""])[0].strip()


def machine_info() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "rsync": _first_line(["rsync", "--version"]),
        "ssh": _first_line(["ssh", "-V"]),
        "loadavg_at_start": os.getloadavg(),
        "tmp_fs": _first_line(["findmnt", "-n", "-o", "FSTYPE", "--target", "/tmp"]),
    }


def wait_for_quiet(max_load: float, timeout: float) -> float:
    """Wait until the 1-minute load average is at most ``max_load`` (0: do not wait), for up
    to ``timeout`` seconds. Returns the load average when it returns."""
    deadline = time.monotonic() + timeout
    load = os.getloadavg()[0]
    if max_load <= 0 or load <= max_load:
        return load
    print(f"load average {load:.2f} > {max_load}: waiting up to {timeout:.0f} s ...",
          flush=True)
    while load > max_load and time.monotonic() < deadline:
        time.sleep(10)
        load = os.getloadavg()[0]
    return load


def quiet_wait(max_load: float, timeout: float) -> dict[str, Any]:
    """``wait_for_quiet``, recorded for the result file; warns when the load stayed high."""
    before = os.getloadavg()
    t0 = time.monotonic()
    load = wait_for_quiet(max_load, timeout)
    reached = max_load <= 0 or load <= max_load
    if not reached:
        print(f"warning: load average still {load:.2f} after {timeout:.0f} s; running anyway",
              flush=True)
    return {"max_load": max_load, "timeout_s": timeout, "loadavg_before_wait": before,
            "loadavg_after_wait": os.getloadavg(),
            "waited_s": round(time.monotonic() - t0, 1), "reached": reached}


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the ``finally`` clean-ups (sshd, temp dirs) run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# ---- what was measured, and the result file ------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True,
                           text=True, check=False)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _module_digests(paths: Iterable[str]) -> dict[str, str | None]:
    """sha256 prefix of each file (a path relative to the checkout), None when missing."""
    out: dict[str, str | None] = {}
    for rel in paths:
        try:
            out[rel] = hashlib.sha256((REPO_DIR / rel).read_bytes()).hexdigest()[:16]
        except OSError:
            out[rel] = None
    return out


def source_versions(*modules: str) -> dict[str, Any]:
    """The code measured: the checkout's git commit, whether tracked files differ from it
    (``bench/results/`` aside), and a sha256 prefix of each measured module's file.
    ``modules`` are dotted names below the package (``"ingest.upload"``)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)bench/results")
    paths = [str(Path("xsbackup", *m.split(".")).with_suffix(".py")) for m in modules]
    return {"git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status),
            "modules": _module_digests(paths)}


def sources_changed(recorded: dict[str, Any]) -> list[str]:
    """The measured modules whose bytes differ now from what ``source_versions`` recorded."""
    before: dict[str, str | None] = recorded["modules"]
    return sorted(p for p, digest in _module_digests(before).items() if digest != before[p])


def run_args(ap: argparse.ArgumentParser, *, out: str, quiet_load: float,
             quiet_timeout: float) -> None:
    """The options every benchmark takes: the quiet-load wait, the seed, the result file."""
    ap.add_argument("--quiet-load", type=float, default=quiet_load,
                    help="first wait until the 1-min load average is at most this "
                         f"({quiet_load:g}; 0: no wait)")
    ap.add_argument("--quiet-timeout", type=float, default=quiet_timeout,
                    help=f"wait at most this many seconds for --quiet-load ({quiet_timeout:g})")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--out", default=out, help=f"file name under bench/results/ ({out})")


def new_result(benchmark: str, modules: Iterable[str], **machine: Any) -> dict[str, Any]:
    """A result's head: its name, the machine (plus ``machine`` facts) and the code measured."""
    return {"benchmark": benchmark, "machine": {**machine_info(), **machine},
            "xsbackup_sources": source_versions(*modules)}


def log_warnings(root: Path, last: int = 20) -> list[str]:
    """The last WARNING and ERROR lines of the xsbackup logs of state root ``root``."""
    lines: list[str] = []
    for p in sorted((root / "log").glob("*")):
        with contextlib.suppress(OSError):
            lines += [ln for ln in p.read_text(errors="replace").splitlines()
                      if " WARNING " in ln or " ERROR " in ln]
    return lines[-last:]


def finish(result: dict[str, Any], out: str,
           print_table: Callable[[dict[str, Any]], None]) -> int:
    """Close a run: the load at the end, a check that the measured code did not change
    under it, the result file, the table. Returns main's exit status."""
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    changed = sources_changed(result["xsbackup_sources"])
    result["xsbackup_sources_changed_during_run"] = changed
    if changed:
        print("warning: xsbackup sources changed during the run: " + ", ".join(changed))
    path = write_results(out, result)
    print_table(result)
    print(f"wrote {path}")
    return 0


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def write_bench_config(root: Path, extra: str = "") -> str:
    """Write the state root's ``xsbackup.toml`` for a benchmark and return its text. The
    bench's own load must never make the forced command refuse a transfer (admission), so
    ``max_load`` is out of reach; ``extra`` adds other sections."""
    toml = "[admission]\nmax_load = 1000.0\n" + (f"\n{extra}" if extra else "")
    (root / "xsbackup.toml").write_text(toml)
    return toml


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards whatever happens."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- trees -------------------------------------------------------------------------------


def _sizes(rng: random.Random, n: int, total: int) -> list[int]:
    """n log-normally varied sizes summing to exactly ``total`` (each at least 1 byte)."""
    raw = [rng.lognormvariate(0.0, 1.5) for _ in range(n)]
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    diff = total - sum(sizes)
    i = 0
    while diff != 0:  # spread the rounding remainder
        j = i % n
        step = 1 if diff > 0 else -1
        if sizes[j] + step >= 1:
            sizes[j] += step
            diff -= step
        i += 1
    return sizes


def tree_dirs(n_files: int, per_dir: int = 50, fanout: int = 8) -> list[str]:
    """Relative directory names for ``n_files`` files, nested up to three levels."""
    n_dirs = max(1, -(-n_files // per_dir))
    out = []
    for k in range(n_dirs):
        a, b, c = k % fanout, (k // fanout) % fanout, k // (fanout * fanout)
        out.append(f"d{c:03d}/e{b}/f{a}")
    return out


def make_tree(root: Path, n_files: int, total_bytes: int, seed: int = 20240601) -> dict[str, int]:
    """A deterministic tree of ``n_files`` regular files of varied sizes summing to
    ``total_bytes``, in nested directories, with fixed mtimes."""
    rng = random.Random(seed)
    sizes = _sizes(rng, n_files, total_bytes)
    dirs = tree_dirs(n_files)
    per_dir = -(-n_files // len(dirs))
    root.mkdir(parents=True, exist_ok=True)
    # One random pool, sliced at random offsets: deterministic and much faster than
    # generating every file's bytes separately.
    pool = rng.randbytes(max(sizes) * 2 + 4096)
    mtime = 1_700_000_000
    for i, size in enumerate(sizes):
        d = root / dirs[i // per_dir]
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        off = rng.randrange(0, len(pool) - size)
        p = d / f"file{i:06d}.bin"
        p.write_bytes(pool[off:off + size])
        os.utime(p, (mtime, mtime + i))
    return {"files": n_files, "bytes": total_bytes, "dirs": len(dirs)}


# ---- Canonical JSON (OLPC) corpus ------------------------------------------------------------


def _cjson_str(s: str) -> bytes:
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def cjson_encode(v: Any) -> bytes:
    """Canonical bytes: sorted keys, no whitespace, integers only, only \\" and \\\\ escapes.
    Independent of ``xsbackup.snapshots.cjson`` on purpose (the bench checks it against this)."""
    if v is None:
        return b"null"
    if v is True:
        return b"true"
    if v is False:
        return b"false"
    if isinstance(v, int):
        return str(v).encode()
    if isinstance(v, str):
        return _cjson_str(v)
    if isinstance(v, list):
        return b"[" + b",".join(cjson_encode(x) for x in v) + b"]"
    if isinstance(v, dict):
        items = sorted((k.encode(), x) for k, x in v.items())
        return b"{" + b",".join(_cjson_str(k.decode()) + b":" + cjson_encode(x)
                               for k, x in items) + b"}"
    raise TypeError(f"not canonical JSON: {type(v).__name__}")


_TITLES = ["Dibujo", "Mi cuento", 'Say "hello"', "back\\slash", "Écrire", "日本語のノート",
           "Turtle Art", "Write Activity", "Paint", "Etoys project", "Measure", "Record"]
_ACTIVITIES = ["org.laptop.AbiWordActivity", "org.laptop.Oficina", "org.laptop.Paint",
               "org.laptop.TurtleArtActivity", "org.laptop.RecordActivity",
               "org.vpri.EtoysActivity"]
_MIMES = ["text/plain", "application/vnd.oasis.opendocument.text", "image/png", "audio/ogg",
          "application/x-turtle-art", "application/x-squeak-project"]


def sugar_metadata(rng: random.Random, target: int, nested: bool = False) -> bytes:
    """One Sugar-like ``.metadata`` object in canonical bytes, about ``target`` bytes long.

    Like Sugar's, it is a flat object of strings and integers; ``buddies`` is itself
    JSON-encoded text (so it carries ``\\"`` escapes) in about a third of the objects.
    ``nested`` adds a list and an object member, which a flat-object fast path cannot take.
    """
    uid = (f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}-"
           f"{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}")
    ts = 1_200_000_000 + rng.randrange(400_000_000)
    obj: dict[str, Any] = {
        "activity": rng.choice(_ACTIVITIES),
        "activity_id": f"{rng.getrandbits(160):040x}",
        "buddies": "" if rng.random() < 0.67 else orjson.dumps(
            {f"{rng.getrandbits(64):016x}": [rng.choice(_TITLES), "#FF2B34,#005FE4"]
             for _ in range(rng.randrange(1, 4))}).decode(),
        "ctime": dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "icon-color": "#FF2B34,#005FE4",
        "keep": rng.choice([0, 1]),
        "mime_type": rng.choice(_MIMES),
        "mountpoint": "/",
        "mtime": dt.datetime.fromtimestamp(ts + 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "preview": "",
        "share-scope": "private",
        "tags": " ".join(rng.choice(["escuela", "math", "story"])
                         for _ in range(rng.randrange(3))),
        "timestamp": ts,
        "title": f"{rng.choice(_TITLES)} {rng.randrange(1000)}",
        "title_set_by_user": rng.choice(["0", "1"]),
        "uid": uid,
    }
    if nested:
        obj["tags"] = obj["tags"].split()
        obj["share"] = {"scope": "private", "with": [rng.getrandbits(20) for _ in range(3)]}
    base = len(cjson_encode(obj))
    need = max(0, target - base)
    obj["preview"] = base64.b64encode(rng.randbytes(need * 3 // 4 + 3))[:need].decode()
    return cjson_encode(obj)


# ---- loopback OpenSSH sshd -----------------------------------------------------------------


def login_user() -> str:
    """The current user (root here): sshd is run as this user and clients log in as it."""
    return pwd.getpwuid(os.getuid()).pw_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "bench") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True)
    return path


@dataclass
class Sshd:
    """One sshd on 127.0.0.1 with its own config; ``authorized_keys`` is given."""

    workdir: Path
    host_key: Path
    authorized_keys: Path
    permit_root: str = "forced-commands-only"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "sshd.log"

    def start(self) -> Sshd:
        Path("/run/sshd").mkdir(exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cfg = self.workdir / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}", f"AuthorizedKeysFile {self.authorized_keys}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", f"PermitRootLogin {self.permit_root}",
            "StrictModes no", "UsePAM no", "UseDNS no", "PrintMotd no", "LogLevel ERROR",
            "MaxStartups 50", "MaxSessions 50", "",
        ]))
        with self.log.open("wb") as log_fh:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)],
                                         stderr=log_fh, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sshd exited: {self.log.read_text()}") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sshd did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rsh(self, key: Path) -> str:
        """The ``rsync -e`` value: stock ssh client, no user config, this port, root."""
        return shlex.join(["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                           "-o", "LogLevel=ERROR", "-i", str(key), "-p", str(self.port),
                           "-l", login_user()])
