"""``fleet move-client``: a client's whole history moved from one fleet server to another.

The target pulls from the source with rsync over SSH (the source's inventory ``host``,
``port`` and ``identity``, which must work from the target too; the target keeps the
peers' host keys in ``<root>/fleet-known_hosts``). The steps, each safe to repeat:

1. ``copying``: per volume, the snapshots not moved yet, oldest first, in one rsync
   stream into their final place on the target (``rsync -aHXX --numeric-ids``: every
   xattr, fake-super records too) with the last one already moved, so ``-H`` keeps what
   they share with it and with each other; and their manifests. While it copies, the
   source digests those snapshots' metadata (``fleet tree-digest``: entries, modes,
   owners, sizes, mtimes, links, xattrs); then ``fleet verify-copy`` walks the copy once
   (``fleet.verify``): the same digests must come out, and every file's content must
   match the source's manifest, each distinct inode read once; a snapshot without a
   manifest is compared byte by byte (``rsync -c -n -i``). Only then
   does the journal record each. The client's record (``client.json``) waits
   on the target as ``client.json.moving``: not registered there.
2. ``retiring``: one script on the target, through its SSH connection to the source:
   the source disables the client (``clients disable``: its keys leave
   ``authorized_keys``, its record stays, so it is still registered there) and lists
   what it holds in the same session. Whatever it stored since is copied and verified
   too, and the script runs again; a transfer still waiting for the source's
   post-processor stops the move (run it again later; the client stays registered on
   the source meanwhile). With nothing new, the same script switches: the source's
   ``clients remove`` (the same command sends the source's copy to its ``trash/``,
   which its next prune frees), and at once the staged record's rename into
   ``client.json``; ``latest`` is set and ``authorized_keys`` rebuilt there: the
   client now backs up there.
3. ``registered``: the journal is removed (a run resumed here sends the source's copy to
   its trash, if the switch did not get to it).

The journal (``<root>/fleet/move-<SN>.json`` of the state root running the command) says
which step is under way; killed anywhere, the same command resumes, and no snapshot is lost
or copied twice. The client's record exists on exactly one server, except between the end
of the source's ``clients remove`` and the rename that follows it in the same script on
the target (the time for ssh to return), where it exists on none; a kill in that instant
leaves it so until the move is resumed.
"""

from __future__ import annotations

import io
import os
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from xsbackup.crashpoints import crash
from xsbackup.errors import ClientNotFound, MoveFailed
from xsbackup.fleet import listing
from xsbackup.fleet.inventory import FleetServer, Inventory
from xsbackup.fleet.remote import XSBACKUP, ServerConnection, last_line, reason
from xsbackup.store import (
    atomic_write,
    check_client,
)

Progress = Callable[[str], None]
_NOT_SWITCHED = 75  # the switch script's exit: the source holds what the journal has not


@dataclass
class Journal:
    serial: str
    source: str
    target: str
    phase: str = "copying"            # copying | retiring | registered
    done: dict[str, list[str]] = field(default_factory=dict)  # volume -> verified ids
    started: float = field(default_factory=time.time)

    def save(self, path: Path) -> None:
        atomic_write(path, orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))


def _load(path: Path) -> Journal | None:
    try:
        data = orjson.loads(path.read_bytes())
        return Journal(**data)
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, TypeError) as e:
        raise MoveFailed(f"{path}: unreadable move journal ({e}); remove it to start "
                         "over") from None


