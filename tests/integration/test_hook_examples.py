"""The example hooks in hooks/, for real: as scripts, and installed in a state root that
real rsync reaches through real OpenSSH sshd.

quiet-hours (pre-ingest), notify-email (on-failure; sendmail and SMTP), replicate-offsite
(post-snapshot; local and over a second sshd).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import pwd
import re
import shlex
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from tests.conftest import Server, Sshd, free_port, running_sshd

pytestmark = pytest.mark.integration

HOOKS = Path(__file__).resolve().parents[2] / "hooks"
QUIET_HOURS = HOOKS / "quiet-hours"
NOTIFY_EMAIL = HOOKS / "notify-email"
REPLICATE = HOOKS / "replicate-offsite"
SN = "SHF00112233"


def run_hook(hook: Path, env: Mapping[str, str], timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    """Run an example hook directly (through its #! line) with only ``env`` and PATH."""
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.run([str(hook)], env=full, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def install_wrapper(root: Path, stage: str, name: str, hook: Path,
                    env: Mapping[str, str]) -> Path:
    """What the README tells admins to do: a wrapper that sets the hook's variables."""
    d = root / "hooks" / stage
    d.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"exec {shlex.quote(sys.executable)} {shlex.quote(str(hook))}")
    path = d / name
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o700)
    return path


def make_source(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "same.txt").write_bytes(b"unchanged\n" * 100)
    (base / "edit.txt").write_bytes(b"version 1\n")
    (base / "sub").mkdir(exist_ok=True)
    (base / "sub" / "deep.bin").write_bytes(os.urandom(64 * 1024))
    (base / "link").unlink(missing_ok=True)
    (base / "link").symlink_to("sub/deep.bin")
    return base


# ---- quiet-hours -------------------------------------------------------------------------


@pytest.mark.parametrize(("hours", "now", "inside"), [
    ("22:00-06:00", "2024-05-01T23:30:00", True),
    ("22:00-06:00", "2024-05-01T22:00:00", True),  # start inclusive
    ("22:00-06:00", "2024-05-02T00:00:00", True),
    ("22:00-06:00", "2024-05-02T05:59:59", True),
    ("22:00-06:00", "2024-05-02T06:00:00", False),  # end exclusive
    ("22:00-06:00", "2024-05-01T21:59:00", False),
    ("22:00-06:00", "2024-05-01T12:00:00", False),
    ("01:00-03:00", "2024-05-01T02:00:00", True),
    ("01:00-03:00", "2024-05-01T23:00:00", False),
    ("08:00-12:00, 13:30-17:00", "2024-05-01T12:30:00", False),
    ("08:00-12:00, 13:30-17:00", "2024-05-01T16:59:00", True),
    ("23:00-24:00", "2024-05-01T23:59:00", True),
    ("00:00-24:00", "2024-05-01T07:00:00", True),
])
def test_quiet_hours_windows(hours: str, now: str, inside: bool) -> None:
    res = run_hook(QUIET_HOURS, {"XSBACKUP_QUIET_HOURS": hours, "XSBACKUP_NOW": now,
                                 "TZ": "UTC"})
    if inside:
        assert res.returncode == 1, res.stdout + res.stderr
        first = res.stdout.splitlines()[0]
        assert first.startswith("backups are paused during quiet hours ")
        assert first.split()[-1] in hours.replace(" ", "").split(",")
    else:
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout == ""
    assert res.stderr == ""


def test_quiet_hours_refusal_line() -> None:
    res = run_hook(QUIET_HOURS, {"XSBACKUP_QUIET_HOURS": "22:00-06:00",
                                 "XSBACKUP_NOW": "2024-05-01T23:30:00"})
    assert res.returncode == 1
    assert res.stdout.splitlines()[0] == "backups are paused during quiet hours 22:00-06:00"


