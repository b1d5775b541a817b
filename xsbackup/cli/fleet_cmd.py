"""``xsbackup fleet``: run every server of a fleet inventory together, and place clients."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from xsbackup.cli._common import Invocation, emit_json, pass_invocation, size_text
from xsbackup.errors import FleetServerFailed

if TYPE_CHECKING:
    from xsbackup.config import Settings
    from xsbackup.fleet.inventory import Inventory

_JSON = click.option("--json", "as_json", is_flag=True, help="One JSON document.")
_PARALLEL = click.option("--parallel", type=click.IntRange(min=1), metavar="N",
                         help="Servers asked at once (default: all).")


class Fleet:
    """The ``fleet`` group's options: the inventory (read when a subcommand first needs
    it, so ``--help`` works without one) and the per-server timeout."""

    def __init__(self, inv: Invocation, inventory: str | None, timeout: float | None) -> None:
        self._invocation = inv
        self._option = inventory
        self._timeout = timeout

    @property
    def settings(self) -> Settings:
        return self._invocation.settings()

    @functools.cached_property
    def inventory(self) -> Inventory:
        from xsbackup.fleet import inventory as inventory_mod

        return inventory_mod.load(inventory_mod.locate(
            self._option, self.settings.fleet.inventory, self.settings.root))

    @property
    def timeout(self) -> float:
        return self._timeout if self._timeout is not None else self.settings.fleet.timeout


pass_fleet = click.make_pass_decorator(Fleet)


@click.group()
@click.option("--inventory", metavar="FILE", help="The fleet inventory (default: "
              "[fleet] inventory).")
@click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Seconds each step on one server may take (default: [fleet] timeout).")
@pass_invocation
@click.pass_context
def fleet(ctx: click.Context, inv: Invocation, inventory: str | None,
          timeout: float | None) -> None:
    """Run xsbackup commands on every server of a fleet over SSH, and place clients.

    Each server stays a complete, independent xsbackup; every subcommand runs that
    server's own `xsbackup --root ROOT ... --json` and aggregates the answers. A server
    that is down, slow or answers garbage is one failed row (exit 71 after the report).
    """
    ctx.obj = Fleet(inv, inventory, timeout)


def _finish(report: dict[str, Any], as_json: bool, show: Callable[[dict[str, Any]], None]
            ) -> None:
    if as_json:
        emit_json(report)
    else:
        for row in report["servers"]:
            if not row["ok"]:
                click.echo(f"{row['server']:<16} FAILED  {row['error']}")
        show(report)
    if report["failed"]:
        raise FleetServerFailed(f"{report['failed']} of {len(report['servers'])} servers "
                                "failed")


def _disk(row: dict[str, Any]) -> str:
    disk = row.get("disk") or {}
    return f"disk {disk.get('df_blocks_pct', '?')}% used, {size_text(disk.get('free_bytes'))} free"


def _show_status(report: dict[str, Any]) -> None:
    for row in report["servers"]:
        if row["ok"]:
            click.echo(f"{row['server']:<16} ok      {_disk(row)}, {row['clients']} clients")
    for c in report["clients"]:
        click.echo(f"  {c['server']:<14} {c['serial']:<16} last={c['last_success'] or 'never'}"
                   f" snapshots={c['snapshot_count']} usage={size_text(c['usage_bytes'])}"
                   f" error={c['last_error'] or '-'}")


@fleet.command()
@_JSON
@_PARALLEL
@pass_fleet
def status(fl: Fleet, as_json: bool, parallel: int | None) -> None:
    """Every server's disk and every client's status, one row each."""
    from xsbackup.fleet import ops

    _finish(ops.status(fl.inventory, fl.timeout, parallel), as_json, _show_status)


@fleet.command()
@_JSON
@_PARALLEL
@pass_fleet
def check(fl: Fleet, as_json: bool, parallel: int | None) -> None:
    """Status, plus the fleet's problems: failing or warning servers and clients
    registered on more than one server; lists clients placement would put elsewhere."""
    from xsbackup.fleet import ops

    report = ops.check(fl.inventory, fl.timeout, parallel)

    def show(r: dict[str, Any]) -> None:
        _show_status(r)
        for m in r["misplaced"]:
            click.echo(f"misplaced: {m['serial']} is on {m['server']}, placement says "
                       f"{m['assigned']}")
        for p in r["problems"]:
            click.echo(f"problem: {p}")
        if not r["problems"]:
            click.echo("fleet ok")

    _finish(report, as_json, show)
    if report["problems"]:
        sys.exit(1)


@fleet.command()
@_JSON
@_PARALLEL
@pass_fleet
def du(fl: Fleet, as_json: bool, parallel: int | None) -> None:
    """Every client's bytes on disk (hardlink-aware, each server's own du)."""
    from xsbackup.fleet import ops

    def show(r: dict[str, Any]) -> None:
        for row in r["servers"]:
            if row["ok"]:
                click.echo(f"{row['server']:<16} ok      {size_text(row['total'])} in "
                           f"{row['clients']} clients")
        for c in r["clients"]:
            click.echo(f"  {c['server']:<14} {c['client']:<16} {size_text(c['total'])} on "
                       f"disk, {size_text(c['apparent'])} apparent, {c['snapshots']} snapshots")

    _finish(ops.du(fl.inventory, fl.timeout, parallel), as_json, show)


def _show_prune(r: dict[str, Any]) -> None:
    for row in r["servers"]:
        if row["ok"]:
            click.echo(f"{row['server']:<16} ok      {row['pruning']} snapshots to prune, "
                       f"frees {size_text(row['frees'])}")
    for it in r["items"]:
        if not it["keep"]:
            click.echo(f"  {it['server']:<14} {it['section']:<6} {it['client']:<16} "
                       f"{it['volume']:<12} {it['id']:<22} {it.get('outcome') or 'planned'}")


@fleet.command()
@click.option("--dry-run", is_flag=True, help="Print the fleet-wide plan; delete nothing.")
@_JSON
@_PARALLEL
@pass_fleet
def prune(fl: Fleet, dry_run: bool, as_json: bool, parallel: int | None) -> None:
    """Each server's retention policy and soft quota: the fleet-wide plan first (every
    server's prune --dry-run), then, without --dry-run, each server prunes."""
    from xsbackup.fleet import ops

    plan = ops.prune(fl.inventory, fl.timeout, parallel, dry_run=True)
    if dry_run:
        _finish(plan, as_json, _show_prune)
        return
    if as_json:
        done = ops.prune(fl.inventory, fl.timeout, parallel, dry_run=False)
        emit_json({"plan": plan, "result": done})
        failed = max(plan["failed"], done["failed"])
        if failed:
            raise FleetServerFailed(f"{failed} of {len(done['servers'])} servers failed")
        return
    click.echo("plan:")
    _show_prune(plan)
    click.echo("pruning:")
    _finish(ops.prune(fl.inventory, fl.timeout, parallel, dry_run=False), False,
            _show_prune)


