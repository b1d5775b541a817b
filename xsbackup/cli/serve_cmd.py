"""``xsbackup init``, ``serve``, ``ssh-command``, ``maintenance`` and ``status``: the server."""

from __future__ import annotations

import sys

import click

from xsbackup.cli._common import (
    Invocation,
    emit_json,
    pass_invocation,
    size_text,
    with_context,
)
from xsbackup.config import STORAGE_BACKENDS
from xsbackup.context import Context


@click.command()
@click.option("--backend", type=click.Choice(["auto", *STORAGE_BACKENDS]), default=None,
              help="How snapshots are stored (default: storage.backend, auto). auto: btrfs "
              "when the root is on btrfs and subvolumes can be made there, reflink when "
              "the filesystem clones files, else hardlink. Recorded in the root; a root "
              "holding snapshots keeps its backend (exit 25; see xsbackup migrate).")
@pass_invocation
def init(inv: Invocation, backend: str | None) -> None:
    """Create the state root layout, check that user xattrs work there, choose and record
    the storage backend, and close the root to other users: it becomes 0700 (0750 with
    storage.root_group), and stored files and directories of an existing root lose group
    and world write."""
    from xsbackup.storage.choice import choose
    from xsbackup.storage.permissions import tighten_tree
    from xsbackup.store import init_root, iter_clients

    settings = inv.settings()
    group = settings.storage.root_group
    store = init_root(settings.root, group)
    chosen = choose(store, backend or settings.storage.backend)
    changed = sum(tighten_tree(str(store.client_dir(c) / "volumes"))
                  for c in iter_clients(store))
    mode = "0750, group " + group if group else "0700"
    click.echo(f"initialised {settings.root} (mode {mode}"
               + (f"; {changed} stored items lost group or world write)" if changed else ")")
               + f"; storage backend {chosen}")

@click.command("ssh-command")
@click.option("--client", required=True, metavar="SN", help="The authenticated client's serial.")
@click.option("--restore-key", "restore_key", metavar="ID", default=None,
              help="The session logged in with this one-time restore key (restore push).")
@pass_invocation
def ssh_command(inv: Invocation, client: str, restore_key: str | None) -> None:
    """The forced command: validate SSH_ORIGINAL_COMMAND, admit, lock and run rsync."""
    from xsbackup.cli import forced

    sys.exit(forced.run(inv.root, inv.config_file, client, restore_key))

@click.command()
@click.option("--bind", default=None, help="Address for the SSH and HTTP servers "
              "(server.bind; default 127.0.0.1).")
@click.option("--ssh-port", type=int, default=None, help="Embedded SSH port (default 2222).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 8080).")
@click.option("--no-ssh", is_flag=True, help="No embedded SSH server: OpenSSH answers SSH "
              "(server.embedded_ssh = false).")
@pass_invocation
def serve(inv: Invocation, bind: str | None, ssh_port: int | None,
          http_port: int | None, no_ssh: bool) -> None:
    """Run everything in one process: embedded SSH, HTTP, post-processing, scheduler.

    Creates the state root and host keys on first start. SIGTERM/SIGINT stop gracefully;
    SIGHUP reloads the configuration and keys. Exits 18 when ingest.rsync is missing and
    19 when a port cannot be had.
    """
    from xsbackup.server.service import Service

    service = Service(inv.root, inv.config_file, {
        "server.bind": bind, "server.ssh_port": ssh_port, "server.http_port": http_port,
        "server.embedded_ssh": False if no_ssh else None})
    sys.exit(service.run(ready=click.echo))

@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def status(ctx: Context, as_json: bool) -> None:
    """Disk use (as df counts it), the storage backend, and one row per client from its
    status xattrs, without walking snapshot trees."""
    from xsbackup.cli.status import status_of

    out = status_of(ctx)
    if as_json:
        emit_json(out)
        return
    for warning in out["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    disk, storage = out["disk"], out["storage"]
    click.echo(f"disk: {disk['df_blocks_pct']}% of blocks used ({disk['blocks_pct']:.1f}%), "
               f"{disk['inodes_pct']:.1f}% of inodes, {size_text(disk['free_bytes'])} "
               f"free; storage: {storage['name']}")
    if not out["clients"]:
        click.echo("no clients")
    for r in out["clients"]:
        usage = size_text(r["usage_bytes"]) + (
            f"/{size_text(r['quota_bytes'])}" if r["quota_bytes"] else "") + (
            " over-quota" if r["over_quota"] else "")
        click.echo(f"{r['serial']:<16} last={r['last_success'] or 'never':<26} "
                   f"age={r['age'] or '-':<10} snapshots={r['snapshot_count']:<5} "
                   f"flagged={len(r['flagged'])} usage={usage} "
                   f"error={r['last_error'] or '-'}")

@click.command()
@click.argument("state", type=click.Choice(["on", "off", "status"]), default="status")
@with_context
def maintenance(ctx: Context, state: str) -> None:
    """Turn maintenance mode on or off (refuses every transfer while on)."""
    from xsbackup.ingest.admission import maintenance_on

    if state == "on":
        ctx.store.maintenance_flag.write_text("on\n")
    elif state == "off":
        ctx.store.maintenance_flag.unlink(missing_ok=True)
    click.echo("maintenance " + ("on" if maintenance_on(ctx) else "off"))

@click.command()
@with_context
def metrics(ctx: Context) -> None:
    """Print the /metrics exposition (Prometheus text format), read now."""
    from xsbackup.monitor.metrics import render

    sys.stdout.write(render(ctx.store).decode())