class Host:
    """Shell commands on one fleet server; a failure is ``MoveFailed`` with one line."""

    def __init__(self, server: FleetServer, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.conn = ServerConnection(server, timeout)

    def sh(self, command: str, what: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
        try:
            result = self.conn.run("umask 077; " + command, hide=True, warn=True,
                                   in_stream=False)
        except Exception as e:  # fabric, paramiko and sockets raise many kinds
            raise MoveFailed(f"{self.server.name}: {what}: {reason(e, self.timeout)}; "
                             "run move-client again to resume") from None
        if result.exited not in ok:
            raise MoveFailed(f"{self.server.name}: {what}: exit {result.exited}: "
                             f"{last_line(result.stderr or result.stdout)}; "
                             "run move-client again to resume")
        return result.exited, result.stdout

    def close(self) -> None:
        self.conn.close()


class Move:
    def __init__(self, inv: Inventory, journal: Journal, timeout: float,
                 progress: Progress, dst: Host | None = None) -> None:
        self.journal = journal
        self.src_server = inv.get(journal.source)
        self.dst_server = inv.get(journal.target)
        self.src = Host(self.src_server, timeout)
        self.dst = dst or Host(self.dst_server, timeout)
        self.timeout = timeout
        self.progress = progress
        sn = journal.serial
        self.src_dir = f"{self.src_server.root}/clients/{sn}"
        self.dst_dir = f"{self.dst_server.root}/clients/{sn}"

    def listing(self) -> dict[str, list[str]]:
        """The source's snapshots per volume (oldest first)."""
        _, out = self.src.sh(self._find(), "listing snapshots")
        return listing.listed(out)[0]

    def _find(self) -> str:
        return listing.find_command(shlex.quote(f"{self.src_dir}/volumes"))

    def _rsync(self, *args: str) -> str:
        """An rsync command line of a ``_script``: through its connection to the source."""
        return 'rsync -e "$rsh" ' + shlex.join([
            "-aHXXs", "--numeric-ids", f"--timeout={max(30, int(self.timeout))}", *args])

    def _script(self, body: list[str]) -> str:
        """A shell script for the target that first opens one SSH connection to the source
        (a master, its socket in a private temporary directory) for all its rsyncs."""
        s = self.src_server
        ssh = shlex.join(["ssh", "-p", str(s.port), "-o", "BatchMode=yes",
                          "-o", "StrictHostKeyChecking=accept-new", "-o",
                          f"UserKnownHostsFile={self.dst_server.root}/fleet-known_hosts",
                          *(["-i", s.identity] if s.identity else [])])
        host = shlex.quote(s.host)
        return "\n".join([
            "set -e", "umask 077", 'm=$(mktemp -d)', f"rsh={shlex.quote(ssh)}' -S '\"$m/s\"",
            f"trap 'eval \"$rsh -O exit {host}\" 2>/dev/null; rm -rf \"$m\"' EXIT",
            "trap 'exit 1' HUP INT TERM PIPE",
            f'eval "$rsh -M -o ControlPersist=no -fN {host}"', *body])

    def _remote(self, path: str) -> str:
        return f"{self.src_server.host}:{path}"

    def _copy_body(self, plan: list[tuple[str, list[str], str | None]]) -> list[str]:
        """Per volume, one ``rsync -aHXX`` stream of its snapshots to copy (with the last
        one already moved, so ``-H`` keeps what they share with it) and, beside it, one
        of their manifests; meanwhile the source digests their metadata (``fleet
        tree-digest``: its snapshots do not change). Then ``fleet verify-copy`` walks the
        copy once: the same digests (entries, types, modes, owners, sizes, mtimes,
        symlinks, hardlinks, xattrs) and every file's content against the manifest,
        each inode read once; a snapshot without a manifest is compared byte by byte
        instead (``rsync -c -n -i``). Then ``VERIFIED <volume> <id>`` for each, in
        order."""
        # Owners are compared when rsync keeps them: this end (the receiver) is root.
        body = ['owners=; if [ "$(id -u)" = 0 ]; then owners=--owners; fi']
        src = self.src_server
        for volume, ids, base in plan:
            vol_src, vol_dst = (f"{self.src_dir}/volumes/{volume}",
                                f"{self.dst_dir}/volumes/{volume}")
            walked = ([base] if base else []) + ids
            snaps = [self._remote(f"{vol_src}/snapshots/./{sid}") for sid in walked]
            dst, mf = f"{vol_dst}/snapshots/", f"{vol_dst}/manifests"
            # each snapshot's manifest files: its own and its chain's (``.base``, ``.d1``..)
            manifests = [*(f"--include=/{sid}.*" for sid in ids), "--exclude=*",
                         self._remote(f"{vol_src}/manifests/")]
            digest = shlex.join([src.command, "--root", src.root, "fleet", "tree-digest",
                                 self.journal.serial, volume, *walked])
            verify = shlex.join(["--bytes-checked", *(["--base", base] if base else []),
                                 self.journal.serial, volume, *ids])
            body += [f"mkdir -p {shlex.quote(dst)} {shlex.quote(mf)}",
                     self._job("mf", self._rsync("--ignore-missing-args", *manifests,
                                                 f"{mf}/")),
                     self._job("sums", f'eval "$rsh" {_twice(src.host)} {_twice(digest)} '
                               "$owners", stderr=False),
                     self._rsync("-R", "--delete", *snaps, dst),
                     self._waited("mf"), self._waited("sums"),
                     f'{XSBACKUP} fleet verify-copy --digests "$m/sums" $owners {verify}']
            for sid in ids:
                bytes_check = self._job("bytes", self._rsync(
                    "--delete", "-c", "-n", "-i",
                    self._remote(f"{vol_src}/snapshots/{sid}/"), f"{dst}{sid}/"))
                body.append(f"if ! test -s {shlex.quote(f'{mf}/{sid}.jsonl')}; then "
                            f"{bytes_check}; {self._checked('bytes', f'{volume} {sid}')}; "
                            f"fi; echo VERIFIED {volume} {sid}")
        return body

    @staticmethod
    def _job(name: str, command: str, stderr: bool = True) -> str:
        """``command`` run in the background: its output in ``$m/<name>`` (its errors
        too, or with ``stderr`` false in ``$m/<name>.err``), its exit status in
        ``$m/<name>.rc``, its process in ``$j_<name>``."""
        err = "&1" if stderr else f'"$m/{name}.err"'
        return f'( ({command}) >"$m/{name}" 2>{err}; echo $? >"$m/{name}.rc" ) & j_{name}=$!'

    @staticmethod
    def _waited(name: str) -> str:
        """Wait for the job ``name``: a failure ends the script with its last line."""
        return (f'wait "$j_{name}"; if [ "$(cat "$m/{name}.rc")" != 0 ]; then tail -q -n 1 '
                f'"$m/{name}" "$m/{name}.err" 2>/dev/null | tail -n 1 >&2; exit 3; fi')

    @classmethod
    def _checked(cls, name: str, label: str) -> str:
        """Wait for the check ``name``: a failure or a difference (any output) ends the
        script."""
        return (f'{cls._waited(name)}; if [ -s "$m/{name}" ]; then echo "DIFFERS {label} '
                f'$(head -n 1 "$m/{name}")"; exit 3; fi')

    def copy_all(self, journal_path: Path, snaps: dict[str, list[str]] | None = None,
                 stage: bool = False) -> None:
        """Every source snapshot (``snaps``, else the source's listing) the journal does
        not hold yet, oldest first, per volume with the one moved before the first of
        them; the journal records each as it is verified. ``stage``: the same script
        stages the record meanwhile (``staging``)."""
        if snaps is None:
            snaps = self.listing()
        total = sum(len(ids) for ids in snaps.values())
        plan: list[tuple[str, list[str], str | None]] = []
        for volume, ids in snaps.items():
            done = self.journal.done.setdefault(volume, [])
            todo = [sid for sid in ids if sid not in done]
            if todo:
                before = [sid for sid in ids[:ids.index(todo[0])] if sid in done]
                plan.append((volume, todo, before[-1] if before else None))
        if not plan and not stage:
            return
        staging = [self._job("stage", "set -e; " + "; ".join(self.staging()))] if stage else []
        body = staging + self._copy_body(plan) + [self._waited("stage")] * stage
        sink = _Verified(self, journal_path, total)
        try:
            result = self.dst.conn.run(self._script(body),
                                       hide=False, warn=True,
                                       in_stream=False, out_stream=sink,
                                       err_stream=io.StringIO())
        except Exception as e:  # fabric, paramiko and sockets raise many kinds
            raise MoveFailed(f"{self.dst_server.name}: copying: {reason(e, self.timeout)}; "
                             "run move-client again to resume") from None
        if result.exited != 0:
            raise MoveFailed(f"{self.dst_server.name}: copying: exit {result.exited}: "
                             f"{last_line(sink.differs or result.stderr)}; "
                             "run move-client again to resume")


    def staging(self) -> list[str]:
        """The script lines that stage the record and the client directory's facts and
        reports on the target, not yet registered."""
        return [self._rsync("--delete", "--include=/reports/***", "--exclude=/*",
                            self._remote(f"{self.src_dir}/"), f"{self.dst_dir}/"),
                self._rsync(self._remote(f"{self.src_dir}/client.json"),
                            f"{self.dst_dir}/client.json.moving")]

    def switch(self) -> tuple[dict[str, list[str]], list[str]] | None:
        """Disable the client on the source and, unless the source holds a snapshot or
        transfer the journal has not verified, move the registration; else (no switch)
        the source's listing (``_listed``). One script on the target, through its SSH
        connection to the source, one session there: ``clients disable`` (its keys leave
        ``authorized_keys``, its record stays: still registered there), the listing,
        and with nothing new ``clients remove``; then at once, here, the staged record's
        rename into place, so the client is registered nowhere only
        between that command's end and the rename; then ``latest`` is set and
        ``authorized_keys`` rebuilt here. A client the source no longer knows (a switch
        cut short) is registered here all the same. The source command also sends the
        source's copy to its trash once the record is gone (the target's copy is
        verified by then)."""
        d = shlex.quote(self.dst_dir)
        src = self.src_server
        sn = shlex.quote(self.journal.serial)
        gone = ClientNotFound.exit_code
        xsb = shlex.join([src.command, "--root", src.root])
        moved = "\n".join(f"./{v}/snapshots/{sid}"
                           for v, ids in self.journal.done.items() for sid in ids)
        # On the source, one session: disable, list, and (nothing new) remove and trash.
        on_source = "\n".join([
            f"{xsb} clients disable {sn} >/dev/null; r=$?",
            f"if [ $r != 0 ] && [ $r != {gone} ]; then exit $r; fi",
            "if [ $r = 0 ]; then",
            f"out=$({self._find()}) || exit 1",
            f"t=$(mktemp) && printf '%s\\n' {shlex.quote(moved)} | LC_ALL=C sort >\"$t\"",
            "new=$(printf '%s\\n' \"$out\" | LC_ALL=C sort | LC_ALL=C comm -23 - \"$t\"); "
            "rm -f \"$t\"",
            f"if [ -n \"$new\" ]; then printf '%s\\n' \"$out\"; exit {_NOT_SWITCHED}; fi",
            f"{xsb} clients remove {sn} >/dev/null; r=$?",
            "fi",
            self.trash_command()])
        links = [f"ln -sfn snapshots/{ids[-1]} {d}/volumes/{v}/.latest.moving && "
                 f"mv -T {d}/volumes/{v}/.latest.moving {d}/volumes/{v}/latest"
                 for v, ids in self.journal.done.items() if ids]
        code, out = self.dst.sh(self._script([
            *links, "r=0",
            f'eval "$rsh" {_twice(src.host)} {_twice(on_source)} || r=$?',
            f'if [ "$r" = {_NOT_SWITCHED} ]; then exit {_NOT_SWITCHED}; fi',
            f'if [ "$r" != 0 ] && [ "$r" != {gone} ]; then echo "the '
            'source\'s clients remove: exit $r" >&2; exit 3; fi',
            f"if test -e {d}/client.json.moving; then mv {d}/client.json.moving "
            f"{d}/client.json; fi",
            f"test -e {d}/client.json", f"{XSBACKUP} keys"]),
            "switching the registration", ok=(0, _NOT_SWITCHED))
        return listing.listed(out) if code == _NOT_SWITCHED else None

    def trash_command(self) -> str:
        """A source command: unless ``$r`` says ``clients remove`` failed (neither 0 nor
        ``ClientNotFound``), the client's directory goes to the source's ``trash/``;
        exit ``$r``."""
        sn = self.journal.serial
        d = shlex.quote(self.src_dir)
        trash = shlex.quote(f"{self.src_server.root}/trash/client-{sn}-moved-"
                            f"{int(self.journal.started)}")
        return (f"if [ $r = 0 ] || [ $r = {ClientNotFound.exit_code} ]; then if test -e {d}; "
                f"then mv {d} {trash} || exit 1; fi; fi; exit $r")

    def close(self) -> None:
        self.src.close()
        self.dst.close()


class _Verified:
    """The copy script's standard output, read as it comes: each ``VERIFIED`` line is
    journalled at once (and is where the crash points of the copy are)."""

    def __init__(self, move: Move, journal_path: Path, total: int) -> None:
        self.move = move
        self.journal_path = journal_path
        self.total = total
        self.pending = ""
        self.differs = ""

    def write(self, data: str) -> int:
        self.pending += data
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "DIFFERS":
                self.differs = f"{rest}: differs from the source after copying"
            if word != "VERIFIED":
                continue
            volume, _, sid = rest.partition(" ")
            journal = self.move.journal
            journal.done.setdefault(volume, []).append(sid)
            journal.save(self.journal_path)
            count = sum(len(v) for v in journal.done.values())
            self.move.progress(f"{journal.serial} {volume}/{sid}: copied and verified "
                               f"({count}/{max(self.total, count)})")
            crash(f"fleet-move-copied-{count}")
        return len(data)

    def flush(self) -> None:
        return None


def _twice(word: str) -> str:
    """``word`` quoted for a line that ``eval`` parses once more."""
    return shlex.quote(shlex.quote(word))


def move_client(inv: Inventory, serial: str, target: str, journal_dir: Path,
                timeout: float, progress: Progress) -> dict[str, Any]:
    """Move ``serial``'s history to ``target`` (or finish the move under way)."""
    check_client(serial)
    journal_path = journal_dir / f"move-{serial}.json"
    journal = _load(journal_path)
    if journal is not None and journal.target != target:
        raise MoveFailed(f"a move of {serial} to {journal.target} is under way; finish "
                         "it first (move-client again with --to " f"{journal.target})")
    dst = Host(inv.get(target), timeout)
    snaps = None  # the source's snapshots, when known already
    try:
        if journal is None:
            journal, snaps = _fresh(inv, serial, dst, timeout)
            journal_dir.mkdir(mode=0o700, exist_ok=True)
            journal.save(journal_path)
    except BaseException:
        dst.close()
        raise
    move = Move(inv, journal, timeout, progress, dst)
    try:
        _run(move, journal, journal_path, snaps)
    finally:
        move.close()
    os.unlink(journal_path)
    return {"serial": serial, "source": journal.source, "target": journal.target,
            "snapshots": {v: len(ids) for v, ids in journal.done.items()}}


def _fresh(inv: Inventory, serial: str, dst: Host, timeout: float
           ) -> tuple[Journal, dict[str, list[str]]]:
    """A new move's journal and the source's snapshots: the one server the client is on
    (every server asked) and, at the same time, the target's check that it holds
    nothing of the client yet."""
    target = dst.server.name
    d = shlex.quote(f"{dst.server.root}/clients/{serial}")
    with ThreadPoolExecutor(max_workers=1) as pool:
        empty = pool.submit(dst.sh, f"test ! -e {d}", f"{target} already holds data of "
                            f"{serial} (remove it there with clients remove --purge first)")
        source, snaps = listing.find_source(inv, serial, timeout)
        if source.name == target:
            raise MoveFailed(f"client {serial} is already on {target}")
        empty.result()
    return Journal(serial, source.name, target), snaps


def _run(move: Move, journal: Journal, journal_path: Path,
         snaps: dict[str, list[str]] | None) -> None:
    sn, progress = journal.serial, move.progress
    if journal.phase == "copying":
        move.copy_all(journal_path, snaps, stage=True)
        crash("fleet-move-staged")
        journal.phase = "retiring"
        journal.save(journal_path)
    if journal.phase == "retiring":
        # Disabled, the client stays registered on the source (its keys leave there)
        # until the switch; a move stopped before it leaves it there.
        while True:
            crash("fleet-move-retired")
            listed = move.switch()
            if listed is None:
                break
            snaps, waiting = listed
            progress(f"{sn}: disabled on {journal.source} until the switch")
            if waiting:
                raise MoveFailed(f"{journal.source} has transfers of {sn} waiting for its "
                                 f"post-processor ({', '.join(waiting)}); run xsbackup "
                                 "postprocess there, then move-client again (the client "
                                 f"stays registered on {journal.source}, disabled; clients "
                                 "enable there gives up the move)")
            if all(set(ids) <= set(journal.done.get(v, ())) for v, ids in snaps.items()):
                raise MoveFailed(f"{journal.source}: the listing of {sn} there is not the "
                                 "snapshots moved, yet holds no new one; run move-client "
                                 "again to resume")
            move.copy_all(journal_path, snaps)
        journal.phase = "registered"
        journal.save(journal_path)
        progress(f"{sn}: registered on {journal.target}; the source copy on "
                 f"{journal.source} is in its trash")
        crash("fleet-move-registered")
        return
    # Registered before this run, which cannot tell whether the switch's trash step ran.
    move.src.sh("r=0; " + move.trash_command(), "sending the source copy to trash")
    progress(f"{sn}: the source copy on {journal.source} is in its trash")
