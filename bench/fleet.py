"""The fleet: ``fleet status`` over many servers, and ``fleet move-client`` of a history.

Part A, status. ``--servers`` state roots (10), each with ``--clients`` registered clients
(5) behind its own loopback sshd (one admin key, no forced command). Each run times, on
every server one after the other, ``ssh HOST xsbackup --root R status --json`` with the
stock ssh client (the "single" figures; the slowest of them is the anchor), and then
``xsbackup fleet --inventory F status --json`` end to end (start-up, fabric, all servers).
Target: fleet status at most 1.5 x the slowest single. All servers share this machine's
cores, so the fleet run also pays for running every server's ``xsbackup`` at once, which
separate hosts would not: ``sum_of_singles`` (what asking them one by one costs) is
reported with it.

Part B, move. One client with ``--snapshots`` snapshots (10) of ``--files`` files (20,000;
``--change`` of them, 2 %, rewritten between snapshots), made by real ingest (rsync into
the forced command, then the post-processor). Over ``--runs``, each move is timed with
``rsync -aH`` of the same snapshots directory from one root into a fresh directory of the
other just before it (local, no ssh: the cost floor of copying the history with its
sharing); every move goes the other way from the one before, so every move moves the
same history. With ``--before XSBACKUP`` the code before a change moves it too, in every
run (first in every other run). Target: move at most 1.3 x rsync. The move also copies
every xattr (the facts and fake-super records) and the manifests, goes through ssh,
checks the copy (the source's digests of its metadata, made while the copy runs, against
the target's; every distinct inode's content against the source's manifests), and
journals each snapshot. Beside each move, and for information only (the target stays
against the issue's anchor), ``rsync -aHXX`` of the same directory over the target's sshd
is timed too (``rsync_aHXX_ssh``): the copy with what a move must carry, through the
transport it must use. Both ends' CPU is reported too (``cpu``: the command's process
tree and the sessions it caused on both sshds).

Status also reports the CPU both sides spend (``cpu``): the fleet process's own, and
every server's sessions (the sshd listeners' reaped children: sshd, the login shell
with whatever it sources, ``xsbackup status``), and the floor they put on the fleet's
wall time when spread over every core of this one machine.

Usage: ``python bench/fleet.py [--servers 10] [--files 20000] [--runs 3]``.
Smoke run: ``python bench/fleet.py --servers 3 --files 500 --snapshots 3 --runs 1
--quiet-load 0``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    XSBACKUP,
    Sshd,
    exit_on_sigterm,
    finish,
    keygen,
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

SN = "SHB00000001"


def xsb(root: Path, *args: str) -> str:
    r = subprocess.run([XSBACKUP, "--root", str(root), *args], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"xsbackup {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def start_servers(base: Path, n: int, clients: int, admin: Path) -> list[tuple[str, Path,
                                                                                Sshd]]:
    base.mkdir(parents=True, exist_ok=True)
    host_key = keygen(base / "host_key", "host")
    keys = base / "admin_keys"
    keys.write_text(admin.with_suffix(".pub").read_text())
    out = []
    for i in range(n):
        name = f"s{i:02d}"
        root = base / name / "state"
        xsb(root, "init")
        write_bench_config(root)
        (base / name).mkdir(exist_ok=True)
        for c in range(clients):
            key = keygen(base / name / f"id{c}", f"c{c}")
            xsb(root, "clients", "add", f"SHB{i:02d}{c:06d}", "--pubkey",
                str(key.with_suffix(".pub")))
        sshd = Sshd(base / name / "sshd", host_key, keys, permit_root="prohibit-password")
        sshd.start()
        out.append((name, root, sshd))
    return out


def inventory(base: Path, servers: list[tuple[str, Path, Sshd]], admin: Path,
              command: str = XSBACKUP, name: str = "fleet.toml") -> Path:
    path = base / name
    path.write_text("".join(
        f'[[server]]\nname = "{name}"\nhost = "{login_user()}@127.0.0.1"\n'
        f'port = {sshd.port}\nroot = "{root}"\nidentity = "{admin}"\n'
        f'command = "{command}"\n\n' for name, root, sshd in servers))
    return path


def _sshd_cpu(sshds: list[Sshd]) -> float:
    """CPU seconds of every finished session of these sshds (each listener's reaped
    children: the session's sshd, the user's shell, the command)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for sshd in sshds:
        assert sshd.proc is not None
        fields = Path(f"/proc/{sshd.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / tick


def cpu_of(argv: list[str], sshds: list[Sshd]) -> tuple[float, float]:
    """(local, remote) CPU seconds of one run of ``argv``: its own process tree, and the
    sessions it caused on the loopback sshds."""
    _, local, remote = timed_cpu(argv, sshds)
    return local, remote


def timed_cpu(argv: list[str], sshds: list[Sshd]) -> tuple[float, float, float]:
    """(wall, local CPU, remote CPU) seconds of one run of ``argv``."""
    before_local = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_remote = _sshd_cpu(sshds)
    wall = run_timed(argv)
    time.sleep(0.3)  # each session's sshd is reaped by its listener
    after_local = resource.getrusage(resource.RUSAGE_CHILDREN)
    local = (after_local.ru_utime + after_local.ru_stime
             - before_local.ru_utime - before_local.ru_stime)
    return wall, local, _sshd_cpu(sshds) - before_remote


def cpu_floor(fleet: list[str], single: list[str], sshds: list[Sshd],
              runs: int) -> dict[str, Any]:
    """What the fleet run costs in CPU, on this machine's cores: its local side (Python,
    fabric, the handshakes), every server's side, and the wall-clock floor that leaves
    (all of it spread over every core); and one single status's remote side."""
    fl = [cpu_of(fleet, sshds) for _ in range(runs)]
    one = [cpu_of(single, sshds) for _ in range(runs)]
    local, remote = median([a for a, _ in fl]), median([b for _, b in fl])
    cores = os.cpu_count() or 1
    return {"cores": cores, "fleet_local_cpu": local, "fleet_remote_cpu": remote,
            "remote_cpu_per_server": remote / len(sshds),
            "single_local_cpu": median([a for a, _ in one]),
            "single_remote_cpu": median([b for _, b in one]),
            "fleet_floor_seconds": (local + remote) / cores}


def busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy since boot (/proc/stat:
    all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def machine_cpu(argv: list[str], runs: int) -> dict[str, Any]:
    """The whole machine's busy CPU over each run of ``argv`` (/proc/stat), less what
    the rest of the machine (other users) spent meanwhile, at its rate over the second
    just before the run."""
    ours, walls, background = [], [], []
    for _ in range(runs):
        b0 = busy_seconds()
        time.sleep(1.0)
        rate = busy_seconds() - b0
        b0 = busy_seconds()
        wall = run_timed(argv)
        time.sleep(0.3)  # the sessions' last processes end
        total = busy_seconds() - b0
        ours.append(total - rate * (wall + 0.3))
        walls.append(wall)
        background.append(rate)
    return {"busy_cpu": median(ours), "wall": median(walls),
            "background_cores_busy": median(background)}


def _children_cpu(argv: list[str], env: dict[str, str] | None = None, runs: int = 5
                  ) -> float:
    """Median CPU seconds of one local run of ``argv`` and its children."""
    out = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return median(out)


def session_split(root: Path, per_server: float) -> dict[str, float]:
    """One server's session CPU (``per_server``, from its sshd) split: the login shell
    (the user's shell with the environment sshd gives it, so bash reads ``~/.bashrc``),
    ``xsbackup status --json`` itself, and the rest (sshd: key exchange, login, the
    session's processes)."""
    shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    env = {"HOME": str(Path.home()), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "SSH_CLIENT": "127.0.0.1 40000 22", "SSH_CONNECTION": "127.0.0.1 40000 "
           "127.0.0.1 22", "USER": login_user(), "LOGNAME": login_user()}
    rc = _children_cpu([shell, "-c", "true"], env)
    status = _children_cpu([XSBACKUP, "--root", str(root), "status", "--json"])
    return {"login_shell": rc, "xsbackup_status": status,
            "sshd_and_rest": max(0.0, per_server - rc - status)}


def part_status(base: Path, args: argparse.Namespace, admin: Path) -> dict[str, Any]:
    servers = start_servers(base / "status", args.servers, args.clients, admin)
    try:
        inv = inventory(base / "status", servers, admin)
        fleet = [XSBACKUP, "fleet", "--inventory", str(inv), "status", "--json"]
        run_timed(fleet)  # warm: host keys, page cache
        old: list[str] = []
        if args.before:
            old = [args.before, "fleet", "--inventory", str(inventory(
                base / "status", servers, admin, args.before, "fleet-before.toml")),
                "status", "--json"]
            run_timed(old)
        olds: list[float] = []
        singles: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        fleets: list[float] = []
        slowest: list[float] = []
        sums: list[float] = []
        for _ in range(args.runs):
            this = []
            for name, root, sshd in servers:
                argv = [*sshd.rsh(admin).split(), "127.0.0.1",
                        f"{XSBACKUP} --root {root} status --json"]
                t = run_timed(argv)
                singles[name].append(t)
                this.append(t)
            slowest.append(max(this))
            sums.append(sum(this))
            fleets.append(run_timed(fleet))
            if old:
                olds.append(run_timed(old))
        doc = orjson.loads(subprocess.run(fleet, capture_output=True, check=True).stdout)
        assert doc["failed"] == 0
        assert len(doc["clients"]) == args.servers * args.clients
        _, root, sshd = servers[-1]
        single = [*sshd.rsh(admin).split(), "127.0.0.1",
                  f"{XSBACKUP} --root {root} status --json"]
        floor = cpu_floor(fleet, single, [s for _, _, s in servers], args.runs)
        floor["session_split"] = session_split(root, floor["remote_cpu_per_server"])
        floor["machine"] = {"fleet": machine_cpu(fleet, args.runs),
                            "single": machine_cpu(single, args.runs)}
        if old:
            floor["before"] = cpu_floor(old, single, [s for _, _, s in servers], args.runs)
        floor["one_core_per_server_estimate"] = (
            floor["fleet_local_cpu"] + median(slowest) - floor["single_local_cpu"])
        trivial = trivial_remote(base / "status", servers, admin, args.runs)  # moves inv
        before = {"fleet_status_before": summary(olds),
                  "ratio_before_over_slowest_single": median(olds) / median(slowest)
                  } if olds else {}
        cores = floor["cores"]
        return {"servers": args.servers, "clients_per_server": args.clients,
                "trivial_remote": trivial, "cpu": floor,
                "ratio_floor_over_slowest_single": floor["fleet_floor_seconds"]
                / median(slowest),
                "ratio_machine_floor_over_single_wall":
                    floor["machine"]["fleet"]["busy_cpu"] / cores
                    / floor["machine"]["single"]["wall"],
                "ratio_one_core_per_server_estimate":
                    floor["one_core_per_server_estimate"] / median(slowest),
                **before,
                "single": {n: summary(v) for n, v in singles.items()},
                "slowest_single": summary(slowest), "sum_of_singles": summary(sums),
                "fleet_status": summary(fleets),
                "ratio_fleet_over_slowest_single": median(fleets) / median(slowest),
                "ratio_fleet_over_sum_of_singles": median(fleets) / median(sums),
                "target": 1.5}
    finally:
        for _, _, sshd in servers:
            sshd.stop()


def trivial_remote(base: Path, servers: list[tuple[str, Path, Sshd]], admin: Path,
                   runs: int) -> dict[str, Any]:
    """Diagnostic: the same two measurements with a remote ``command`` that only prints
    a saved status document (no Python on the servers), so what remains is the fleet
    layer's own cost (start-up, fabric, ten handshakes) against one stock ssh."""
    name, root, sshd = servers[0]
    saved = base / "status.json"
    saved.write_text(xsb(root, "status", "--json"))
    fake = base / "fake-xsbackup"
    fake.write_text(f"#!/bin/sh\nexec cat {saved}\n")
    fake.chmod(0o755)
    inv = inventory(base, servers, admin).rename(base / "fleet-trivial.toml")
    inv.write_text(inv.read_text().replace(f'command = "{XSBACKUP}"', f'command = "{fake}"'))
    fleet = [XSBACKUP, "fleet", "--inventory", str(inv), "status", "--json"]
    single = [*sshd.rsh(admin).split(), "127.0.0.1", f"{fake} status --json"]
    fleets, singles = [], []
    for _ in range(runs):
        singles.append(run_timed(single))
        fleets.append(run_timed(fleet))
    return {"single": summary(singles), "fleet_status": summary(fleets),
            "ratio": median(fleets) / median(singles), "server": name}


def make_history(root: Path, src: Path, args: argparse.Namespace) -> None:
    """``--snapshots`` real backups through the forced command (a local rsh stand-in)."""
    key = keygen(root.parent / "client", "client")
    xsb(root, "clients", "add", SN, "--pubkey", str(key.with_suffix(".pub")))
    rsh = root.parent / "rsh"
    rsh.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -l) shift 2;; -*) "
                   "shift;; *) break;; esac; done\nshift\nSSH_ORIGINAL_COMMAND=\"$*\" exec "
                   f"{XSBACKUP} --root {root} ssh-command --client {SN}\n")
    rsh.chmod(0o755)
    make_tree(src, args.files, args.mb * 1_000_000, args.seed)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for n in range(args.snapshots):
        if n:
            for p in files[n::max(1, int(1 / args.change))]:
                p.write_bytes(os.urandom(min(4096, p.stat().st_size or 1)))
        run_timed(["rsync", "-e", str(rsh), "-a", "--delete", f"{src}/",
                   f"{SN}@local:documents/"])
    xsb(root, "postprocess")


