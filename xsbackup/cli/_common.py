"""What every command shares: the click context, JSON output, the store decorator and
the size option type. Sizes are printed with ``xsbackup.units.format_bytes`` (IEC)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from xsbackup import config as config_mod
from xsbackup import units
from xsbackup.cli.output import emit_json as emit_json  # noqa: PLC0414 (re-exported)

F = TypeVar("F", bound=Callable[..., Any])


class Invocation:
    """The global options of one command line (``--root``, ``--config``)."""

    def __init__(self, root: str | None, config_file: str | None) -> None:
        self.root = root
        self.config_file = config_file
        self._settings: config_mod.Settings | None = None

    def settings(self, **overrides: Any) -> config_mod.Settings:
        if self._settings is None or overrides:
            self._settings = config_mod.load(self.root, self.config_file, overrides)
        return self._settings


pass_invocation = click.make_pass_decorator(Invocation)


def with_context(fn: F) -> F:
    """Load settings, require an initialised state root, set up logging, and call the
    command with the process's one ``Context``."""

    @functools.wraps(fn)
    @pass_invocation
    def wrapper(inv: Invocation, *args: Any, **kwargs: Any) -> Any:
        from xsbackup import logs
        from xsbackup.context import Context

        settings = inv.settings()
        ctx = Context.open(settings)
        logs.setup(settings)
        return fn(ctx, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def size_text(value: object) -> str:
    """A recorded size for a listing: IEC units, or ``?`` when it was never measured."""
    if isinstance(value, int) and not isinstance(value, bool):
        return units.format_bytes(value)
    return "?"


def size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """The callback of a size option: bytes, or a number with an IEC or SI unit
    (``units.parse_size``); a bad one is a usage error (exit 2) naming the option."""
    if value is None:
        return None
    try:
        return units.parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None
