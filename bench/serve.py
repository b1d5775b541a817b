"""``xsbackup serve``: embedded SSH upload throughput against OpenSSH, and the availability
endpoint under concurrent load.

Part A, upload. One state root; ``xsbackup --root R serve`` runs on loopback ports, and a
stock OpenSSH ``sshd`` (own config and host key, ``AuthorizedKeysFile R/ssh/authorized_keys``
as ``xsbackup keys`` generates it, ``PermitRootLogin forced-commands-only``) runs beside
it, so both paths end in the same forced command ``xsbackup ssh-command --client SN``
and the same ``rsync --server``. Two clients, one key each: ``SN_EMB`` logs in to the
embedded server under its serial, ``SN_OSSH`` logs in to sshd as root. Each timed run is
a full upload of a generated tree (``--files`` files of random bytes, ``--mb`` MiB in all,
fixed seed) with ``rsync -a SRC/ HOST:documents/`` through the same ``ssh`` client
options and the same cipher (``--cipher``). Before every run the bench waits until the
serve process's post-processor has promoted the previous upload, deletes the client's
volume directory (so nothing can be linked against and the whole tree moves again) and
calls ``sync``. Runs are interleaved round-robin, the first case rotating. Besides wall
time the bench records the CPU seconds the server side spent (the serve process, or the
sshd listener, each including its reaped children: forced command and ``rsync
--server``) and the client side (``rsync`` + ``ssh``).

Part B, availability. ``GET /backup/1/available/<SN>`` against the serve process's HTTP
port (waitress, ``http.threads`` workers) with ``--connections`` keep-alive connections
for ``--duration`` seconds (``--http-runs`` runs per case, interleaved; medians), by
``wrk`` (C, event loop; a Lua script picks the path and prints the summary as JSON) or,
if ``wrk`` is missing or ``--loadgen asyncio``, by an asyncio HTTP/1.1 client in this
process. The configuration sets
``availability.window_count = new_per_window = 1000000`` (so every answer is a 200) and
``admission.max_load = 1000`` (so the bench's own load on a two-core machine never turns
answers into 503s). Two cases: one fixed serial (after its first 200 every request is
the reservation fast path) and ``--serials`` registered serials in rotation (each one's
first request takes the grant path: window count over the ``admissions/`` directory and
a new grant file; then reservations). Before each case one sequential keep-alive pass
over its serials is timed separately (``prime``): for the rotating case that is
``--serials`` requests on the grant path.

Usage: ``python bench/serve.py [--mb 1024] [--runs 3] [--duration 10]``.
Smoke run: ``python bench/serve.py --mb 64 --runs 1 --duration 2 --quiet-load 0``.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
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
    free_port,
    keygen,
    login_user,
    machine_info,
    median,
    run_timed,
    source_versions,
    summary,
    temp_dir,
    wait_for_quiet,
    write_results,
)

SN_EMB = "SHF00SERVEEMB"
SN_OSSH = "SHF00SERVEOSSH"
HTTP_SN_PREFIX = "SHF00HTTP"
VOLUME = "documents"
TARGETS = {"upload_ratio_embedded_over_openssh": 0.80, "http_requests_per_s": 3000.0,
           "http_p99_ms": 50.0}
WRK_MARK = "WRKJSON "


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XSBACKUP_")}


def _xs(root: Path, *args: str) -> str:
    r = subprocess.run([XSBACKUP, "--root", str(root), *args], capture_output=True, text=True,
                       env=_env(), check=False)
    if r.returncode != 0:
        raise RuntimeError(f"xsbackup {shlex.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


# ---- the tree ----------------------------------------------------------------------------


def make_random_tree(root: Path, n_files: int, total_bytes: int, seed: int) -> dict[str, Any]:
    """``n_files`` files of random (incompressible) bytes summing to ``total_bytes``."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    base, extra = divmod(total_bytes, n_files)
    mtime = 1_700_000_000
    for i in range(n_files):
        p = root / f"blob{i:04d}.bin"
        p.write_bytes(rng.randbytes(base + (1 if i < extra else 0)))
        os.utime(p, (mtime, mtime + i))
    return {"files": n_files, "bytes": total_bytes, "file_bytes": base}


# ---- the serve process -------------------------------------------------------------------


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
                self.proc.send_signal(signal.SIGTERM)
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---- Part A: uploads -----------------------------------------------------------------------


