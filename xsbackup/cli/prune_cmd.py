"""``xsbackup prune`` and ``xsbackup du``: retention, the soft quota and usage."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

import click

from xsbackup.cli._common import emit_json, with_context
from xsbackup.context import Context
from xsbackup.units import format_bytes


@click.command()
@click.option("--client", "client", metavar="SN", help="Only this client.")
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@click.option("--policy-only", "mode", flag_value="policy", help="Only the retention policy.")
@click.option("--quota-only", "mode", flag_value="quota", help="Only the soft-quota trim.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def prune(ctx: Context, client: str | None, dry_run: bool,
          mode: str | None, as_json: bool) -> None:
    """Apply the retention policy, then the fair-share soft quota.

    Never deletes a client's newest snapshot, a snapshot being read, or anything of a
    client whose transfer is running. Snapshots are renamed into trash/ first, then
    deleted (with a progress bar on a terminal); an interrupted run is finished by the
    next one.
    """
    from xsbackup.retention import prune as core

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {}
    if mode in (None, "policy"):
        report = core.policy_prune(ctx, now, client, dry_run)
        out["policy"] = report.as_dict()
    if not dry_run:
        out["deleted"] = _purge(ctx, as_json)
    if mode in (None, "quota"):
        out["quota"] = core.quota_trim(ctx, client, dry_run).as_dict()
    if as_json:
        emit_json(out)
        return
    for section in ("policy", "quota"):
        if section not in out:
            continue
        items = out[section]["items"]
        click.echo(f"{section}: {len(items)} snapshots considered" if section == "policy"
                   else f"quota: {out['quota']['quota'].get('result', '')} "
                        f"(blocks {out['quota']['quota'].get('blocks_pct', 0):.1f}%, "
                        f"limit {out['quota']['quota'].get('limit_pct')}%)")
        for it in items:
            verdict = "keep " if it["keep"] else ("prune" if not it["outcome"].startswith(
                "skipped") else "skip ")
            click.echo(f"  {verdict} {it['client']:<14} {it['volume']:<12} {it['id']:<22} "
                       f"frees {format_bytes(it['exclusive']):>10}  {', '.join(it['reasons'])}"
                       f"{'  (' + it['outcome'] + ')' if it['outcome'].startswith('skip') else ''}")
    if dry_run:
        click.echo("dry run: nothing was deleted")


def _purge(ctx: Context, quiet: bool) -> int:
    """Reclaim what prune took out of sight, with a progress bar on a terminal."""
    pending = len(os.listdir(ctx.store.trash_dir))
    if pending and sys.stderr.isatty() and not quiet:
        with click.progressbar(length=pending, label="deleting", file=sys.stderr) as bar:
            done = [0]

            def step(n: int) -> None:
                bar.update(max(0, min(n, pending) - done[0]))
                done[0] = min(n, pending)

            return ctx.storage.purge(step)
    return ctx.storage.purge()


@click.command()
@click.argument("serial", required=False)
@click.option("--volume", help="Only this volume.")
@click.option("--refresh", is_flag=True, help="Ignore the cached figures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def du(ctx: Context, serial: str | None, volume: str | None,
       refresh: bool, as_json: bool) -> None:
    """Hardlink-aware usage: apparent, exclusive and shared bytes per snapshot."""
    from xsbackup.snapshots import usage

    registry = ctx.registry
    serials = [registry.get(serial).serial] if serial else [c.serial for c in registry.all()]
    show = sys.stderr.isatty() and not as_json
    results = []
    for sn in serials:
        if show:
            n = sum(len(ctx.store.snapshot_ids(sn, v)) for v in ctx.store.volumes(sn))
            with click.progressbar(length=n, label=f"measuring {sn}", file=sys.stderr) as bar:
                res = usage.cached(ctx, sn, lambda v, s: bar.update(1), refresh=refresh)
        else:
            res = usage.cached(ctx, sn, refresh=refresh)
        if volume:
            res.snapshots = [s for s in res.snapshots if s.volume == volume]
        results.append(res)
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        click.echo(f"{r.client}: {format_bytes(r.total)} on disk, "
                   f"{format_bytes(r.apparent)} apparent")
        for s in r.snapshots:
            click.echo(f"  {s.volume:<12} {s.id:<22} apparent {format_bytes(s.apparent):>10}  "
                       f"exclusive {format_bytes(s.exclusive):>10}  "
                       f"shared {format_bytes(s.shared):>10}")
