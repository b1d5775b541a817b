"""Running one xsbackup command on every fleet server, through fabric's ``ThreadingGroup``.

Each server runs its own ``xsbackup --root ROOT … --json`` over SSH. A server that cannot
be reached, refuses the login, takes longer than the timeout, exits non-zero or prints
something that is not JSON becomes one failed ``Answer`` with its reason; it never stops
or delays the others beyond the timeout. The timeout bounds each step on one server: the
TCP connect, the SSH banner, the login and the command itself.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import paramiko
from fabric import Config, Connection, ThreadingGroup  # type: ignore[import-untyped]
from fabric.exceptions import GroupException  # type: ignore[import-untyped]
from fabric.runners import Remote  # type: ignore[import-untyped]
from invoke.exceptions import CommandTimedOut

from xsbackup.fleet.inventory import FleetServer

# The placeholder every fleet command line starts with: ``<command> --root <root>``.
XSBACKUP = "{xsbackup}"
# The placeholder for the server's state root (quoted), where a line needs its paths.
ROOT = "{root}"


@dataclass
class Answer:
    """One server's reply: ``data`` (the parsed JSON, or the raw text) when ``ok``,
    else ``error``, one line saying why."""

    server: FleetServer
    ok: bool
    data: Any = None
    error: str = ""
    seconds: float = 0.0


class _TimedRemote(Remote):  # type: ignore[misc]
    """fabric's remote runner, with its timeout made exact. invoke's timer kills a
    command by closing its channel, then tells a timeout by the timer thread having
    ended; the command's end can be seen first, and the run then looked like a plain
    exit -1. Here the kill is noted before the channel closes. A kill that finds the
    connection already gone (closed after a run that ended meanwhile) is not an error
    in the timer's thread."""

    _killed = False

    def kill(self) -> None:
        self._killed = True
        with contextlib.suppress(Exception):
            super().kill()

    @property
    def timed_out(self) -> bool:
        return self._killed or bool(super().timed_out)


class ServerConnection(Connection):  # type: ignore[misc]
    """A fabric ``Connection`` to one fleet server that puts that server's own
    ``xsbackup --root ROOT`` where a command line says ``{xsbackup}`` (and ``ROOT``
    where it says ``{root}``)."""

    def __init__(self, server: FleetServer, timeout: float) -> None:
        kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout,
                                  "channel_timeout": timeout}
        if server.identity:  # that key only: no agent, no probing of ~/.ssh
            kwargs.update(key_filename=[server.identity], allow_agent=False,
                          look_for_keys=False)
        super().__init__(host=server.address, user=server.user, port=server.port,
                         connect_timeout=max(1, math.ceil(timeout)), connect_kwargs=kwargs,
                         config=Config(overrides={"load_ssh_configs": False,
                                                  "runners": {"remote": _TimedRemote}}))
        self.server = server
        self.seconds = 0.0

    def run(self, command: str, **kwargs: Any) -> Any:
        prefix = shlex.join([self.server.command, "--root", self.server.root])
        began = time.monotonic()
        try:
            return super().run(command.replace(XSBACKUP, prefix)
                               .replace(ROOT, shlex.quote(self.server.root)), **kwargs)
        finally:
            self.seconds = time.monotonic() - began


def reason(exc: BaseException, timeout: float) -> str:
    """One line for why a server did not answer."""
    if isinstance(exc, CommandTimedOut):
        return f"timed out: no answer within {timeout:g}s"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "unreachable: connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"unreachable: timed out after {timeout:g}s"
    if isinstance(exc, paramiko.AuthenticationException):
        return "unreachable: SSH login refused"
    if isinstance(exc, OSError):
        return f"unreachable: {exc.strerror or exc}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"failed: {text[:200]}"


def last_line(text: str) -> str:
    """The last non-blank line of a command's output (its error), or ``no message``."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no message"


def _answer(server: FleetServer, result: Any, parse: Callable[[str], Any],
            timeout: float, seconds: float) -> Answer:
    if isinstance(result, BaseException):
        return Answer(server, False, error=reason(result, timeout), seconds=seconds)
    if result.exited != 0:
        return Answer(server, False, seconds=seconds,
                      error=f"exit {result.exited}: {last_line(result.stderr or result.stdout)}")
    try:
        data = parse(result.stdout)
    except ValueError as e:
        head = " ".join(result.stdout.split())[:60]
        return Answer(server, False, error=f"garbage answer ({e}): {head!r}", seconds=seconds)
    return Answer(server, True, data=data, seconds=seconds)


def parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValueError("not JSON") from e


def run_all(servers: Sequence[FleetServer], command: str, *, timeout: float,
            parallel: int | None = None,
            parse: Callable[[str], Any] = parse_json) -> list[Answer]:
    """Run ``command`` (a shell line starting with ``{xsbackup}``) on every server, at
    most ``parallel`` at once (all by default); one ``Answer`` per server, in order."""
    width = len(servers) if not parallel else max(1, parallel)
    answers: list[Answer] = []
    for start in range(0, len(servers), width):
        batch = servers[start:start + width]
        conns = [ServerConnection(s, timeout) for s in batch]
        try:
            results: Any = ThreadingGroup.from_connections(conns).run(
                command, hide=True, warn=True, timeout=max(1, math.ceil(timeout)),
                in_stream=False)
        except GroupException as e:
            results = e.result
        finally:
            for c in conns:
                c.close()
        answers.extend(_answer(c.server, results.get(c, RuntimeError("no result")), parse,
                               timeout, c.seconds) for c in conns)
    return answers