def ssh_argv(key: Path, port: int, user: str, cipher: str, mac: str) -> list[str]:
    argv = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-c", cipher]
    if mac:
        argv += ["-m", mac]
    return [*argv, "-i", str(key), "-p", str(port), "-l", user]


class UploadCase:
    def __init__(self, name: str, serial: str, rsh: list[str], server_pid: int,
                 root: Path, src: Path) -> None:
        from xsbackup.store import Store

        self.name, self.serial, self.rsh = name, serial, rsh
        self.server_pid = server_pid
        self.store = Store(root)
        self.src = src
        self.checks: list[dict[str, Any]] = []

    def negotiated(self) -> dict[str, str]:
        """``ssh -v HOST true`` (the forced command answers ``true`` with 0): the key
        exchange, host key, cipher and MAC the client logs, and the server's version."""
        i = self.rsh.index("LogLevel=ERROR")
        rsh = self.rsh[:i - 1] + self.rsh[i + 1:]
        argv = [rsh[0], "-v", *rsh[1:], "127.0.0.1", "true"]
        r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: ssh true exited {r.returncode}: "
                               f"{r.stderr[-2000:]}")
        out: dict[str, str] = {}
        for ln in r.stderr.splitlines():
            for key, marker in (("kex", "kex: algorithm: "),
                                ("host_key", "kex: host key algorithm: "),
                                ("client_to_server", "kex: client->server cipher: ")):
                if marker in ln and key not in out:
                    out[key] = ln.split(marker, 1)[1].strip()
            if "Remote protocol version" in ln and "server" not in out:
                out["server"] = ln.split("remote software version", 1)[-1].strip()
        return out

    def _queued(self) -> list[str]:
        return [n for n in os.listdir(self.store.queue_dir) if f".{self.serial}." in n]

    def wait_promoted(self, timeout: float = 300) -> float:
        """Wait until the serve process's post-processor has taken this client's queue
        entries; returns the seconds waited."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        vol = self.store.volume_dir(self.serial, VOLUME)
        while self._queued() or ((vol / "incoming").is_dir() and os.listdir(vol / "incoming")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: upload not post-processed in {timeout:g} s")
            time.sleep(0.05)
        return time.perf_counter() - t0

    def reset(self) -> None:
        """Fresh volume: nothing to link against, the whole tree moves again."""
        self.wait_promoted()
        shutil.rmtree(self.store.volume_dir(self.serial, VOLUME), ignore_errors=True)
        os.sync()

    def run(self) -> dict[str, float]:
        argv = ["rsync", "-a", "-e", shlex.join(self.rsh), f"{self.src}/",
                f"127.0.0.1:{VOLUME}/"]
        srv0, cli0 = cpu_seconds(self.server_pid), children_cpu()
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        wall = time.perf_counter() - t0
        cli1 = children_cpu()
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: {shlex.join(argv)} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
        time.sleep(0.2)  # let sshd reap its per-connection processes
        srv1 = cpu_seconds(self.server_pid)
        return {"seconds": wall, "server_cpu_s": srv1 - srv0, "client_cpu_s": cli1 - cli0}

    def check(self, expect_files: int, expect_bytes: int) -> dict[str, Any]:
        """After promotion: the latest snapshot holds the whole tree."""
        wait = self.wait_promoted()
        sid = self.store.latest_id(self.serial, VOLUME)
        files = size = 0
        if sid is not None:
            snap = self.store.snapshots_dir(self.serial, VOLUME) / sid
            for p in snap.iterdir():
                if p.is_file():
                    files += 1
                    size += p.stat().st_size
        ok = files == expect_files and size == expect_bytes
        out = {"snapshot": sid, "files": files, "bytes": size, "complete": ok,
               "postprocess_wait_s": wait}
        self.checks.append(out)
        if not ok:
            raise RuntimeError(f"{self.name}: snapshot {sid} has {files} files / {size} bytes, "
                               f"expected {expect_files} / {expect_bytes}")
        return out


def ssh_true_costs(cases: list[UploadCase], runs: int) -> dict[str, Any]:
    """``ssh HOST true`` end to end (connection, key exchange, authentication and the
    forced command answering ``true``): the fixed cost inside every upload's wall time."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for i in range(runs + 1):
        for c in cases:
            t = run_timed([*c.rsh, "127.0.0.1", "true"])
            if i:  # the first round is a warm-up
                times[c.name].append(t)
    return {k: {**summary(v), "timings": v} for k, v in times.items()}


