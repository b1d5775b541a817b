"""The fleet's command timeout is told as a timeout even when invoke's timer thread is
still finishing its kill as the command's end is seen (a race seen in CI: the slow server
came back as "exit -1", and the kill raised in the timer's thread)."""

from __future__ import annotations

import pytest

from xsbackup.fleet.inventory import FleetServer
from xsbackup.fleet.remote import ServerConnection, _TimedRemote


class GoneChannel:
    """A channel whose connection was closed under it: closing it again fails."""

    def close(self) -> None:
        raise EOFError("the transport is closed")


def server() -> FleetServer:
    return FleetServer(name="b", address="127.0.0.1", user="admin", port=22,
                       root="/srv/xsbackup", identity=None, command="xsbackup", weight=1.0,
                       site="")


def test_connections_run_commands_with_the_exact_timeout_runner() -> None:
    conn = ServerConnection(server(), 5.0)
    assert conn.config.runners.remote is _TimedRemote
    assert isinstance(conn._remote_runner(), _TimedRemote)


def test_a_kill_is_a_timeout_at_once_and_never_raises_in_the_timer_thread() -> None:
    runner = _TimedRemote(context=ServerConnection(server(), 5.0))
    assert not runner.timed_out
    runner.channel = GoneChannel()
    runner.kill()  # as invoke's timer calls it: no exception escapes
    assert runner.timed_out  # whether or not the timer's thread has ended yet


@pytest.mark.parametrize("timeout", [0.5, 6.0])
def test_the_reason_names_the_timeout(timeout: float) -> None:
    from invoke.exceptions import CommandTimedOut

    from xsbackup.fleet.remote import reason

    assert reason(CommandTimedOut(None, timeout), timeout) == \
        f"timed out: no answer within {timeout:g}s"
