"""What every command shares: the click context, JSON output and the store decorator."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from xsbackup import config as config_mod

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, root: str | None, config_file: str | None) -> None:
        self.root = root
        self.config_file = config_file
        self._settings: config_mod.Settings | None = None

    def settings(self, **overrides: Any) -> config_mod.Settings:
        if self._settings is None or overrides:
            self._settings = config_mod.load(self.root, self.config_file, overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Ctx)


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def with_store(fn: F) -> F:
    """Load settings, require an initialised state root, set up logging."""

    @functools.wraps(fn)
    @pass_ctx
    def wrapper(ctx: Ctx, *args: Any, **kwargs: Any) -> Any:
        from xsbackup import logs
        from xsbackup.store import Store

        settings = ctx.settings()
        store = Store(settings.root).require()
        logs.setup(settings)
        return fn(settings, store, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