def upload_bench(cases: list[UploadCase], tree: dict[str, Any], runs: int,
                 warmup: int, ssh_true: dict[str, Any] | None = None) -> dict[str, Any]:
    nbytes = int(tree["bytes"])
    for i in range(warmup):
        for c in cases[i % len(cases):] + cases[:i % len(cases)]:
            c.reset()
            t = c.run()
            c.check(tree["files"], nbytes)
            print(f"warm-up {c.name}: {t['seconds']:.2f} s", flush=True)
    raw: dict[str, list[dict[str, float]]] = {c.name: [] for c in cases}
    loads: list[float] = []
    for i in range(runs):
        order = cases[i % len(cases):] + cases[:i % len(cases)]
        for c in order:
            c.reset()
            t = c.run()
            c.check(tree["files"], nbytes)
            t["mib_per_s"] = nbytes / 2**20 / t["seconds"]
            raw[c.name].append(t)
        loads.append(os.getloadavg()[0])
        print(f"upload run {i + 1}/{runs}: " + "  ".join(
            f"{c.name} {raw[c.name][-1]['mib_per_s']:.1f} MiB/s "
            f"({raw[c.name][-1]['seconds']:.2f} s)" for c in order), flush=True)
    out: dict[str, Any] = {"cases": {}, "loadavg_1min_after_each_round": loads}
    for c in cases:
        rs = raw[c.name]
        out["cases"][c.name] = {
            "mib_per_s": {**summary([r["mib_per_s"] for r in rs]),
                          "runs": [r["mib_per_s"] for r in rs]},
            "seconds": {**summary([r["seconds"] for r in rs]), "runs": [r["seconds"] for r in rs]},
            "server_cpu_s": {**summary([r["server_cpu_s"] for r in rs]),
                             "runs": [r["server_cpu_s"] for r in rs]},
            "client_cpu_s": {**summary([r["client_cpu_s"] for r in rs]),
                             "runs": [r["client_cpu_s"] for r in rs]},
            "checks": c.checks[-runs:],
            "ssh_command": shlex.join(c.rsh),
        }
    if ssh_true:
        for c in cases:
            fixed = ssh_true[c.name]["median"]
            xs = [nbytes / 2**20 / max(1e-9, r["seconds"] - fixed) for r in raw[c.name]]
            out["cases"][c.name]["mib_per_s_excluding_ssh_true"] = {**summary(xs), "runs": xs}
        out["ratio_embedded_over_openssh_excluding_ssh_true"] = (
            out["cases"]["embedded"]["mib_per_s_excluding_ssh_true"]["median"]
            / out["cases"]["openssh"]["mib_per_s_excluding_ssh_true"]["median"])
    emb = out["cases"]["embedded"]["mib_per_s"]["median"]
    oss = out["cases"]["openssh"]["mib_per_s"]["median"]
    out["ratio_embedded_over_openssh"] = emb / oss
    out["server_cpu_ratio_embedded_over_openssh"] = (
        out["cases"]["embedded"]["server_cpu_s"]["median"]
        / out["cases"]["openssh"]["server_cpu_s"]["median"])
    return out


# ---- Part B: availability under load --------------------------------------------------------


def register_http_serials(root: Path, n: int) -> list[str]:
    from xsbackup.clients.registry import Registry
    from xsbackup.store import Store

    reg = Registry(Store(root))
    serials = [f"{HTTP_SN_PREFIX}{i:05d}" for i in range(n)]
    for sn in serials:
        reg.add(sn, None, nickname=f"bench {sn}")
    return serials