@pytest.mark.parametrize(("env", "inside"), [
    # 14:30 UTC is 23:30 in Tokyo (no DST) and 15:30 in London (BST).
    ({"XSBACKUP_QUIET_TZ": "Asia/Tokyo", "XSBACKUP_NOW": "2024-05-01T14:30:00+00:00"}, True),
    ({"XSBACKUP_QUIET_TZ": "Europe/London", "XSBACKUP_NOW": "2024-05-01T14:30:00+00:00"},
     False),
    # A time without an offset is wall-clock time in the configured zone.
    ({"XSBACKUP_QUIET_TZ": "Asia/Tokyo", "XSBACKUP_NOW": "2024-05-01T14:30:00"}, False),
    # No XSBACKUP_QUIET_TZ: the local zone, i.e. TZ as xsbackup passes it on.
    ({"TZ": "Asia/Tokyo", "XSBACKUP_NOW": "2024-05-01T14:30:00Z"}, True),
    ({"TZ": "UTC", "XSBACKUP_NOW": "2024-05-01T14:30:00Z"}, False),
])
def test_quiet_hours_time_zones(env: dict[str, str], inside: bool) -> None:
    res = run_hook(QUIET_HOURS, {"XSBACKUP_QUIET_HOURS": "22:00-06:00", **env})
    assert res.returncode == (1 if inside else 0), res.stdout


def test_quiet_hours_uses_the_clock_without_override() -> None:
    now = dt.datetime.now(dt.UTC)
    around = f"{now - dt.timedelta(hours=1):%H:%M}-{now + dt.timedelta(hours=1):%H:%M}"
    later = f"{now + dt.timedelta(hours=2):%H:%M}-{now + dt.timedelta(hours=3):%H:%M}"
    res = run_hook(QUIET_HOURS, {"XSBACKUP_QUIET_HOURS": around, "TZ": "UTC"})
    assert res.returncode == 1
    assert res.stdout.splitlines()[0] == f"backups are paused during quiet hours {around}"
    res = run_hook(QUIET_HOURS, {"XSBACKUP_QUIET_HOURS": later, "TZ": "UTC"})
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("env", [
    {},
    {"XSBACKUP_QUIET_HOURS": ""},
    {"XSBACKUP_QUIET_HOURS": "22-06"},
    {"XSBACKUP_QUIET_HOURS": "25:00-06:00"},
    {"XSBACKUP_QUIET_HOURS": "22:60-06:00"},
    {"XSBACKUP_QUIET_HOURS": "24:00-06:00"},
    {"XSBACKUP_QUIET_HOURS": "06:00-06:00"},
    {"XSBACKUP_QUIET_HOURS": "22:00-06:00", "XSBACKUP_QUIET_TZ": "Mars/Olympus_Mons"},
    {"XSBACKUP_QUIET_HOURS": "22:00-06:00", "XSBACKUP_NOW": "yesterday"},
])
def test_quiet_hours_invalid_configuration_fails_closed(env: dict[str, str]) -> None:
    res = run_hook(QUIET_HOURS, env)
    assert res.returncode == 2, res.stdout
    (line,) = res.stdout.splitlines()
    assert line.startswith("quiet-hours: ")
    assert res.stderr == ""


def _quiet_wrapper(server: Server, now: str) -> None:
    install_wrapper(server.root, "pre-ingest", "10-quiet-hours", QUIET_HOURS,
                    {"XSBACKUP_QUIET_HOURS": "22:00-06:00", "XSBACKUP_NOW": now})


def _nothing_stored(server: Server) -> None:
    store = server.store
    assert store.volumes(SN) == []
    assert store.incoming_ids(SN, "documents") == []
    assert store.snapshot_ids(SN, "documents") == []
    assert [p for p in store.queue_dir.iterdir() if not p.name.startswith(".")] == []


def test_quiet_hours_vetoes_a_real_backup(server: Server, sshd: Sshd, tmp_path: Path) -> None:
    key = server.add_client(SN)
    _quiet_wrapper(server, "2024-05-01T23:30:00")  # inside, across midnight
    src = make_source(tmp_path / "src")
    # The rsync client exits with ssh's status (50, HookVeto), or 12 when it noticed the
    # closed stream before ssh's exit status arrived (a race inside rsync)...
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode in (50, 12), r.stderr
    assert r.stderr.splitlines()[0] == ("xsbackup: refused by pre-ingest hook 10-quiet-hours: "
                                        "backups are paused during quiet hours 22:00-06:00")
    _nothing_stored(server)
    # ...ssh itself always carries the distinct code, and only the one line.
    res = sshd.ssh(key, "rsync --server -logDtpre.iLsfxCIvu . documents/")
    assert res.returncode == 50
    assert res.stderr.splitlines() == [r.stderr.splitlines()[0]]
    _nothing_stored(server)

    _quiet_wrapper(server, "2024-05-02T03:00:00")  # after midnight, still inside
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode in (50, 12), r.stderr
    assert "backups are paused during quiet hours 22:00-06:00" in r.stderr
    _nothing_stored(server)


