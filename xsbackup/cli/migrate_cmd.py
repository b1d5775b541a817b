"""``xsbackup migrate``: convert a state root to another storage backend."""

from __future__ import annotations

import click

from xsbackup.cli._common import emit_json, with_context
from xsbackup.context import Context


@click.command()
@click.option("--to", "to", type=click.Choice(["btrfs"]), required=True,
              help="The backend to convert to (a hardlink root on btrfs becomes btrfs).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def migrate(ctx: Context, to: str, as_json: bool) -> None:
    """Convert a hardlink state root on btrfs to the btrfs backend, snapshot by snapshot,
    oldest first, keeping ids, bytes, modes, mtimes and facts; each copy is compared
    byte for byte before the old tree goes to trash. Transfers are refused meanwhile
    (maintenance mode). Killed, it resumes where it stopped when run again. Exits 24
    when the root cannot use btrfs and 26 when a copy does not verify."""
    from xsbackup.snapshots.migrate import migrate as run

    def step(client: str, volume: str, sid: str, outcome: str) -> None:
        if not as_json:
            click.echo(f"{client} {volume} {sid} {outcome}", err=True)

    report = run(ctx, to, step)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"migrated {len(report.migrated)} snapshots to {to}"
               + (f" ({len(report.already)} already were)" if report.already else ""))
