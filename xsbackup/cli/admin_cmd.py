"""``xsbackup admin``: the people who may use the HTTP API and web UI.

Like the rest of the CLI, each command only parses, calls the core (``users``,
``registration``) and prints; errors travel up to ``main()``.
"""

from __future__ import annotations

import sys

import click

from xsbackup.cli._common import emit_json, with_context
from xsbackup.context import Context
from xsbackup.errors import UserExists
from xsbackup.web import users


def _read_password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    text: str = click.prompt(f"Password for {name}", hide_input=True,
                             confirmation_prompt=True)
    return text


@click.group()
def admin() -> None:
    """Manage the people who may use the HTTP API and web UI."""


@admin.command("add-user")
@click.argument("name")
@click.option("--role", type=click.Choice(list(users.ROLES)), default="admin",
              show_default=True, help="admin may change things; teacher only reads.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@with_context
def add_user(ctx: Context, name: str, role: str,
             password_stdin: bool) -> None:
    """Create user NAME (asks for the password twice unless --password-stdin)."""
    if users.check_name(name) in users.load(ctx.store):
        raise UserExists(f"user {name} already exists")
    user = users.add_user(ctx.store, name, _read_password(name, password_stdin), role)
    click.echo(f"added {user.role} {user.name}")


@admin.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@with_context
def passwd(ctx: Context, name: str, password_stdin: bool) -> None:
    """Set the password of user NAME (their web sessions end)."""
    users.get_user(ctx.store, name)
    users.set_password(ctx.store, name, _read_password(name, password_stdin))
    click.echo(f"password of {name} changed")


@admin.command("disable-user")
@click.argument("name")
@with_context
def disable_user(ctx: Context, name: str) -> None:
    """Refuse every login of user NAME (takes effect at once, sessions included)."""
    users.disable(ctx.store, name)
    click.echo(f"{name} disabled")


@admin.command("enable-user")
@click.argument("name")
@with_context
def enable_user(ctx: Context, name: str) -> None:
    """Allow a disabled user NAME to log in again."""
    users.enable(ctx.store, name)
    click.echo(f"{name} enabled")


@admin.command("list-users")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def list_users(ctx: Context, as_json: bool) -> None:
    """List users (never their password hashes)."""
    rows = [u.public() for u in users.list_users(ctx.store)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no users")
    for r in rows:
        state = " (disabled)" if r["disabled"] else ""
        click.echo(f"{r['name']:<24} {r['role']:<8} created {r['created']}{state}")