def test_quiet_hours_lets_a_real_backup_through_outside(server: Server, sshd: Sshd,
                                                        tmp_path: Path) -> None:
    key = server.add_client(SN)
    _quiet_wrapper(server, "2024-05-01T12:00:00")
    src = make_source(tmp_path / "src")
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    (sid,) = server.store.incoming_ids(SN, "documents")
    stored = server.store.incoming_dir(SN, "documents") / sid
    assert (stored / "sub" / "deep.bin").read_bytes() == (src / "sub" / "deep.bin").read_bytes()


# ---- notify-email: sendmail ------------------------------------------------------------

FAILURE_ENV = {
    "XSBACKUP_STAGE": "on-failure", "XSBACKUP_ROOT": "/srv/xsbackup",
    "XSBACKUP_CLIENT": SN, "XSBACKUP_VOLUME": "documents", "XSBACKUP_REMOTE": "192.0.2.7",
    "XSBACKUP_ERROR": "rsync exited 23 on documents", "XSBACKUP_RSYNC_EXIT": "23",
}


@dataclass
class FakeSendmail:
    path: Path
    args: Path
    message: Path

    def received(self) -> EmailMessage:
        msg = BytesParser(policy=policy.default).parsebytes(self.message.read_bytes())
        assert isinstance(msg, EmailMessage)
        return msg


@pytest.fixture
def sendmail(tmp_path: Path) -> FakeSendmail:
    d = tmp_path / "sendmail"
    d.mkdir()
    fake = FakeSendmail(d / "sendmail", d / "args", d / "message")
    fake.path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{fake.args}"\n'
                         f'cat > "{fake.message}"\n')
    fake.path.chmod(0o755)
    return fake


def _body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def test_notify_email_through_sendmail(sendmail: FakeSendmail) -> None:
    res = run_hook(NOTIFY_EMAIL, {**FAILURE_ENV, "XSBACKUP_MAIL_SENDMAIL": str(sendmail.path),
                                  "XSBACKUP_MAIL_TO": "admin@example.org, ops@example.org",
                                  "XSBACKUP_MAIL_FROM": "backup@example.org"})
    assert res.returncode == 0, res.stdout
    assert res.stdout == ""
    assert sendmail.args.read_text().split() == ["-t", "-oi"]
    msg = sendmail.received()
    assert msg["To"] == "admin@example.org, ops@example.org"
    assert msg["From"] == "backup@example.org"
    assert msg["Subject"] == f"[xsbackup] backup failed: {SN} documents"
    assert msg["Date"]
    assert msg["Message-ID"]
    assert msg["Auto-Submitted"] == "auto-generated"
    body = _body(msg)
    for line in (f"Client:      {SN}", "Volume:      documents",
                 "Error:       rsync exited 23 on documents", "rsync exit:  23",
                 "Remote:      192.0.2.7", "Stage:       on-failure"):
        assert line in body.splitlines(), body


def test_notify_email_default_sender_and_post_snapshot(sendmail: FakeSendmail) -> None:
    env = {"XSBACKUP_STAGE": "post-snapshot", "XSBACKUP_CLIENT": SN,
           "XSBACKUP_VOLUME": "documents", "XSBACKUP_SNAPSHOT_ID": "2024-05-01T120000Z",
           "XSBACKUP_SNAPSHOT_PATH": "/srv/x/snapshots/2024-05-01T120000Z",
           "XSBACKUP_STATS": '{"files": 12, "new_bytes": 345}',
           "XSBACKUP_MAIL_SENDMAIL": str(sendmail.path), "XSBACKUP_MAIL_TO": "a@example.org"}
    res = run_hook(NOTIFY_EMAIL, env)
    assert res.returncode == 0, res.stdout
    msg = sendmail.received()
    assert msg["Subject"] == f"[xsbackup] new snapshot: {SN} documents 2024-05-01T120000Z"
    assert msg["From"] == f"xsbackup@{socket.getfqdn()}"
    body = _body(msg).splitlines()
    assert "  files: 12" in body
    assert "  new_bytes: 345" in body
    assert not [ln for ln in body if ln.startswith("Error:")]


