"""``xsbackup restore``: restore plans, archive streams, the restore kit and pushes to
devices."""

from __future__ import annotations

import io
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xsbackup.cli._common import emit_json, size_text, with_context
from xsbackup.context import Context
from xsbackup.errors import XsbackupError
from xsbackup.restore.push import HOST_KEY_POLICIES

if TYPE_CHECKING:
    from xsbackup.restore.pull import Server

ARCHIVE_BUFFER = 1 << 20


@click.group()
def restore() -> None:
    """Plan a restore, stream a snapshot as an archive, or hand out the restore kit."""

@restore.command("plan")
@click.argument("serial")
@click.option("--volume", help="The volume (needed when the client has several).")
@click.option("--at", help="A snapshot id, or an ISO time: the newest snapshot at or before.")
@click.option("--from", "source", metavar="SN", help="Restore an aliased client's snapshot.")
@click.option("--host", default=None, help="Server name the client uses (default: "
              "server.public_host, else this machine's host name).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def restore_plan(ctx: Context, serial: str, volume: str | None,
                 at: str | None, source: str | None, host: str | None, as_json: bool) -> None:
    """Which snapshot SERIAL gets back, and the rsync command that fetches it.

    The command names server.ssh_port, or OpenSSH's port 22 when ssh_port is 0."""
    import socket

    from xsbackup.restore import archive as core

    # The name registration hands devices in backupurl: public_host, else the host name.
    # (socket.getfqdn() would ask the resolver, which often answers "localhost".)
    host = host or ctx.settings.server.public_host or socket.gethostname()
    plan = core.plan(ctx.store, serial, volume, at, host, ctx.settings.server.ssh_port, source)
    if as_json:
        emit_json(plan.as_dict())
        return
    click.echo(f"snapshot {plan.volume}/{plan.snapshot} of {plan.client}")
    click.echo(f"files={plan.facts.get('files', '?')} size={size_text(plan.facts.get('bytes'))}")
    click.echo(plan.command)

@restore.command("archive")
@click.argument("serial")
@click.argument("path", default="")
@click.option("--volume", help="The volume (needed when the client has several).")
@click.option("--at", help="A snapshot id, or an ISO time: the newest snapshot at or before.")
@click.option("--format", "fmt", type=click.Choice(["tar", "zip"]), default="tar",
              help="Archive format (default tar).")
@click.option("--from", "source", type=click.Choice(["store", "offsite"]), default="store",
              help="offsite: the snapshot of the off-site repository, brought back into "
                   "the store first when it is not there (default: store).")
@with_context
def restore_archive(ctx: Context, serial: str, path: str,
                    volume: str | None, at: str | None, fmt: str, source: str) -> None:
    """Stream SERIAL's snapshot (or PATH inside it) to stdout: ... | tar x

    Refuses to write to a terminal, as restic dump does."""
    from xsbackup.restore import archive as core
    from xsbackup.restore.resolve import pick_volume, resolve

    if sys.stdout.isatty():
        raise XsbackupError(f"refusing to write an archive to a terminal: redirect it to a "
                            f"file (> snapshot.{fmt}) or a pipe (| tar x)")
    if source == "offsite":
        from xsbackup.offsite import recover

        vol, sid = recover.ensure_local(ctx, serial, volume, at)
    else:
        vol = pick_volume(ctx.store, serial, volume)
        sid = resolve(ctx.store, serial, vol, at)
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (OSError, io.UnsupportedOperation):  # not a file (the CLI run in-process)
        core.write_archive(ctx.store, serial, vol, sid, path, fmt, sys.stdout.buffer)
        sys.stdout.flush()
        return
    # Big writes (sys.stdout's buffer is 8 KiB): whoever reads the pipe (tar, or restore
    # push's SSH channel) gets the stream in big pieces.
    with io.BufferedWriter(io.FileIO(fd, "w", closefd=False), ARCHIVE_BUFFER) as out:
        core.write_archive(ctx.store, serial, vol, sid, path, fmt, out)


@restore.command("kit")
@click.option("--json", "as_json", is_flag=True,
              help="Describe the kit (name, size, sha256) instead of writing it.")
def restore_kit(as_json: bool) -> None:
    """Write the bare-device restore kit to stdout: xsbackup restore kit > xsrestore.py

    The same stdlib-only script GET /restore/kit serves; run it on the device with
    python3 xsrestore.py --help."""
    import hashlib

    from xsbackup.restore.downloads import kit

    body = kit()
    if as_json:
        emit_json({"name": "xsrestore.py", "size": len(body),
                   "sha256": hashlib.sha256(body).hexdigest()})
        return
    sys.stdout.buffer.write(body)
    sys.stdout.flush()


@restore.command("push")
@click.argument("serial", required=False)
@click.option("--to", "to", metavar="[USER@]HOST[:PORT]", help="The device to restore.")
@click.option("--hosts-from", "hosts_from", type=click.Path(dir_okay=False, path_type=Path),
              help="A classroom: one 'SERIAL [user@]host[:port]' per line.")
@click.option("--volume", "volumes", multiple=True,
              help="A volume to push (repeatable; default: datastore and documents, or "
                   "every volume with --dest).")
@click.option("--at", help="A snapshot id, or an ISO time: the newest snapshot at or before.")
@click.option("--dest", metavar="PATH", help="Where on the device (DEST/VOLUME for several "
              "volumes; relative: below the user's home). Default: the volume's place on "
              "an XO.")