def prime(port: int, paths: list[str]) -> dict[str, Any]:
    """One sequential keep-alive pass over ``paths``: status counts and latencies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat: list[float] = []
    status: dict[str, int] = {}
    try:
        for p in paths:
            t0 = time.perf_counter()
            conn.request("GET", p)
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - t0)
            status[str(resp.status)] = status.get(str(resp.status), 0) + 1
    finally:
        conn.close()
    lat.sort()
    return {"requests": len(paths), "status": status,
            "latency_ms": {"p50": 1e3 * lat[len(lat) // 2],
                           "p99": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                           "max": 1e3 * lat[-1]}}


_WRK_LUA = """
local paths = {%(paths)s}
local n = #paths
local counter = 0
local next_id = 0
setup = function(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
init = function(args)
  counter = (tid or 0) * 97
end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% n) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d},' ..
    '"latency_us":{"min":%%d,"max":%%d,"mean":%%.1f,"stdev":%%.1f,' ..
    '"p50":%%d,"p90":%%d,"p99":%%d,"p999":%%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def wrk_version(wrk: str) -> str:
    r = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    return ((r.stdout + r.stderr).strip().splitlines() or ["?"])[0]


def run_wrk(wrk: str, port: int, paths: list[str], connections: int, threads: int,
            duration: float, script: Path) -> dict[str, Any]:
    script.write_text(_WRK_LUA % {"paths": ",".join(json.dumps(p) for p in paths),
                                  "mark": WRK_MARK})
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}{paths[0]}"]
    r = subprocess.run(argv, capture_output=True, text=True, check=False,
                       timeout=duration + 120)
    found = [ln[len(WRK_MARK):] for ln in r.stdout.splitlines() if ln.startswith(WRK_MARK)]
    if r.returncode != 0 or not found:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stdout[-2000:]} {r.stderr[-2000:]}")
    raw = json.loads(found[-1])
    secs = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    lat = raw["latency_us"]
    return {"requests": raw["requests"], "seconds": secs,
            "requests_per_s": raw["requests"] / secs, "errors": errors,
            "errors_detail": raw["errors"],
            "latency_ms": {k: v / 1e3 for k, v in lat.items()},
            "command": shlex.join(argv), "wrk_output": r.stdout.strip()[-1500:]}