@pytest.mark.parametrize(("script", "expect"), [
    ('echo "sendmail: queue directory full" >&2\nexit 75',
     "exited 75: sendmail: queue directory full"),
    (None, "no sendmail at"),
])
def test_notify_email_reports_why_sendmail_failed(tmp_path: Path, script: str | None,
                                                  expect: str) -> None:
    program = tmp_path / "sendmail"
    if script is not None:
        program.write_text("#!/bin/sh\ncat > /dev/null\n" + script + "\n")
        program.chmod(0o755)
    res = run_hook(NOTIFY_EMAIL, {**FAILURE_ENV, "XSBACKUP_MAIL_SENDMAIL": str(program),
                                  "XSBACKUP_MAIL_TO": "a@example.org"})
    assert res.returncode == 1
    (line,) = res.stdout.splitlines()
    assert line.startswith("notify-email: cannot send: ")
    assert expect in line


def test_notify_email_needs_a_recipient(sendmail: FakeSendmail) -> None:
    res = run_hook(NOTIFY_EMAIL, {**FAILURE_ENV, "XSBACKUP_MAIL_SENDMAIL": str(sendmail.path)})
    assert res.returncode == 2
    assert res.stdout.splitlines() == ["notify-email: XSBACKUP_MAIL_TO is not set"]
    assert not sendmail.message.exists()


def test_notify_email_on_a_real_failed_backup(server: Server, sshd: Sshd, tmp_path: Path,
                                              sendmail: FakeSendmail) -> None:
    """The server's rsync fails (exit 23): ingest runs on-failure, the hook mails."""
    key = server.add_client(SN)
    broken = tmp_path / "broken-rsync"
    broken.write_text("#!/bin/sh\necho 'simulated rsync failure' >&2\nexit 23\n")
    broken.chmod(0o755)
    server.configure(f'[ingest]\nrsync = "{broken}"\n')
    install_wrapper(server.root, "on-failure", "50-notify-email", NOTIFY_EMAIL,
                    {"XSBACKUP_MAIL_SENDMAIL": str(sendmail.path),
                     "XSBACKUP_MAIL_TO": "admin@example.org"})
    src = make_source(tmp_path / "src")
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode != 0
    msg = sendmail.received()
    assert msg["Subject"] == f"[xsbackup] backup failed: {SN} documents"
    body = _body(msg).splitlines()
    assert "rsync exit:  23" in body
    assert "Error:       rsync exited 23 on documents" in body
    assert "Remote:      127.0.0.1" in body
    assert f"State root:  {server.root}" in body


# ---- notify-email: SMTP ----------------------------------------------------------------


@dataclass
class Mail:
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    data: bytes = b""
    auth: bytes | None = None

    def message(self) -> EmailMessage:
        msg = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        return msg


class _SMTPSession(socketserver.StreamRequestHandler):
    """Just enough of RFC 5321 (and AUTH PLAIN) for smtplib to deliver one message."""

    server: _SMTPSink

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        mail = Mail()
        self.reply("220 sink.test ESMTP")
        while line := self.rfile.readline(4096):
            command = line.decode(errors="replace").rstrip("\r\n")
            verb, _, arg = command.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self.reply("250-sink.test")
                self.reply("250-AUTH PLAIN")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 sink.test")
            elif verb == "AUTH":
                mail.auth = base64.b64decode(arg.split(" ", 1)[1])
                self.reply("235 2.7.0 authenticated")
            elif verb == "MAIL":
                mail.sender = arg.split(":", 1)[1].split()[0].strip("<>")
                self.reply("250 ok")
            elif verb == "RCPT":
                mail.recipients.append(arg.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                mail.data = b"".join(lines)
                self.server.mails.append(mail)
                mail = Mail(auth=mail.auth)
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            elif verb in ("RSET", "NOOP"):
                self.reply("250 ok")
            else:
                self.reply("502 not implemented")


class _SMTPSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SMTPSession)
        self.mails: list[Mail] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def smtp_sink() -> Iterator[_SMTPSink]:
    sink = _SMTPSink()
    thread = threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
        thread.join(timeout=5)