@fleet.command()
@click.option("--overdue-days", type=click.FloatRange(min=0.01), metavar="DAYS",
              help="Days without a backup that make a client overdue (default: "
              "[ui] overdue_days).")
@_JSON
@_PARALLEL
@pass_fleet
def collect(fl: Fleet, overdue_days: float | None, as_json: bool,
            parallel: int | None) -> None:
    """One report from every server's status and metrics: disk per server, overdue
    clients fleet-wide, off-site lag."""
    from xsbackup.fleet import ops

    days = overdue_days if overdue_days is not None else fl.settings.ui.overdue_days
    report = ops.collect(fl.inventory, fl.timeout, parallel, days * 86400)

    def show(r: dict[str, Any]) -> None:
        for row in r["servers"]:
            if row["ok"]:
                lag = row["offsite_lag_seconds"]
                click.echo(f"{row['server']:<16} ok      {_disk(row)}, {row['clients']} "
                           f"clients, {row['overdue']} overdue, off-site lag "
                           f"{'-' if lag is None else f'{lag:.0f}s'}")
        for c in r["overdue"]:
            click.echo(f"  overdue {c['server']:<14} {c['serial']:<16} last="
                       f"{c['last_success'] or 'never'}")

    _finish(report, as_json, show)


@fleet.command()
@click.argument("serial")
@_JSON
@pass_fleet
def assign(fl: Fleet, serial: str, as_json: bool) -> None:
    """The server a new SERIAL belongs on (weighted rendezvous hashing)."""
    from xsbackup.store import check_client

    server = fl.inventory.assign(check_client(serial))
    if as_json:
        emit_json({"serial": serial, "server": server.name, "host": server.host,
                   "port": server.port, "site": server.site})
    else:
        click.echo(server.name)


@fleet.command("move-client")
@click.argument("serial")
@click.option("--to", "target", required=True, metavar="SERVER",
              help="The inventory name of the server to move the client to.")
