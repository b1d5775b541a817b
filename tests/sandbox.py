"""Run a command under the seccomp sandbox a systemd unit file describes, as systemd 252
(Debian 12) would build it, without systemd: ``python -m tests.sandbox UNIT -- CMD...``.

From the unit's ``[Service]`` section it applies ``UMask=``, ``NoNewPrivileges=``,
``SystemCallFilter=`` (an allow list of groups, minus ``~`` groups, expanded by
``systemd-analyze syscall-filter``; denied calls fail with ``SystemCallErrorNumber=``),
``MemoryDenyWriteExecute=`` (no W+X ``mmap``, no ``mprotect``/``pkey_mprotect`` to
PROT_EXEC, no ``shmat`` with SHM_EXEC: systemd 252's seccomp rules, stricter than the
kernel's PR_SET_MDWE), ``RestrictAddressFamilies=`` (other ``socket`` families:
EAFNOSUPPORT), ``RestrictNamespaces=yes`` (no namespace flags to ``clone``/``unshare``,
no ``setns``; ``clone3``: ENOSYS, so glibc falls back to ``clone``, as under systemd) and
``RestrictSUIDSGID=yes`` (no setuid/setgid bits by ``chmod`` or a creating ``open``).
Mount namespaces (``ProtectSystem=`` and friends) and capabilities are not applied.

libseccomp is called through ctypes (``libseccomp.so.2``, which systemd itself links).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 4, 6, 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
O_CREAT = 0o100
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                   0x20000000, 0x40000000, 0x00000080)  # NEWNS UTS IPC USER PID NET CGROUP TIME


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def available() -> str:
    """Why the sandbox cannot run here, or "" when it can."""
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze is not installed (it lists the syscall groups)"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 is not installed"
    return ""


def service_section(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def expand(names: Iterable[str], seen: set[str] | None = None) -> set[str]:
    """Syscall names of groups (``@x``) and names, as systemd-analyze lists them."""
    seen = set() if seen is None else seen
    out: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            out.add(name)
            continue
        if name in seen:
            continue
        seen.add(name)
        listing = subprocess.run(["systemd-analyze", "syscall-filter", name], check=True,
                                 capture_output=True, text=True).stdout.splitlines()
        members = [m.strip() for m in listing[1:] if m.strip() and not m.strip().startswith("#")]
        out |= expand(members, seen)
    return out


class Filter:
    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(ctypes.c_uint32(default))
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a syscall of this architecture
        array = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = self.lib.seccomp_rule_add_array(self.ctx, ctypes.c_uint32(action), nr,
                                             len(cmps), array)
        if rc not in (0, -errno.EACCES):  # EACCES: same action as the default
            raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")


def errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def apply(unit: Path) -> None:
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    svc = service_section(unit)
    yes = {k for k, v in svc.items() if v[-1] in ("yes", "true")}
    if "UMask" in svc:
        os.umask(int(svc["UMask"][-1], 8))
    deny = errno_action(getattr(errno, svc.get("SystemCallErrorNumber", ["EPERM"])[-1]))

    guard = Filter(lib, SCMP_ACT_ALLOW)
    if "MemoryDenyWriteExecute" in yes:
        wx = PROT_WRITE | PROT_EXEC
        for name in ("mmap", "mmap2"):
            guard.rule(errno_action(errno.EPERM), name, (2, SCMP_CMP_MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            guard.rule(errno_action(errno.EPERM), name,
                       (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        guard.rule(errno_action(errno.EPERM), "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    families = svc.get("RestrictAddressFamilies", [""])[-1].split()
    if families:
        keep = {int(getattr(socket, f)) for f in families}
        refuse = errno_action(errno.EAFNOSUPPORT)
        for family in range(0, max(keep)):
            if family not in keep:
                guard.rule(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
        guard.rule(refuse, "socket", (0, SCMP_CMP_GT, max(keep), 0))
    if "RestrictNamespaces" in yes:
        for flag in NAMESPACE_FLAGS:
            for name, arg in (("clone", 0), ("unshare", 0)):
                guard.rule(errno_action(errno.EPERM), name, (arg, SCMP_CMP_MASKED_EQ, flag, flag))
        guard.rule(errno_action(errno.EPERM), "setns")
        guard.rule(errno_action(errno.ENOSYS), "clone3")
    if "RestrictSUIDSGID" in yes:
        for bit in (stat.S_ISUID, stat.S_ISGID):
            for name, arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2),
                              ("creat", 1)):
                guard.rule(errno_action(errno.EPERM), name, (arg, SCMP_CMP_MASKED_EQ, bit, bit))
            for name, flags, mode in (("open", 1, 2), ("openat", 2, 3)):
                guard.rule(errno_action(errno.EPERM), name,
                           (flags, SCMP_CMP_MASKED_EQ, O_CREAT, O_CREAT),
                           (mode, SCMP_CMP_MASKED_EQ, bit, bit))
    guard.load()  # before the allow list, which may not allow seccomp() itself

    allowed: set[str] = set()
    denied: set[str] = set()
    for value in svc.get("SystemCallFilter", []):
        names = value.split()
        if value.startswith("~"):
            denied |= expand([names[0][1:], *names[1:]])
        else:
            allowed |= expand(names)
    if allowed:
        f = Filter(lib, deny)
        for name in sorted(allowed - denied):
            f.rule(SCMP_ACT_ALLOW, name)
        f.load()


def main(argv: list[str]) -> None:
    unit, sep, *command = argv
    if sep != "--" or not command:
        sys.exit("usage: python -m tests.sandbox UNIT -- COMMAND...")
    if not re.fullmatch(r"[\w.@-]+\.service", Path(unit).name):
        sys.exit(f"not a service unit: {unit}")
    apply(Path(unit))
    os.execv(command[0], command)  # noqa: S606 - the command line the caller gave


if __name__ == "__main__":
    main(sys.argv[1:])
