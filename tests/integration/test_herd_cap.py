"""A herd: 200 clients at once ask a real ``xsbackup serve`` over HTTP whether they may
back up, then the granted ones and 40 refused ones arrive by the real forced command, as
sshd runs it (8 at a time: each is a process start). The window
admits exactly its count over HTTP, and the forced command admits exactly the clients
HTTP granted: its own load limit (0: everyone without a reservation is refused) lets only
a reservation through. No answer is an error."""

from __future__ import annotations

import http.client
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server
from tests.integration.test_serve import start, stop
from xsbackup.clients.registry import Registry
from xsbackup.errors import LoadTooHigh, SnapshotNotFound

pytestmark = pytest.mark.integration
CLIENTS = 200
CAP = 10
ARRIVING_REFUSED = 40  # of the refused, how many also try the forced command
ARRIVING_AT_ONCE = 8   # forced commands at a time: the machine's CPUs are not the herd's
# A download of a volume that has no snapshot: admission first, then a refusal of its own
# (exit 51), so an admitted client is told apart from a refused one without a transfer.
PROBE = "rsync --server --sender -logDtpre.iLsfxCIvu . documents/latest/"


def ask(port: int, serial: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/backup/1/available/{serial}")
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Retry-After") or ""
    finally:
        conn.close()


def arrive(root: Path, serial: str) -> tuple[int, str]:
    env = {"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": PROBE,
           "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22"}
    r = subprocess.run([XSBACKUP, "--root", str(root), "ssh-command", "--client", serial],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    return r.returncode, r.stderr


def arrive_all(root: Path, answers: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """The granted clients and the first ``ARRIVING_REFUSED`` refused ones arrive by the
    forced command: {serial: (exit code, stderr)}."""
    granted = sorted(sn for sn, (status, _) in answers.items() if status == 200)
    refused = sorted(sn for sn, (status, _) in answers.items() if status == 503)
    arriving = granted + refused[:ARRIVING_REFUSED]
    with ThreadPoolExecutor(max_workers=ARRIVING_AT_ONCE) as pool:
        return dict(zip(arriving, pool.map(lambda sn: arrive(root, sn), arriving),
                        strict=True))


@pytest.mark.parametrize("forked", [False, True], ids=["alone", "forked"])
def test_the_cap_holds_across_http_and_the_forced_command(server: Server,
                                                          forked: bool) -> None:
    """``forked``: the clients arrive while serve runs, so each forced command is a fork
    of serve's pre-loaded server (``cli.forkserver``); otherwise after serve stopped."""
    # The forced command reads this file; serve's own load limit comes from its
    # environment (start(): out of reach), so only the HTTP window decides over HTTP.
    server.configure(f"[availability]\nwindow_count = {CAP}\nnew_per_window = {CLIENTS}\n"
                     "[admission]\nmax_load = 0\n[log]\nlevel = \"debug\"\n")
    registry = Registry(server.store)
    serials = [f"HERD{i:06d}" for i in range(CLIENTS)]
    for sn in serials:
        registry.add(sn, None)
    served = start(server.root, "--no-ssh")
    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            answers = dict(zip(serials, pool.map(lambda sn: ask(served.http_port, sn),
                                                 serials), strict=True))
        if forked:
            codes = arrive_all(server.root, answers)
    finally:
        assert stop(served) == 0
    if not forked:
        codes = arrive_all(server.root, answers)
    log = (server.root / "log" / "xsbackup.log").read_text()
    assert log.count("served by the forced command server") == (len(codes) if forked else 0)
    granted = {sn for sn, (status, _) in answers.items() if status == 200}
    refused = sorted(sn for sn, (status, _) in answers.items() if status == 503)
    assert len(granted) == CAP
    assert len(refused) == CLIENTS - CAP  # every answer is a 200 or a 503: no error
    assert all(int(answers[sn][1]) >= 1 for sn in refused)  # each says when to come back
    assert len(os.listdir(server.root / "admissions")) == CAP
    # Then they arrive by SSH: the forced command sees the very grants HTTP made.
    assert set(codes) == granted | set(refused[:ARRIVING_REFUSED])
    admitted = {sn for sn, (code, err) in codes.items()
                if code == SnapshotNotFound.exit_code and "has no snapshot" in err}
    load_refused = {sn for sn, (code, err) in codes.items()
                    if code == LoadTooHigh.exit_code and "load average" in err}
    assert admitted == granted
    assert load_refused == set(refused[:ARRIVING_REFUSED])
