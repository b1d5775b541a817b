"""``xsbackup restore``: restore plans and archive streams."""

from __future__ import annotations

import sys

import click

from xsbackup.cli._common import emit_json, size_text, with_context
from xsbackup.context import Context
from xsbackup.errors import XsbackupError


@click.group()
def restore() -> None:
    """Plan a restore, or stream a snapshot as an archive."""

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
    out = sys.stdout.buffer
    core.write_archive(ctx.store, serial, vol, sid, path, fmt, out)
    out.flush()