def part_move(base: Path, args: argparse.Namespace, admin: Path) -> dict[str, Any]:
    servers = start_servers(base / "move", 2, 0, admin)
    journal_root = base / "move" / "orchestrator"
    xsb(journal_root, "init")
    try:
        inv = inventory(base / "move", servers, admin)
        inv_old = inventory(base / "move", servers, admin, args.before,
                            "fleet-before.toml") if args.before else None
        (_, root_a, _), (_, root_b, _) = servers
        make_history(root_a, base / "move" / "src", args)
        where = {"s00": root_a, "s01": root_b}
        on, other = "s00", "s01"
        moves: list[float] = []
        olds: list[float] = []
        copies: list[float] = []
        # CPU seconds (the command's process tree and the sessions it caused on both
        # sshds): what the machine's load does not distort
        cpus: dict[str, list[float]] = {"rsync_aH": [], "move_client": [],
                                        "move_client_before": [], "rsync_aHXX_ssh": []}
        ssh_copies: list[float] = []
        sshds = [sshd for _, _, sshd in servers]
        versions = [("move_client", XSBACKUP, inv, moves)]
        if inv_old is not None:  # the code before: in every run too, first every other run
            versions.append(("move_client_before", args.before, inv_old, olds))
        for run in range(args.runs):
            for label, command, inventory_file, walls in (versions[::-1] if run % 2
                                                          else versions):
                # The anchor beside each move: rsync -aH of the same snapshots directory.
                snaps = where[on] / "clients" / SN / "volumes" / "documents" / "snapshots"
                dest = where[other] / "rsync-copy"
                shutil.rmtree(dest, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                wall, cpu, _ = timed_cpu(["rsync", "-aH", f"{snaps}/", f"{dest}/"], [])
                copies.append(wall)
                cpus["rsync_aH"].append(cpu)
                shutil.rmtree(dest)
                # Informative, not the anchor: the same copy with what a move must
                # carry (every xattr: facts and fake-super records) over the target's sshd.
                subprocess.run(["sync"], check=True)
                target_sshd = sshds[0 if other == "s00" else 1]
                wall, cpu, remote = timed_cpu(["rsync", "-aHXX", "-e", target_sshd.rsh(admin),
                                               f"{snaps}/", f"127.0.0.1:{dest}/"], sshds)
                ssh_copies.append(wall)
                cpus["rsync_aHXX_ssh"].append(cpu + remote)
                shutil.rmtree(dest)
                xsb(where[other], "prune", "--json")  # frees the previous move's trash/
                subprocess.run(["sync"], check=True)
                wall, cpu, remote = timed_cpu([command, "--root", str(journal_root), "fleet",
                                               "--inventory", str(inventory_file),
                                               "move-client", SN, "--to", other], sshds)
                walls.append(wall)
                cpus[label].append(cpu + remote)
                on, other = other, on
        before = {"move_client_before": summary(olds),
                  "ratio_before_over_rsync": median(olds) / median(copies)} if olds else {}
        before["cpu"] = {k: summary(v) for k, v in cpus.items() if v}
        before["cpu_ratio_move_over_rsync"] = (median(cpus["move_client"])
                                               / median(cpus["rsync_aH"]))
        if olds:
            before["cpu_ratio_before_over_rsync"] = (median(cpus["move_client_before"])
                                                     / median(cpus["rsync_aH"]))
        return {**before, "snapshots": args.snapshots, "files": args.files, "mb": args.mb,
                "change": args.change, "move_client": summary(moves),
                "rsync_aH": summary(copies), "rsync_aHXX_ssh": summary(ssh_copies),
                "ratio_move_over_rsync_aHXX_ssh": median(moves) / median(ssh_copies),
                "ratio_move_over_rsync": median(moves) / median(copies), "target": 1.3}
    finally:
        for _, _, sshd in servers:
            sshd.stop()


def print_table(result: dict[str, Any]) -> None:
    s, m = result.get("status"), result.get("move")
    if s:
        print(f"status over {s['servers']} servers: fleet {s['fleet_status']['median']:.2f} s,"
              f" slowest single {s['slowest_single']['median']:.2f} s, ratio "
              f"{s['ratio_fleet_over_slowest_single']:.2f} (target <= 1.5); sum of singles "
              f"{s['sum_of_singles']['median']:.2f} s")
        c = s["cpu"]
        print(f"  CPU: fleet local {c['fleet_local_cpu']:.2f} s + remote "
              f"{c['fleet_remote_cpu']:.2f} s ({c['remote_cpu_per_server']:.3f} s a server) "
              f"over {c['cores']} cores: floor {c['fleet_floor_seconds']:.2f} s = "
              f"{s['ratio_floor_over_slowest_single']:.2f} x the slowest single")
        split = c["session_split"]
        mc = c["machine"]
        print(f"  a session: login shell {split['login_shell']:.3f} s + status "
              f"{split['xsbackup_status']:.3f} s + sshd and the rest "
              f"{split['sshd_and_rest']:.3f} s; whole machine: fleet "
              f"{mc['fleet']['busy_cpu']:.2f} s CPU (wall {mc['fleet']['wall']:.2f} s), single "
              f"{mc['single']['busy_cpu']:.2f} s CPU (wall {mc['single']['wall']:.2f} s); "
              f"floor / single {s['ratio_machine_floor_over_single_wall']:.2f}; one core a "
              f"server: {s['ratio_one_core_per_server_estimate']:.2f} (estimate)")
        if "fleet_status_before" in s:
            print(f"  before: fleet {s['fleet_status_before']['median']:.2f} s, ratio "
                  f"{s['ratio_before_over_slowest_single']:.2f}; local CPU "
                  f"{c['before']['fleet_local_cpu']:.2f} s, remote "
                  f"{c['before']['fleet_remote_cpu']:.2f} s")
        t = s["trivial_remote"]
        print(f"  with a trivial remote command: fleet {t['fleet_status']['median']:.2f} s, "
              f"one ssh {t['single']['median']:.2f} s, ratio {t['ratio']:.2f}")
    if m:
        print(f"move-client {m['snapshots']} x {m['files']} files: "
              f"{m['move_client']['median']:.2f} s, rsync -aH {m['rsync_aH']['median']:.2f} s,"
              f" ratio {m['ratio_move_over_rsync']:.2f} (target <= 1.3)")
        print(f"  informative: rsync -aHXX over the target's sshd "
              f"{m['rsync_aHXX_ssh']['median']:.2f} s, move / that "
              f"{m['ratio_move_over_rsync_aHXX_ssh']:.2f}")
        if "move_client_before" in m:
            print(f"  before: {m['move_client_before']['median']:.2f} s, ratio "
                  f"{m['ratio_before_over_rsync']:.2f}")
        c = m["cpu"]
        print(f"  CPU (both ends): move {c['move_client']['median']:.2f} s, rsync -aH "
              f"{c['rsync_aH']['median']:.2f} s, ratio {m['cpu_ratio_move_over_rsync']:.2f}"
              + (f"; before {c['move_client_before']['median']:.2f} s, ratio "
                 f"{m['cpu_ratio_before_over_rsync']:.2f}" if "move_client_before" in c
                 else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--mb", type=int, default=100, help="bytes of the tree, in MB (100)")
    ap.add_argument("--change", type=float, default=0.02)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--part", choices=("status", "move", "both"), default="both")
    ap.add_argument("--before", metavar="XSBACKUP", help="the xsbackup executable of the "
                    "code before a change (its own install): timed in the same runs, "
                    "interleaved (fleet status; a move back after each move)")
    run_args(ap, out="fleet.json", quiet_load=2.0, quiet_timeout=300)
    args = ap.parse_args()
    exit_on_sigterm()
    result = new_result("fleet", ["fleet.remote", "fleet.ops", "fleet.move"],
                        quiet=quiet_wait(args.quiet_load, args.quiet_timeout))
    with temp_dir("xsb-bench-fleet-") as base:
        admin = keygen(base / "admin", "admin")
        if args.part in ("status", "both"):
            result["status"] = part_status(base, args, admin)
        if args.part in ("move", "both"):
            result["move"] = part_move(base, args, admin)
    return finish(result, args.out, print_table)


if __name__ == "__main__":
    sys.exit(main())