async def _aio_load(port: int, paths: list[str], connections: int,
                    duration: float) -> dict[str, Any]:
    lat: list[float] = []
    status: dict[str, int] = {}
    errors = {"connect": 0, "read": 0, "status": 0}
    t_end = time.perf_counter() + duration

    async def worker(k: int) -> None:
        i = k * 97
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.perf_counter() < t_end:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
            assert reader is not None
            i += 1
            req = (f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
            t0 = time.perf_counter()
            try:
                writer.write(req.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                code = int(head.split(b" ", 2)[1])
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if m and int(m.group(1)):
                    await reader.readexactly(int(m.group(1)))
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors["read"] += 1
                writer.close()
                writer = None
                continue
            lat.append(time.perf_counter() - t0)
            status[str(code)] = status.get(str(code), 0) + 1
            if not 200 <= code < 400:
                errors["status"] += 1
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    secs = time.perf_counter() - t0
    lat.sort()

    def pct(q: float) -> float:
        return 1e3 * lat[min(len(lat) - 1, int(len(lat) * q / 100))] if lat else float("nan")

    return {"requests": len(lat), "seconds": secs, "requests_per_s": len(lat) / secs,
            "errors": sum(errors.values()), "errors_detail": errors, "status": status,
            "latency_ms": {"min": 1e3 * lat[0] if lat else float("nan"), "p50": pct(50),
                           "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
                           "max": 1e3 * lat[-1] if lat else float("nan"),
                           "mean": 1e3 * sum(lat) / len(lat) if lat else float("nan")}}


def _one_load(loadgen: str, wrk: str | None, port: int, paths: list[str], connections: int,
              threads: int, duration: float, script: Path) -> dict[str, Any]:
    if loadgen == "wrk":
        assert wrk is not None
        return run_wrk(wrk, port, paths, connections, threads, duration, script)
    return asyncio.run(_aio_load(port, paths, connections, duration))


def http_bench(loadgen: str, wrk: str | None, port: int, cases: dict[str, list[str]],
               connections: int, threads: int, duration: float, runs: int, serve_pid: int,
               tmp: Path) -> dict[str, Any]:
    """Each case: one timed sequential pass (``prime``), one untimed 1 s warm-up of the
    load, then ``runs`` timed runs of ``duration`` seconds, interleaved round-robin over
    the cases (the first case rotating)."""
    names = list(cases)
    paths = {n: [f"/backup/1/available/{sn}" for sn in cases[n]] for n in names}
    out: dict[str, Any] = {}
    for n in names:
        out[n] = {"serials": len(cases[n]), "prime": prime(port, paths[n]), "runs": []}
        _one_load(loadgen, wrk, port, paths[n], connections, threads, 1, tmp / f"{n}.lua")
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            os.sync()
            cpu0 = cpu_seconds(serve_pid)
            r = _one_load(loadgen, wrk, port, paths[n], connections, threads, duration,
                          tmp / f"{n}.lua")
            r["serve_cpu_s"] = cpu_seconds(serve_pid) - cpu0
            r["serve_cpu_fraction_of_one_core"] = r["serve_cpu_s"] / r["seconds"]
            r["loadavg_1min_after"] = os.getloadavg()[0]
            out[n]["runs"].append(r)
            print(f"availability {n} run {i + 1}/{runs}: {r['requests_per_s']:.0f} req/s, "
                  f"p50 {r['latency_ms']['p50']:.2f} ms, p99 {r['latency_ms']['p99']:.2f} ms, "
                  f"{r['errors']} errors", flush=True)
    for n in names:
        res = out[n]
        rs = res["runs"]
        res["requests_per_s"] = median([r["requests_per_s"] for r in rs])
        res["latency_ms"] = {k: median([r["latency_ms"][k] for r in rs])
                             for k in ("p50", "p90", "p99", "max")}
        res["latency_ms"]["p99_worst_run"] = max(r["latency_ms"]["p99"] for r in rs)
        res["errors"] = sum(r["errors"] for r in rs)
        res["requests"] = sum(r["requests"] for r in rs)
        res["serve_cpu_fraction_of_one_core"] = median(
            [r["serve_cpu_fraction_of_one_core"] for r in rs])
        res["after"] = prime(port, paths[n][:20])["status"]  # still 200s afterwards?
        res["meets_targets"] = {
            "requests_per_s": res["requests_per_s"] >= TARGETS["http_requests_per_s"],
            "p99": res["latency_ms"]["p99"] < TARGETS["http_p99_ms"],
            "no_errors": res["errors"] == 0,
        }
    return out


# ---- main ----------------------------------------------------------------------------------


def xsbackup_log_lines(root: Path, limit: int = 20) -> list[str]:
    lines: list[str] = []
    for p in sorted((root / "log").glob("*")):
        with contextlib.suppress(OSError):
            lines += [ln for ln in p.read_text(errors="replace").splitlines()
                      if " WARNING " in ln or " ERROR " in ln]
    return lines[-limit:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=1024, help="tree size in MiB (1024)")
    ap.add_argument("--files", type=int, default=64, help="files in the tree (64)")
    ap.add_argument("--runs", type=int, default=3, help="timed uploads per case (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed uploads per case (1)")
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com",
                    help="ssh -c for both servers (aes128-gcm@openssh.com)")
    ap.add_argument("--mac", default="", help="ssh -m for both servers (default: negotiated)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per HTTP case (10)")
    ap.add_argument("--http-runs", type=int, default=3,
                    help="timed runs per HTTP case, interleaved (3)")
    ap.add_argument("--connections", type=int, default=64, help="HTTP connections (64)")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    ap.add_argument("--serials", type=int, default=500,
                    help="registered serials for the rotating HTTP case (500)")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto",
                    help="HTTP load generator (auto: wrk when installed)")
    ap.add_argument("--no-upload", dest="upload", action="store_false")
    ap.add_argument("--no-http", dest="http", action="store_false")
    ap.add_argument("--quiet-load", type=float, default=1.0,
                    help="first wait until the 1-min load average is below this (1.0; 0: no)")
    ap.add_argument("--quiet-timeout", type=float, default=300,
                    help="wait at most this many seconds for --quiet-load (300)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--out", default="serve.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    exit_on_sigterm()

    wrk = shutil.which("wrk")
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if wrk else "asyncio"
    if loadgen == "wrk" and not wrk:
        ap.error("wrk is not installed (apt-get install wrk), or use --loadgen asyncio")

    load_before_wait = os.getloadavg()[0]
    load_after_wait = wait_for_quiet(args.quiet_load, args.quiet_timeout)
    total_bytes = int(args.mb * 2**20)
    import paramiko

    result: dict[str, Any] = {
        "benchmark": "serve",
        "machine": {**machine_info(), "loadavg_1min_before_quiet_wait": load_before_wait,
                    "loadavg_1min_after_quiet_wait": load_after_wait,
                    "paramiko": paramiko.__version__,
                    "wrk": wrk_version(wrk) if wrk else None},
        "xsbackup_sources": source_versions(
            "server/service", "server/sshserver", "web/app", "web/availability", "web/base",
            "ingest/admission", "clients/registry", "ingest/dispatch", "ingest/upload",
            "snapshots/postprocess"),
        "config": {"mb": args.mb, "bytes": total_bytes, "files": args.files,
                   "runs": args.runs, "warmup": args.warmup, "cipher": args.cipher,
                   "mac": args.mac or "negotiated", "duration_s": args.duration,
                   "http_runs": args.http_runs,
                   "connections": args.connections, "wrk_threads": args.wrk_threads,
                   "serials": args.serials, "loadgen": loadgen, "seed": args.seed,
                   "quiet_load": args.quiet_load, "quiet_timeout": args.quiet_timeout},
        "targets": dict(TARGETS),
    }
    with temp_dir("xsbench-serve-") as tmp, contextlib.ExitStack() as stack:
        root = tmp / "xsroot"
        _xs(root, "init")
        toml = ("[availability]\nwindow_count = 1000000\nnew_per_window = 1000000\n\n"
                "[admission]\nmax_load = 1000.0\n")
        (root / "xsbackup.toml").write_text(toml)
        result["config"]["xsbackup_toml"] = toml
        keys = tmp / "keys"
        keys.mkdir()
        key_emb = keygen(keys / "id_emb", SN_EMB)
        key_ossh = keygen(keys / "id_ossh", SN_OSSH)
        host_key = keygen(keys / "ssh_host_ed25519_key", "host")
        _xs(root, "clients", "add", SN_EMB, "--pubkey", f"{key_emb}.pub")
        _xs(root, "clients", "add", SN_OSSH, "--pubkey", f"{key_ossh}.pub")
        serials = register_http_serials(root, args.serials) if args.http else []
        ak = Path(_xs(root, "keys").strip())

        served = stack.enter_context(Served(root, free_port(), free_port()))
        assert served.proc is not None
        serve_pid = served.proc.pid
        result["serve_banner"] = served.banner
        print(served.banner, flush=True)

        if args.http:
            os.sync()
            cases = {"fixed_serial": serials[:1], "rotating_serials": serials}
            result["http"] = http_bench(loadgen, wrk, served.http_port, cases, args.connections,
                                        args.wrk_threads, args.duration, args.http_runs,
                                        serve_pid, tmp)

        if args.upload:
            print(f"generating {args.files} files, {total_bytes / 2**20:.0f} MiB ...",
                  flush=True)
            src = tmp / "src"
            tree = make_random_tree(src, args.files, total_bytes, args.seed)
            result["tree"] = tree
            sshd = stack.enter_context(Sshd(tmp / "sshd", host_key, ak))
            assert sshd.proc is not None
            cases_up = [
                UploadCase("embedded", SN_EMB,
                           ssh_argv(key_emb, served.ssh_port, SN_EMB, args.cipher, args.mac),
                           serve_pid, root, src),
                UploadCase("openssh", SN_OSSH,
                           ssh_argv(key_ossh, sshd.port, login_user(), args.cipher, args.mac),
                           sshd.proc.pid, root, src),
            ]
            result["negotiated"] = {c.name: c.negotiated() for c in cases_up}
            result["ssh_true"] = ssh_true_costs(cases_up, 5)
            result["client_command"] = "rsync -a -e SSH SRC/ 127.0.0.1:documents/"
            result["upload"] = up = upload_bench(cases_up, tree, args.runs, args.warmup,
                                                result["ssh_true"])
            up["meets_target"] = (up["ratio_embedded_over_openssh"]
                                  >= TARGETS["upload_ratio_embedded_over_openssh"])
            text = "\n".join(ln for ln in sshd.log.read_text(errors="replace").splitlines()
                             if "kex_exchange_identification" not in ln).strip()
            if text:
                result["sshd_log_tail"] = text[-2000:]

        rc = served.stop()
        result["serve_exit_code"] = rc
        err = served.stderr_path.read_text(errors="replace").strip()
        if err:
            # Whatever reaches stderr bypassed xsbackup's log (under systemd: the journal).
            lines = err.splitlines()
            kinds: dict[str, int] = {}
            for ln in lines:
                k = re.sub(r"\d+", "N", ln)[:120]
                kinds[k] = kinds.get(k, 0) + 1
            result["serve_stderr"] = {"lines": len(lines),
                                      "by_pattern": dict(sorted(kinds.items(),
                                                                key=lambda kv: -kv[1])[:10]),
                                      "tail": err[-1000:]}
        result["xsbackup_log_warnings"] = xsbackup_log_lines(root)

    result["machine"]["loadavg_at_end"] = os.getloadavg()
    if "http" in result:
        result["targets_met"] = {f"http_{k}_{m}": v for k, r in result["http"].items()
                                 for m, v in r["meets_targets"].items()}
    if "upload" in result:
        result.setdefault("targets_met", {})["upload_ratio"] = result["upload"]["meets_target"]
    path = write_results(args.out, result)
    print_table(result)
    print(f"wrote {path}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    cfg = r["config"]
    if "upload" in r:
        up = r["upload"]
        print(f"\nfull upload of {cfg['files']} files, {cfg['bytes'] / 2**20:.0f} MiB, "
              f"cipher {cfg['cipher']} ({cfg['runs']} runs, median)")
        print(f"{'case':<10} {'MiB/s':>8} {'min':>8} {'max':>8} {'seconds':>8} "
              f"{'server CPU s':>13} {'client CPU s':>13}")
        for name, c in up["cases"].items():
            m = c["mib_per_s"]
            print(f"{name:<10} {m['median']:>8.1f} {m['min']:>8.1f} {m['max']:>8.1f} "
                  f"{c['seconds']['median']:>8.2f} {c['server_cpu_s']['median']:>13.2f} "
                  f"{c['client_cpu_s']['median']:>13.2f}")
        print(f"embedded/openssh throughput {up['ratio_embedded_over_openssh']:.2f} "
              f"(target >= {TARGETS['upload_ratio_embedded_over_openssh']:.2f}: "
              f"{'met' if up['meets_target'] else 'NOT met'}); server CPU "
              f"{up['server_cpu_ratio_embedded_over_openssh']:.2f}x")
        for k, v in r.get("negotiated", {}).items():
            print(f"  {k}: {v.get('server', '?')}; kex {v.get('kex', '?')}; "
                  f"{v.get('client_to_server', '?')}; "
                  f"ssh HOST true {r['ssh_true'][k]['median'] * 1e3:.0f} ms")
        print("excluding the ssh HOST true time from each run: embedded/openssh "
              f"{up['ratio_embedded_over_openssh_excluding_ssh_true']:.2f}")
    if "http" in r:
        print(f"\nGET /backup/1/available/<SN>, {cfg['connections']} connections, "
              f"{cfg['http_runs']} x {cfg['duration_s']:g} s, {cfg['loadgen']} (median)")
        print(f"{'case':<17} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'worst p99':>9} "
              f"{'errors':>7} {'serve CPU':>9} {'prime p50/p99 ms':>17}")
        for name, c in r["http"].items():
            lat = c["latency_ms"]
            pr = c["prime"]["latency_ms"]
            print(f"{name:<17} {c['requests_per_s']:>8.0f} {lat['p50']:>8.2f} "
                  f"{lat['p99']:>8.2f} {lat['p99_worst_run']:>9.2f} {c['errors']:>7} "
                  f"{c['serve_cpu_fraction_of_one_core']:>8.2f}c "
                  f"{pr['p50']:>8.2f}/{pr['p99']:<8.2f}")
        print(f"targets: >= {TARGETS['http_requests_per_s']:.0f} req/s, "
              f"p99 < {TARGETS['http_p99_ms']:.0f} ms")
    if r.get("serve_stderr"):
        print(f"serve stderr: {r['serve_stderr']['lines']} lines; most common: "
              + "; ".join(f"{k!r} x{v}" for k, v in
                          list(r["serve_stderr"]["by_pattern"].items())[:2]))
    m = r["machine"]
    print(f"load average: {m['loadavg_1min_after_quiet_wait']:.2f} at start, "
          f"{m['loadavg_at_end'][0]:.2f} at end")


if __name__ == "__main__":
    sys.exit(main())
