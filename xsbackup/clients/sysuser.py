"""System logins for ds-backup devices, which log in as their serial (``-l SN``).

``create_login`` (root only) adds a passwd entry named after the serial that shares the
service account's uid and gid (``useradd --non-unique``), has ``/nonexistent`` as home and
``xsbackup-login`` as its shell. That shell is not a shell: it runs only the
``ssh-command`` forced command sshd hands it, so the login can do nothing else even if
a key without ``command=`` ever reached ``authorized_keys``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from pathlib import Path

from xsbackup import procs
from xsbackup.errors import SystemUserError
from xsbackup.store import check_client


def login_shell() -> str:
    found = Path(sys.executable).with_name("xsbackup-login")
    if found.is_file():
        return str(found)
    which = shutil.which("xsbackup-login")
    if which:
        return os.path.abspath(which)
    raise SystemUserError("cannot find the installed xsbackup-login program")


def create_login(serial: str) -> None:
    check_client(serial)
    if os.geteuid() != 0:
        raise SystemUserError("--system-user needs root (it runs useradd)")
    try:
        pwd.getpwnam(serial)
    except KeyError:
        pass
    else:
        raise SystemUserError(f"a system user named {serial} already exists")
    uid, gid = os.getuid(), os.getgid()
    argv = ["useradd", "--non-unique", "--uid", str(uid), "--gid", str(gid),
            "--no-create-home", "--home-dir", "/nonexistent", "--shell", login_shell(),
            "--password", "*", "--comment", f"xsbackup client {serial}", serial]
    res = procs.run(argv, why=f"create the login of {serial}")
    if not res.ok:
        raise SystemUserError(f"useradd {serial} failed: {res.first_error_line()}")


def remove_login(serial: str) -> None:
    check_client(serial)
    try:
        pwd.getpwnam(serial)
    except KeyError:
        return
    # --force: the uid is shared with the running service account, which userdel would
    # otherwise count as the user being logged in. The home is /nonexistent, so nothing
    # else can be removed with it.
    res = procs.run(["userdel", "--force", serial], why=f"remove the login of {serial}")
    if not res.ok:
        raise SystemUserError(f"userdel {serial} failed: {res.first_error_line()}")