def test_notify_email_through_smtp(smtp_sink: _SMTPSink) -> None:
    res = run_hook(NOTIFY_EMAIL, {
        **FAILURE_ENV, "XSBACKUP_MAIL_SMTP_HOST": "127.0.0.1",
        "XSBACKUP_MAIL_SMTP_PORT": str(smtp_sink.port),
        "XSBACKUP_MAIL_TO": "admin@example.org,ops@example.org",
        "XSBACKUP_MAIL_FROM": "backup@example.org",
        # sendmail must not be used when an SMTP host is configured
        "XSBACKUP_MAIL_SENDMAIL": "/nonexistent/sendmail"})
    assert res.returncode == 0, res.stdout
    (mail,) = smtp_sink.mails
    assert mail.sender == "backup@example.org"
    assert mail.recipients == ["admin@example.org", "ops@example.org"]
    assert mail.auth is None
    msg = mail.message()
    assert msg["Subject"] == f"[xsbackup] backup failed: {SN} documents"
    body = _body(msg).splitlines()
    assert "Error:       rsync exited 23 on documents" in body
    assert "rsync exit:  23" in body


def test_notify_email_smtp_login(smtp_sink: _SMTPSink) -> None:
    res = run_hook(NOTIFY_EMAIL, {
        **FAILURE_ENV, "XSBACKUP_MAIL_SMTP_HOST": "127.0.0.1",
        "XSBACKUP_MAIL_SMTP_PORT": str(smtp_sink.port), "XSBACKUP_MAIL_TO": "a@example.org",
        "XSBACKUP_MAIL_SMTP_USER": "xsbackup", "XSBACKUP_MAIL_SMTP_PASSWORD": "s3cret"})
    assert res.returncode == 0, res.stdout
    (mail,) = smtp_sink.mails
    assert mail.auth == b"\0xsbackup\0s3cret"


def test_notify_email_smtp_starttls_required_but_not_offered(smtp_sink: _SMTPSink) -> None:
    res = run_hook(NOTIFY_EMAIL, {
        **FAILURE_ENV, "XSBACKUP_MAIL_SMTP_HOST": "127.0.0.1",
        "XSBACKUP_MAIL_SMTP_PORT": str(smtp_sink.port), "XSBACKUP_MAIL_TO": "a@example.org",
        "XSBACKUP_MAIL_SMTP_STARTTLS": "yes"})
    assert res.returncode == 1
    (line,) = res.stdout.splitlines()
    assert line.startswith("notify-email: cannot send: SMTP 127.0.0.1:")
    assert "STARTTLS" in line
    assert smtp_sink.mails == []


def test_notify_email_smtp_unreachable() -> None:
    port = free_port()  # nothing listens there
    res = run_hook(NOTIFY_EMAIL, {
        **FAILURE_ENV, "XSBACKUP_MAIL_SMTP_HOST": "127.0.0.1",
        "XSBACKUP_MAIL_SMTP_PORT": str(port), "XSBACKUP_MAIL_TO": "a@example.org"})
    assert res.returncode == 1
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"notify-email: cannot send: SMTP 127.0.0.1:{port}: ")


# ---- replicate-offsite -----------------------------------------------------------------


def make_snapshot(vol: Path, sid: str, src: Path, prev: str | None) -> Path:
    """A snapshot as the store keeps it: written with --fake-super, linked to the previous."""
    snap = vol / "snapshots" / sid
    snap.parent.mkdir(parents=True, exist_ok=True)
    argv = ["rsync", "-a", "--fake-super"]
    if prev:
        argv.append(f"--link-dest={vol / 'snapshots' / prev}")
    subprocess.run([*argv, f"{src}/", f"{snap}/"], check=True)
    return snap


