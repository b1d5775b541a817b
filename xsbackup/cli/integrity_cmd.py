"""``xsbackup check``, ``diff`` and ``find``: is the store intact, and what changed."""

from __future__ import annotations

import sys
from typing import Any

import click

from xsbackup.cli._common import emit_json, with_context
from xsbackup.context import Context


def _progress(quiet: bool) -> Any:
    """A progress printer to stderr (None when quiet, or stderr is not a terminal)."""
    if quiet or not sys.stderr.isatty():
        return None
    return lambda what: click.echo(f"checking {what}", err=True)


@click.command("check")
@click.argument("serial", required=False)
@click.option("--volume", help="Only this volume.")
@click.option("--snapshot", "snapshot", metavar="ID",
              help="Only this snapshot (an id, latest, or a time).")
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), metavar="PERCENT",
              help="Also read and hash this percentage of the inodes; on a whole client "
                   "the sample rotates from one check to the next.")
@click.option("--read-data", is_flag=True, help="Read and hash every inode.")
@click.option("--repair-manifests", is_flag=True,
              help="First write the manifests that are missing (nothing else is written).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def check(ctx: Context, serial: str | None, volume: str | None, snapshot: str | None,
          sample: float | None, read_data: bool, repair_manifests: bool,
          as_json: bool) -> None:
    """Check SERIAL's snapshots (every client's without SERIAL): structure, and content
    against the manifests. Exits 21 when damage is found, 22 for other problems."""
    from xsbackup.errors import DamageFound, StructureProblems
    from xsbackup.integrity import check as core
    from xsbackup.store import iter_clients

    if sample is not None and read_data:
        raise click.UsageError("--sample and --read-data exclude each other")
    if serial is None and (volume or snapshot):
        raise click.UsageError("--volume and --snapshot need a SERIAL")
    if serial is not None:
        ctx.registry.get(serial)
    serials = [serial] if serial else list(iter_clients(ctx.store))
    progress = _progress(as_json)
    reports = {}
    for sn in serials:
        repaired = core.repair_manifests(ctx, sn, volume, progress) if repair_manifests else []
        report = core.run(ctx, sn, volume, snapshot, read_data=read_data, sample=sample,
                          progress=progress)
        report.repaired = repaired
        reports[sn] = report
    damaged = sum(len(r.damaged) for r in reports.values())
    problems = sum(len(r.findings) for r in reports.values())
    if as_json:
        emit_json({"clients": {sn: r.as_dict() for sn, r in reports.items()},
                   "damaged_files": damaged, "problems": problems})
    else:
        for sn, r in reports.items():
            for what in r.repaired:
                click.echo(f"manifest written: {sn}/{what}")
            for f in r.findings:
                click.echo(f.line())
            click.echo(f"{sn}: {r.snapshots} snapshots, {r.files} files, {r.inodes_read} of "
                       f"{r.inodes} inodes read ({r.bytes_read} bytes): "
                       f"{len(r.damaged)} damaged, {len(r.findings) - len(r.damaged)} "
                       "other problems")
    if damaged:
        raise DamageFound(f"{damaged} damaged files found")
    if problems:
        raise StructureProblems(f"{problems} problems found")


DIFF_MARK = {"added": "+", "removed": "-", "modified": "M", "metadata": "m"}


@click.command("diff")
@click.argument("serial")
@click.argument("a")
@click.argument("b")
@click.option("--volume", help="The volume (needed when the client has several).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def diff(ctx: Context, serial: str, a: str, b: str, volume: str | None,
         as_json: bool) -> None:
    """What changed in SERIAL's volume from snapshot A to snapshot B (ids, latest, or
    ISO times): added (+), removed (-), modified (M) and metadata-only (m) changes."""
    from xsbackup.cli._common import size_text
    from xsbackup.integrity import diff as core

    if as_json:  # the document cli.entry prints for this line without click
        from xsbackup.cli.diff_json import document

        emit_json(document(ctx, serial, a, b, volume))
        return
    ctx.registry.get(serial)
    vol, sa, sb, changes = core.diff(ctx, serial, a, b, volume)
    counts = core.summary(changes)
    for c in changes:
        sizes = {"added": size_text(c.size_b), "removed": size_text(c.size_a)}.get(
            c.kind, f"{size_text(c.size_a)} -> {size_text(c.size_b)}")
        what = f" [{', '.join(c.what)}]" if c.what else ""
        click.echo(f"{DIFF_MARK[c.kind]} {c.path}{'/' if c.type == 'dir' else ''}  "
                   f"{sizes if c.type == 'file' else c.type}{what}")
    click.echo(f"{vol} {sa} -> {sb}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


@click.command("find")
@click.argument("serial")
@click.argument("pattern")
@click.option("--volume", help="Only this volume.")
@click.option("--newest", type=click.IntRange(1), metavar="N",
              help="Only the N newest snapshots of each volume.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def find(ctx: Context, serial: str, pattern: str, volume: str | None, newest: int | None,
         as_json: bool) -> None:
    """Which of SERIAL's snapshots hold PATTERN (a path or a glob; without a '/', the
    last component is matched), and which versions differ."""
    from xsbackup.cli._common import size_text
    from xsbackup.integrity import find as core

    ctx.registry.get(serial)
    matches = core.find(ctx, serial, pattern, volume, newest)
    if as_json:
        emit_json([m.as_dict() for m in matches])
        return
    if not matches:
        click.echo("no match")
    for m in matches:
        click.echo(f"{m.volume}/{m.path}: {len(m.versions)} version"
                   f"{'s' if len(m.versions) != 1 else ''}")
        for v in m.versions:
            what = f"{size_text(v.size)} blake2b {v.blake2b[:16]}" if v.blake2b and \
                v.type == "file" else v.type
            click.echo(f"  {what}  in {', '.join(v.snapshots)}")
