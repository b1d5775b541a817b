"""The cost of one OLPC registration as the registry grows: the 1st against the 300th.

Each round starts from a fresh state root and makes ``--count`` (300) registrations of new
serials, one after another, by calling ``xsbackup.clients.registration.register`` in this
process exactly as the XML-RPC handler does (registry lock, record, key index,
``authorized_keys``, fsyncs included; no HTTP). The policy is ``new_serial = "open"`` and
the new-serial rate limits are off (0), so every call creates an active client and rewrites
what a real one does. Keys are fresh random ``ssh-ed25519`` blobs (a valid header and 32
random bytes: parsing is what registration checks, nothing signs with them). Every call
must answer ``OK``.

Reported, for wall time and for the CPU time of this process (user + system, so the
reads of every record count but other processes' load and fsync waits do not): the
per-call times of every round, and ``first``/``last``: the median over rounds of the
median of the first and last ``--window`` (30) calls of a round, and their ratio
``last / first``. A registration whose cost does not grow with the registry has a ratio
near 1. On a shared machine the wall times swing with the fsyncs; the CPU ratio is the
steadier figure. The base commit's ``register`` had no ``remote`` argument; the bench passes
it only where the function takes it, so the same script measures both.

Usage: ``python bench/registration.py [--count 300] [--rounds 3]``.
Smoke run: ``python bench/registration.py --count 30 --window 5 --rounds 1 --quiet-load 0``.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    exit_on_sigterm,
    machine_info,
    median,
    source_versions,
    summary,
    temp_dir,
    wait_for_quiet,
    write_results,
)
from xsbackup import config
from xsbackup.clients import registration
from xsbackup.clients.registry import Registry
from xsbackup.store import Store, init_root

LIMITS = ("registration.max_new_per_hour", "registration.max_new_per_address_per_hour")


def ed25519_blob() -> str:
    raw = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return base64.b64encode(raw).decode()


def one_round(workdir: Path, count: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each of ``count`` registrations into a fresh state root."""
    root = workdir / "state"
    init_root(root)
    overrides = {name: 0 for name in LIMITS if name in config.SCHEMA}
    settings = config.load(root, environ={}, overrides=overrides)
    registry = Registry(Store(settings.root))
    takes_remote = "remote" in inspect.signature(registration.register).parameters
    wall, cpu = [], []
    for i in range(count):
        args: list[Any] = [settings, registry, f"SHF{i:08d}", f"XO {i}", f"uuid-{i}",
                           ed25519_blob(), "schoolserver"]
        if takes_remote:
            args.append(f"10.0.{i // 250}.{i % 250 + 1}")
        t0, c0 = time.perf_counter(), time.process_time()
        reply = registration.register(*args)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
        if reply["success"] != "OK":
            raise RuntimeError(f"registration {i} answered {reply}")
    keys = (root / "ssh" / "authorized_keys").read_text()
    if keys.count("restrict,command=") != count:
        raise RuntimeError("authorized_keys does not hold every registered key")
    return wall, cpu


def first_last(rounds: list[list[float]], window: int) -> dict[str, Any]:
    first = median([median(t[:window]) for t in rounds])
    last = median([median(t[-window:]) for t in rounds])
    return {"first_ms": first * 1000, "last_ms": last * 1000, "ratio_last_over_first":
            last / first, "all_calls_ms": summary([x * 1000 for t in rounds for x in t]),
            "rounds_ms": [[round(x * 1000, 3) for x in t] for t in rounds]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--quiet-load", type=float, default=1.5)
    p.add_argument("--quiet-timeout", type=float, default=300)
    p.add_argument("--out", default="registration.json")
    args = p.parse_args()
    exit_on_sigterm()
    info = machine_info()
    load = wait_for_quiet(args.quiet_load, args.quiet_timeout)
    walls: list[list[float]] = []
    cpus: list[list[float]] = []
    for r in range(args.rounds):
        with temp_dir("xsb-bench-reg-") as d:
            wall, cpu = one_round(d, args.count)
        walls.append(wall)
        cpus.append(cpu)
        print(f"round {r + 1}: wall first {median(wall[:args.window]) * 1000:.2f} ms, last "
              f"{median(wall[-args.window:]) * 1000:.2f} ms; cpu first "
              f"{median(cpu[:args.window]) * 1000:.2f} ms, last "
              f"{median(cpu[-args.window:]) * 1000:.2f} ms", flush=True)
    info["loadavg_at_end"] = os.getloadavg()
    result = {
        "benchmark": "registration",
        "machine": info,
        "load_1min_when_started": load,
        "config": {"count": args.count, "rounds": args.rounds, "window": args.window},
        "sources": source_versions("clients/registration", "clients/registry",
                                   "clients/keys"),
        "wall": first_last(walls, args.window),
        "cpu": first_last(cpus, args.window),
    }
    path = write_results(args.out, result)
    for kind in ("wall", "cpu"):
        f = result[kind]
        print(f"{kind}: first {args.window}: {f['first_ms']:.2f} ms, last {args.window}: "
              f"{f['last_ms']:.2f} ms, ratio {f['ratio_last_over_first']:.2f}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