def source_with_privileged_metadata(base: Path) -> Path:
    """Files whose owner and setuid bit the store can only keep in user.rsync.%stat."""
    make_source(base)
    (base / "owned.txt").write_bytes(b"owned by someone else\n")
    (base / "suid").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(base / "suid", 0o4755)  # noqa: S103 - stored inert, kept in user.rsync.%stat
    if os.geteuid() == 0:
        os.chown(base / "owned.txt", 1234, 1234)
    return base


def xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def assert_same_tree(a: Path, b: Path, *, with_xattrs: bool = True) -> None:
    """Same names, types, modes, owners, mtimes, bytes, link targets and xattrs."""
    names_a = sorted(str(p.relative_to(a)) for p in a.rglob("*"))
    names_b = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    assert names_a == names_b
    for n in names_a:
        pa, pb = a / n, b / n
        sa, sb = pa.lstat(), pb.lstat()
        assert (sa.st_mode, sa.st_uid, sa.st_gid) == (sb.st_mode, sb.st_uid, sb.st_gid), n
        if stat.S_ISLNK(sa.st_mode):
            assert os.readlink(pa) == os.readlink(pb), n
        elif stat.S_ISREG(sa.st_mode):
            assert pa.read_bytes() == pb.read_bytes(), n
            assert sa.st_mtime_ns == sb.st_mtime_ns, n
        if with_xattrs:
            assert xattrs(pa) == xattrs(pb), n


def replica_env(snap: Path, replica: str, **more: str) -> dict[str, str]:
    return {"XSBACKUP_STAGE": "post-snapshot", "XSBACKUP_CLIENT": SN,
            "XSBACKUP_VOLUME": "documents", "XSBACKUP_SNAPSHOT_ID": snap.name,
            "XSBACKUP_SNAPSHOT_PATH": str(snap), "XSBACKUP_REPLICA": replica, **more}


S1, S2 = "2024-05-01T120000Z", "2024-05-02T120000Z"


