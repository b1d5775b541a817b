"""``xsbackup postprocess``, ``snapshots`` and ``cjson``: turning transfers into snapshots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from xsbackup.cli._common import (
    Invocation,
    emit_json,
    pass_invocation,
    size_option,
    size_text,
    with_context,
)
from xsbackup.context import Context


@click.command()
@click.option("--once", "mode", flag_value="once", default=True, help="Drain the queue, exit.")
@click.option("--watch", "mode", flag_value="watch", help="Stay up and process as work arrives.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary (--once).")
@with_context
def postprocess(ctx: Context, mode: str, as_json: bool) -> None:
    """Turn completed transfers into snapshots."""
    import signal
    import threading

    from xsbackup.snapshots import postprocess as pp

    if mode == "watch":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            pp.watch(lambda: ctx, stop)
        except KeyboardInterrupt:
            stop.set()
        return
    counts = pp.run_once(ctx)
    if as_json:
        emit_json(counts)
    else:
        click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "queue empty")

@click.group()
def snapshots() -> None:
    """List and inspect snapshots."""

def _snapshot_row(store: Any, client: str, volume: str, sid: str) -> dict[str, Any]:
    from xsbackup.snapshots.snapshot import read_facts

    facts = read_facts(store.snapshots_dir(client, volume) / sid)
    return {"client": client, "volume": volume, "id": sid,
            "latest": store.latest_id(client, volume) == sid, **facts}

@snapshots.command("list")
@click.argument("serial")
@click.option("--volume", help="Only this volume.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def snapshots_list(ctx: Context, serial: str,
                   volume: str | None, as_json: bool) -> None:
    """List a client's snapshots, oldest first."""

    ctx.registry.get(serial)
    vols = [volume] if volume else ctx.store.volumes(serial)
    rows = [_snapshot_row(ctx.store, serial, v, s)
            for v in vols for s in ctx.store.snapshot_ids(serial, v)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no snapshots")
    for r in rows:
        flag = " flagged" if isinstance(r.get("cjson"), dict) and \
            r["cjson"].get("status") == "flagged" else ""
        click.echo(f"{r['volume']:<12} {r['id']:<22} files={r.get('files', '?'):<7} "
                   f"size={size_text(r.get('bytes')):<10} new={size_text(r.get('new_bytes'))}"
                   f"{' latest' if r['latest'] else ''}{flag}")

@snapshots.command("show")
@click.argument("serial")
@click.argument("snapshot_id")
@click.option("--volume", help="The volume (needed when several have this id).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def snapshots_show(ctx: Context, serial: str, snapshot_id: str,
                   volume: str | None, as_json: bool) -> None:
    """Show one snapshot's facts."""
    from xsbackup.errors import SnapshotNotFound
    from xsbackup.store import check_snapshot_id

    check_snapshot_id(snapshot_id)
    vols = [volume] if volume else ctx.store.volumes(serial)
    rows = [_snapshot_row(ctx.store, serial, v, snapshot_id) for v in vols
            if snapshot_id in ctx.store.snapshot_ids(serial, v)]
    if not rows:
        raise SnapshotNotFound(f"no snapshot {snapshot_id} for {serial}")
    if as_json:
        emit_json(rows[0] if len(rows) == 1 else rows)
        return
    for r in rows:
        for k, v in r.items():
            text = v if isinstance(v, str) else orjson.dumps(v).decode()
            click.echo(f"{k:<13} {text}")

@click.group()
def cjson() -> None:
    """OLPC Canonical JSON tools."""

@cjson.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--max-bytes", callback=size_option, default=None,
              help="Report larger files unread (bytes, or a size such as 1MiB).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_invocation
def cjson_check(inv: Invocation, files: tuple[str, ...], max_bytes: int | None,
                as_json: bool) -> None:
    """Validate FILES as Canonical JSON; exit 1 when any is not canonical."""
    from xsbackup.snapshots import cjson as cj

    limit = max_bytes if max_bytes is not None else \
        inv.settings().postprocess.cjson_max_bytes
    results = [cj.check_file(Path(f), limit) for f in files]
    if as_json:
        emit_json(results)
    else:
        for r in results:
            where = f" at line {r['line']}, column {r['column']} (byte {r['offset']})" \
                if r.get("offset") is not None else ""
            reason = f": {r['reason']}" if r.get("reason") else ""
            click.echo(f"{r['path']}: {r['status']}{where}{reason}")
    if any(r["status"] != "canonical" for r in results):
        sys.exit(1)