@click.option("--parallel", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Devices transferring at once.")
@click.option("-i", "--identity", "identity", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Private key for the device login (default: the agent and ~/.ssh keys).")
@click.option("--host-keys", type=click.Choice(HOST_KEY_POLICIES), default="accept-new",
              show_default=True, help="strict: known hosts only; accept-new: remember new "
              "hosts, refuse changed keys; ignore: no checking (reflashed devices).")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("~/.ssh/known_hosts").expanduser(), show_default=True,
              help="The known-hosts file for strict and accept-new.")
@click.option("--method", type=click.Choice(("auto", "pull", "tar")), default="auto",
              show_default=True, help="pull: the device pulls with rsync and a one-time "
              "restore key; tar: a tar stream over the SSH channel; auto: pull, and tar "
              "for a device that cannot pull.")
@click.option("--server", "server", metavar="[USER@]HOST[:PORT]", default=None,
              help="This server as the devices reach it, for pull (default: the address "
              "each device connection reached this server at; the service user; the "
              "embedded SSH "
              "port, or 22 with server.embedded_ssh = false).")
@click.option("--server-host-key", "server_host_keys", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="This server's SSH host key (.pub, repeatable) that devices check, for "
              "pull (default: the embedded server's keys, or /etc/ssh/ssh_host_*_key.pub).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@with_context
def restore_push(ctx: Context, serial: str | None, to: str | None, hosts_from: Path | None,
                 volumes: tuple[str, ...], at: str | None, dest: str | None, parallel: int,
                 identity: tuple[str, ...], host_keys: str, known_hosts: Path,
                 method: str, server: str | None, server_host_keys: tuple[Path, ...],
                 as_json: bool) -> None:
    """Put SERIAL's snapshots back onto a reflashed device over SSH (fabric):

    xsbackup restore push SN --to olpc@xo-12.local

    Checks free space first, puts each volume there (the device pulls it with rsync and
    a one-time restore key, or a tar over the SSH channel: --method; modes and owners
    from the snapshot), verifies it against the manifest, and prints one row per device.
    --hosts-from FILE restores a classroom, --parallel devices at a time; one failing
    device does not stop the others."""
    from xsbackup.errors import DeviceFull, DeviceUnreachable, DeviceWriteFailed, PushFailed
    from xsbackup.restore import device
    from xsbackup.restore import push as core

    if hosts_from is not None:
        if serial or to:
            raise click.UsageError("give either SERIAL --to HOST or --hosts-from FILE")
        devices = core.read_hosts(hosts_from)
    elif serial and to:
        devices = [(serial, core.parse_target(to))]
    else:
        raise click.UsageError("give SERIAL --to [user@]HOST[:port], or --hosts-from FILE")
    from xsbackup import procs
    from xsbackup.clients.keys import xsbackup_executable

    cfg = ctx.settings.config_file
    opts = core.Options(volumes, at, dest, identity, host_keys, known_hosts, parallel,
                        (xsbackup_executable(), "--root", str(ctx.settings.root)),
                        procs.environment({"XSBACKUP_CONFIG": str(cfg)} if cfg else None),
                        method=method, server=None if method == "tar" else
                        _pull_server(ctx, method, server, server_host_keys))
    signal.signal(signal.SIGTERM, _interrupt)  # so the restore keys are dropped
    store = ctx.store.require()
    total = core.total_bytes(store, devices, opts)
    if sys.stderr.isatty() and not as_json:
        with click.progressbar(length=max(total, 1), label="restoring", file=sys.stderr,
                               show_eta=True) as bar:
            outcomes = device.push(store, devices, opts, bar.update)
    else:
        outcomes = device.push(store, devices, opts, lambda n: None)
    if as_json:
        emit_json([o.as_dict() for o in outcomes])
    else:
        table = list(core.rows(outcomes))
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
        for row in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                       + "  " + row[-1])
        for note in (n for o in outcomes if o.ok for n in o.notes):
            click.echo(f"then: {note}")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        kinds = {c.exit_code: c for c in (DeviceUnreachable, DeviceFull, DeviceWriteFailed)}
        kind = kinds.get(failed[0].code, PushFailed) if len(outcomes) == 1 else PushFailed
        raise kind(f"{len(failed)} of {len(outcomes)} devices failed: "
                   + "; ".join(f"{o.serial}: {o.error}" for o in failed))


def _pull_server(ctx: Context, method: str, server: str | None,
                 key_files: tuple[Path, ...]) -> Server | None:
    """This server as devices reach it, from --server and the settings; None (tar) for
    ``auto`` when this server has no host key to give them."""
    from xsbackup.restore import pull
    from xsbackup.restore.push import parse_target

    s = ctx.settings.server
    where = parse_target(server) if server else None
    if not key_files:
        ssh = ctx.settings.root / "ssh" if s.embedded_ssh else Path("/etc/ssh")
        key_files = tuple(p for p in (ssh / "ssh_host_ed25519_key", ssh / "ssh_host_rsa_key")
                          if p.exists()) if s.embedded_ssh else \
            tuple(sorted(ssh.glob("ssh_host_*_key.pub")))
        if not key_files and method == "auto":
            return None
    return pull.Server(login=(where.user if where and where.user else s.service_user),
                       host=where.host if where else "",
                       port=(where.port if where and where.port else
                             s.ssh_port if s.embedded_ssh else 22),
                       known_hosts=pull.host_keys(key_files))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