@pytest.fixture
def two_snapshots(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Source tree and two store-like snapshots; the second changes edit.txt only."""
    src = source_with_privileged_metadata(tmp_path / "src")
    vol = tmp_path / "store" / SN / "documents"
    first = make_snapshot(vol, S1, src, None)
    (src / "edit.txt").write_bytes(b"version 2, longer\n")
    second = make_snapshot(vol, S2, src, S1)
    assert first.joinpath("same.txt").stat().st_ino == second.joinpath("same.txt").stat().st_ino
    return src, first, second


def ino(path: Path) -> int:
    return path.lstat().st_ino


def assert_linked(first: Path, second: Path) -> None:
    for unchanged in ("same.txt", "sub/deep.bin", "owned.txt", "suid"):
        assert ino(second / unchanged) == ino(first / unchanged), unchanged
    assert ino(second / "edit.txt") != ino(first / "edit.txt")


def test_replicate_local(two_snapshots: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, first, second = two_snapshots
    if os.geteuid() == 0:
        assert b"1234:1234" in xattrs(first / "owned.txt")["user.rsync.%stat"]
    replica = tmp_path / "replica"
    for snap in (first, second):
        res = run_hook(REPLICATE, replica_env(snap, str(replica)))
        assert res.returncode == 0, res.stdout
    vol = replica / SN / "documents"
    assert sorted(os.listdir(vol)) == [S1, S2]  # no .partial-* left
    assert_same_tree(first, vol / S1)
    assert_same_tree(second, vol / S2)
    assert_linked(vol / S1, vol / S2)

    before = (vol / S2 / "edit.txt").stat().st_ino
    res = run_hook(REPLICATE, replica_env(second, str(replica)))  # at-least-once hooks
    assert res.returncode == 0, res.stdout
    assert "already replicated" in res.stdout
    assert (vol / S2 / "edit.txt").stat().st_ino == before


def test_replicate_local_resumes_a_partial_copy(two_snapshots: tuple[Path, Path, Path],
                                                tmp_path: Path) -> None:
    _, first, _ = two_snapshots
    replica = tmp_path / "replica"
    partial = replica / SN / "documents" / f".partial-{S1}"
    (partial / "sub").mkdir(parents=True)
    (partial / "junk-from-an-old-attempt").write_bytes(b"junk")
    (partial / "same.txt").write_bytes(b"half")
    res = run_hook(REPLICATE, replica_env(first, str(replica)))
    assert res.returncode == 0, res.stdout
    assert sorted(os.listdir(replica / SN / "documents")) == [S1]
    assert_same_tree(first, replica / SN / "documents" / S1)


def test_replicate_failure_leaves_no_snapshot_name(two_snapshots: tuple[Path, Path, Path],
                                                   tmp_path: Path) -> None:
    _, first, _ = two_snapshots
    failing = tmp_path / "failing-rsync"
    failing.write_text("#!/bin/sh\necho 'rsync: simulated write error' >&2\nexit 11\n")
    failing.chmod(0o755)
    replica = tmp_path / "replica"
    res = run_hook(REPLICATE, replica_env(first, str(replica),
                                          XSBACKUP_REPLICA_RSYNC=str(failing)))
    assert res.returncode == 1
    assert res.stdout.splitlines()[0] == \
        "replicate-offsite: rsync (copy) exited 11: rsync: simulated write error"
    assert not (replica / SN / "documents" / S1).exists()


def test_replicate_without_xattrs(two_snapshots: tuple[Path, Path, Path],
                                  tmp_path: Path) -> None:
    _, first, _ = two_snapshots
    replica = tmp_path / "replica"
    res = run_hook(REPLICATE, replica_env(first, str(replica), XSBACKUP_REPLICA_XATTRS="0"))
    assert res.returncode == 0, res.stdout
    copy = replica / SN / "documents" / S1
    assert_same_tree(first, copy, with_xattrs=False)
    assert xattrs(first / "suid")
    assert xattrs(copy / "suid") == {}


@pytest.mark.parametrize(("more", "message"), [
    ({"XSBACKUP_STAGE": "on-failure"}, "install this hook in post-snapshot/"),
    ({"XSBACKUP_REPLICA": ""}, "XSBACKUP_REPLICA is not set"),
    ({"XSBACKUP_SNAPSHOT_ID": "../etc"}, "XSBACKUP_SNAPSHOT_ID='../etc' is malformed"),
    ({"XSBACKUP_VOLUME": ".."}, "is malformed"),
    ({"XSBACKUP_REPLICA_XATTRS": "maybe"}, "expected 1 or 0"),
])
def test_replicate_configuration_errors(tmp_path: Path, more: dict[str, str],
                                        message: str) -> None:
    snap = tmp_path / S1
    snap.mkdir()
    res = run_hook(REPLICATE, {**replica_env(snap, str(tmp_path / "replica")), **more})
    assert res.returncode == 2
    (line,) = res.stdout.splitlines()
    assert line.startswith("replicate-offsite: ")
    assert message in line
    assert not (tmp_path / "replica").exists()


@dataclass
class ReplicaHost:
    """A plain OpenSSH login (no forced command) for the replica."""

    port: int
    key: Path
    user: str
    log: Path

    def ssh_command(self) -> str:
        return " ".join(["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                         "-o", "LogLevel=ERROR", "-i", str(self.key), "-p", str(self.port),
                         "-l", self.user])


@pytest.fixture
def replica_host(host_key: Path, tmp_path: Path) -> Iterator[ReplicaHost]:
    """A second sshd (the conftest one only knows xsbackup's forced-command keys)."""
    d = tmp_path / "replica-sshd"
    d.mkdir()
    key = d / "id_replica"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "replica", "-f",
                    str(key)], check=True)
    keys = d / "authorized_keys"
    keys.write_text(key.with_suffix(".pub").read_text())
    extra = ("PermitRootLogin prohibit-password",)
    with running_sshd(d, host_key, keys, extra) as (port, log):
        yield ReplicaHost(port, key, pwd.getpwuid(os.getuid()).pw_name, log)