@_JSON
@pass_fleet
def move_client(fl: Fleet, serial: str, target: str, as_json: bool) -> None:
    """Move SERIAL's whole history to SERVER: snapshots oldest first (sharing kept),
    each verified (content against its manifest, or byte by byte; metadata against the
    source); then the registration; then the source copy to trash. Interrupted, the
    same command resumes (journal in <root>/fleet/)."""
    from xsbackup.fleet.move import move_client as move
    from xsbackup.store import Store

    store = Store(fl.settings.root).require()

    def progress(line: str) -> None:
        click.echo(line, err=True)

    out = move(fl.inventory, serial, target, store.root / "fleet", fl.timeout, progress)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"moved {serial} from {out['source']} to {out['target']}: "
                   + ", ".join(f"{v} {n} snapshots" for v, n in out["snapshots"].items()))


@fleet.command("verify-copy", hidden=True)
@click.argument("serial")
@click.argument("volume")
@click.argument("ids", nargs=-1)
@click.option("--digests", "digests_file", type=click.Path(dir_okay=False),
              help="The source's `fleet tree-digest` lines: each snapshot's metadata "
                   "is compared too.")
@click.option("--base", metavar="ID", help="The snapshot moved before IDS (walked first, "
              "for the hardlinks IDS share with it; its digest is compared).")
@click.option("--owners", is_flag=True, help="Owners and groups are in the digests (the "
              "target runs as root, so rsync keeps them).")
@click.option("--bytes-checked", is_flag=True, help="A snapshot without a manifest is "
              "not a difference (prints BYTES VOLUME ID: the caller compares its bytes).")
@pass_fleet
def verify_copy(fl: Fleet, serial: str, volume: str, ids: tuple[str, ...],
                digests_file: str | None, base: str | None, owners: bool,
                bytes_checked: bool) -> None:
    """Run by move-client on its target: check the copied snapshots IDS of SERIAL's
    VOLUME against their manifests (and the source's digests); prints CONTENT VOLUME ID
    for each that matches."""
    from pathlib import Path

    from xsbackup.context import Context
    from xsbackup.errors import MoveFailed
    from xsbackup.fleet.verify import Differs, verify
    from xsbackup.store import check_client

    check_client(serial)
    _snapshot_ids(ids if base is None else (base, *ids))
    expected = None
    if digests_file is not None:
        expected = dict(line.split(" ", 1) for line in
                        Path(digests_file).read_text().splitlines() if " " in line)
    ctx = Context.open(fl.settings)
    snaps = ctx.store.snapshots_dir(serial, volume)
    try:
        verify(ctx.storage, lambda sid: snaps / sid, serial, volume, ids,
               lambda sid: click.echo(f"CONTENT {volume} {sid}"), expected=expected,
               base=base, without_manifest=(lambda sid: click.echo(f"BYTES {volume} {sid}"))
               if bytes_checked else None, owners=owners)
    except Differs as e:
        click.echo(f"DIFFERS {e}")
        raise MoveFailed(f"{e}: the copy differs from the source") from None


@fleet.command("tree-digest", hidden=True)
@click.argument("serial")
@click.argument("volume")
@click.argument("ids", nargs=-1)
@click.option("--owners", is_flag=True, help="Owners and groups are in the digests (the "
              "target runs as root, so rsync keeps them).")
@pass_fleet
def tree_digest(fl: Fleet, serial: str, volume: str, ids: tuple[str, ...],
                owners: bool) -> None:
    """Run by move-client on its source while it copies: one line ID DIGEST for each
    snapshot IDS of SERIAL's VOLUME (walked in that order), for verify-copy to compare."""
    from xsbackup.errors import MoveFailed
    from xsbackup.fleet.verify import Differs, digests
    from xsbackup.store import Store, check_client

    check_client(serial)
    _snapshot_ids(ids)
    snaps = Store(fl.settings.root).require().snapshots_dir(serial, volume)
    try:
        for sid, digest in digests(lambda sid: snaps / sid, ids, owners):
            click.echo(f"{sid} {digest}")
    except Differs as e:
        raise MoveFailed(f"{volume}/{e}") from None


def _snapshot_ids(ids: tuple[str, ...]) -> None:
    from xsbackup.store import SNAPSHOT_RE

    for sid in ids:
        if not SNAPSHOT_RE.fullmatch(sid):
            raise click.BadParameter(f"not a snapshot id: {sid!r}", param_hint="IDS")
