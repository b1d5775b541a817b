"""``xsbackup offsite``: copies of every snapshot in a restic repository (``xsbackup.offsite``)."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import threading
from typing import Any

import click

from xsbackup.cli._common import emit_json, with_context
from xsbackup.context import Context


def _say(as_json: bool) -> Any:
    """A progress printer: each snapshot as it starts, on stderr when it is a terminal
    (never with --json)."""
    def say(what: str) -> None:
        if not as_json and sys.stderr.isatty():
            click.echo(f"  {what}", err=True)
    return say


@click.group()
def offsite() -> None:
    """Off-site copies in a restic repository (local path, SFTP, S3, ...)."""


@offsite.command("init")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def offsite_init(ctx: Context, as_json: bool) -> None:
    """Create the repository (offsite.repository), or check that an existing one opens
    with the password. A missing password file is created with a random password: keep a
    copy of it away from this server, or the copies cannot be read after a disaster."""
    from xsbackup.offsite import state
    from xsbackup.offsite.restic import Restic

    restic = Restic(ctx.settings.offsite, ctx.store)
    with state.acquire(ctx.store):
        created_password = restic.ensure_password()
        existed = restic.exists()
        if not existed:
            restic.init()
    out = {"repository": restic.location, "created": not existed,
           "password_file_created": str(restic.password_file) if created_password else ""}
    if as_json:
        emit_json(out)
        return
    if created_password:
        click.echo(f"created password file {restic.password_file}: keep a copy of it away "
                   "from this server; without it the off-site copies cannot be read")
    click.echo(f"{restic.where}: {'created' if not existed else 'exists and opens'}")


@offsite.command("run")
@click.option("--once", is_flag=True, help="One pass now (ignores the window and the "
              "back-off), then exit.")
@click.option("--limit", type=click.IntRange(min=1), help="Replicate at most N snapshots.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (--once).")
@with_context
def offsite_run(ctx: Context, once: bool, limit: int | None, as_json: bool) -> None:
    """Replicate promoted snapshots, least recently replicated client first, and mirror
    retention. Without --once, keep running as serve's scheduler does: every
    offsite.interval_minutes, inside the window, honouring the back-off."""
    from xsbackup.offsite import replicate, schedule

    if once:
        report = replicate.run_once(ctx, limit=limit, progress=_say(as_json))
        if as_json:
            emit_json(report.as_dict())
            return
        click.echo(f"replicated {len(report.replicated)}, already off-site "
                   f"{len(report.adopted)}, failed {len(report.failed)}, forgotten "
                   f"{len(report.forgotten)}, pending {report.pending}")
        for line in report.failed:
            click.echo(f"xsbackup: error: {line}", err=True)
        if report.failed:
            sys.exit(1)
        return
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    schedule.loop(lambda: ctx, stop)


@offsite.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def offsite_status(ctx: Context, as_json: bool) -> None:
    """Per client: snapshots off-site and pending, replication lag, last success and error."""
    from xsbackup.offsite import replicate

    out = replicate.status(ctx, dt.datetime.now(dt.UTC))
    if as_json:
        emit_json(out)
        return
    repo = out["state"]
    click.echo(f"{out['repository'] or 'no off-site repository configured'}: last run "
               f"{repo['last_run'] or 'never'}, last prune {repo['last_prune'] or 'never'}"
               + (f", error: {repo['last_error']}" if repo["failures"] else ""))
    for r in out["clients"]:
        click.echo(f"  {r['client']:<14} off-site {r['replicated']:>5}  pending "
                   f"{r['pending']:>4}  lag {int(r['lag_seconds']):>8}s  "
                   f"{'error: ' + r['last_error'] if r['failures'] else ''}")


@offsite.command("restore")
@click.argument("serial")
@click.option("--volume", help="The volume (needed when the client has several).")
@click.option("--at", help="latest, a snapshot id, or an ISO time (the newest at or "
              "before it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def offsite_restore(ctx: Context, serial: str, volume: str | None, at: str | None,
                    as_json: bool) -> None:
    """Bring SERIAL's snapshot back from the repository into the store, under its id."""
    from xsbackup.offsite import recover

    done = recover.restore(ctx, serial, volume, at)
    if as_json:
        emit_json(done.as_dict())
        return
    click.echo(f"restored {done.client} {done.volume}/{done.id} from off-site "
               f"({done.restic_id[:8]})")


@offsite.command("rebuild")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def offsite_rebuild(ctx: Context, as_json: bool) -> None:
    """After losing the state root: recreate the registry from its off-site copy and
    every client's snapshots from the repository (run init on the new root first)."""
    from xsbackup.offsite import recover

    report = recover.rebuild(ctx, progress=_say(as_json))
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"clients recreated {len(report.clients)}, snapshots restored "
               f"{len(report.restored)}, identity files restored {len(report.files)}")
    for line in report.skipped:
        click.echo(f"  skipped {line}")
    for rel in report.differing:
        click.echo(f"  kept the present {rel}, which differs from the off-site copy")


@offsite.command("check")
@click.option("--read-data-subset", metavar="P", help="Also read this part of the data "
              "(restic's n/t, a percentage or a size).")
@with_context
def offsite_check(ctx: Context, read_data_subset: str | None) -> None:
    """Run restic check on the repository."""
    from xsbackup.offsite import state
    from xsbackup.offsite.restic import Restic

    restic = Restic(ctx.settings.offsite, ctx.store)
    with state.acquire(ctx.store):
        restic.check(read_data_subset)
    click.echo(f"{restic.where}: no errors found")


@offsite.command("prune")
@with_context
def offsite_prune(ctx: Context) -> None:
    """Run restic prune: reclaim the space of forgotten snapshots (serve runs it daily
    at offsite.prune_schedule)."""
    from xsbackup.offsite import schedule

    click.echo(schedule.prune_repository(ctx))