def test_replicate_over_ssh(two_snapshots: tuple[Path, Path, Path], tmp_path: Path,
                            replica_host: ReplicaHost) -> None:
    _, first, second = two_snapshots
    replica = tmp_path / "replica"  # rsync creates it (not its parents)
    dest = f"127.0.0.1:{replica}"
    ssh = replica_host.ssh_command()
    for snap in (first, second):
        res = run_hook(REPLICATE, replica_env(snap, dest, XSBACKUP_REPLICA_SSH=ssh))
        assert res.returncode == 0, res.stdout + replica_host.log.read_text()
    vol = replica / SN / "documents"
    assert sorted(os.listdir(vol)) == [S1, S2]  # the .partial-* copies are gone
    assert_same_tree(first, vol / S1)
    assert_same_tree(second, vol / S2)
    assert_linked(vol / S1, vol / S2)

    res = run_hook(REPLICATE, replica_env(second, dest, XSBACKUP_REPLICA_SSH=ssh))
    assert res.returncode == 0, res.stdout
    assert "already replicated" in res.stdout


def test_replicate_over_ssh_resumes_and_completes(two_snapshots: tuple[Path, Path, Path],
                                                  tmp_path: Path,
                                                  replica_host: ReplicaHost) -> None:
    """A run killed between passes left .partial-<id> and a half-made <id>."""
    _, first, _ = two_snapshots
    replica = tmp_path / "replica"
    vol = replica / SN / "documents"
    (vol / f".partial-{S1}").mkdir(parents=True)
    (vol / f".partial-{S1}" / "junk").write_bytes(b"junk")
    (vol / S1).mkdir()
    (vol / S1 / "same.txt").write_bytes(b"half")
    res = run_hook(REPLICATE, replica_env(first, f"127.0.0.1:{replica}",
                                          XSBACKUP_REPLICA_SSH=replica_host.ssh_command()))
    assert res.returncode == 0, res.stdout
    assert sorted(os.listdir(vol)) == [S1]
    assert_same_tree(first, vol / S1)


def test_replicate_over_ssh_unreachable(two_snapshots: tuple[Path, Path, Path],
                                        tmp_path: Path) -> None:
    _, first, _ = two_snapshots
    ssh = ("ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no "
           f"-o ConnectTimeout=5 -p {free_port()}")
    res = run_hook(REPLICATE, replica_env(first, f"127.0.0.1:{tmp_path / 'replica'}",
                                          XSBACKUP_REPLICA_SSH=ssh))
    assert res.returncode == 1
    first_line = res.stdout.splitlines()[0]
    assert re.fullmatch(r"replicate-offsite: rsync \(mkdir\) exited \d+: "
                        r"ssh: connect to host 127\.0\.0\.1 port \d+: Connection refused",
                        first_line), first_line


def test_replicate_real_snapshots_from_post_snapshot(server: Server, sshd: Sshd,
                                                     tmp_path: Path,
                                                     replica_host: ReplicaHost) -> None:
    """Real backups through sshd, post-processing runs the installed hook, twice."""
    from xsbackup.snapshots import postprocess

    key = server.add_client(SN)
    replica = tmp_path / "replica"
    install_wrapper(server.root, "post-snapshot", "50-replicate", REPLICATE, {
        "XSBACKUP_REPLICA": f"127.0.0.1:{replica}",
        "XSBACKUP_REPLICA_SSH": replica_host.ssh_command()})
    src = make_source(tmp_path / "src")
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())

    (src / "edit.txt").write_bytes(b"version 2, longer\n")
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())

    ids = server.store.snapshot_ids(SN, "documents")
    assert len(ids) == 2
    vol = replica / SN / "documents"
    assert sorted(os.listdir(vol)) == sorted(ids)
    for sid in ids:
        assert_same_tree(server.store.snapshots_dir(SN, "documents") / sid, vol / sid)
    a, b = (vol / sid for sid in ids)
    assert ino(b / "same.txt") == ino(a / "same.txt")
    assert ino(b / "sub" / "deep.bin") == ino(a / "sub" / "deep.bin")
    assert ino(b / "edit.txt") != ino(a / "edit.txt")
    assert (b / "edit.txt").read_bytes() == b"version 2, longer\n"
