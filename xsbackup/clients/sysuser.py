"""System logins for ds-backup devices, which log in as their serial (``-l SN``).

``create_login`` (root only) adds a passwd entry named after the serial that shares the
*service account's* uid and gid (``useradd --non-unique``): the account xsbackup runs as,
named by ``--service-user`` or else the owner of the state root. Its home is
``/nonexistent`` and its shell ``xsbackup-login``. That shell is not a shell: it runs only
the ``ssh-command`` forced command sshd hands it, so the login can do nothing else even if
a key without ``command=`` ever reached ``authorized_keys``. A login with uid or gid 0 is
never created: the forced command would run as root.

The home stays ``/nonexistent`` (sshd then says "Could not chdir to home directory", and
the session goes on in ``/``): a home that exists would either belong to the service uid,
so that anything a session could write there (``~/.ssh/rc``, Python's user site) would
run in later sessions, or be shared with the system (``/``), which ``userdel -r`` of one
login would then try to remove.

``acting_as`` lets a root process (``clients add`` and ``clients remove`` as root) write
in the state root as its owner, so it never leaves root-owned files behind that the
service could not rewrite.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xsbackup import procs
from xsbackup.errors import SystemUserError
from xsbackup.store import check_client


@dataclass(frozen=True)
class Account:
    """A uid and gid to run as, and what to call them in messages."""

    name: str
    uid: int
    gid: int


def login_shell() -> str:
    found = Path(sys.executable).with_name("xsbackup-login")
    if found.is_file():
        return str(found)
    which = shutil.which("xsbackup-login")
    if which:
        return os.path.abspath(which)
    raise SystemUserError("cannot find the installed xsbackup-login program")


def owner(root: Path) -> Account:
    """The owner of the state root."""
    try:
        st = os.stat(root)
    except OSError as e:
        raise SystemUserError(f"cannot read the owner of {root}: {e.strerror}") from None
    return Account(f"the owner of {root}", st.st_uid, st.st_gid)


def service_account(root: Path, name: str | None) -> Account:
    """The account client logins share: ``name``, else the state root's owner; never root."""
    if name:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise SystemUserError(f"no such service account {name!r}") from None
        account = Account(f"service account {name}", pw.pw_uid, pw.pw_gid)
    else:
        account = owner(root)
    if account.uid == 0 or account.gid == 0:
        raise SystemUserError(
            f"{account.name} is root (uid {account.uid}, gid {account.gid}); a client login "
            "must not be: give --service-user NAME, or chown the state root to the account "
            "xsbackup runs as")
    return account


def prepare_login(serial: str, root: Path, service_user: str | None) -> Account:
    """Check, before anything is written, that ``create_login`` can succeed."""
    check_client(serial)
    if os.geteuid() != 0:
        raise SystemUserError("--system-user needs root (it runs useradd)")
    try:
        pwd.getpwnam(serial)
    except KeyError:
        return service_account(root, service_user)
    raise SystemUserError(f"a system user named {serial} already exists")


def create_login(serial: str, account: Account) -> None:
    if account.uid == 0 or account.gid == 0:  # service_account refuses it; never run it
        raise SystemUserError(f"refusing to create {serial} with uid or gid 0")
    argv = ["useradd", "--non-unique", "--uid", str(account.uid), "--gid", str(account.gid),
            "--no-create-home", "--home-dir", "/nonexistent", "--shell", login_shell(),
            "--password", "*", "--comment", f"xsbackup client {serial}", serial]
    res = procs.run(argv, why=f"create the login of {serial}")
    if not res.ok:
        raise SystemUserError(f"useradd {serial} failed: {res.first_error_line()}")


@contextlib.contextmanager
def acting_as(account: Account | None) -> Iterator[None]:
    """Run the block with ``account``'s effective uid, gid and groups, when we are root
    and it is not; otherwise (not root, or no account) as we are."""
    if account is None or os.geteuid() != 0 or account.uid == 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups([account.gid])
    os.setegid(account.gid)
    os.seteuid(account.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


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
