#!/usr/bin/env python3
# ruff: noqa: UP022
# (UP022: this script runs on Python 3.6, whose subprocess.run has no capture_output.)
"""xsrestore: restore a bare (reflashed or replaced) device from an xsbackup server.

Standard library only, Python 3.6 or later, no installation: the server hands it out at
``GET http://SERVER:8080/restore/kit``. It registers the device the way Sugar does
(XML-RPC ``register``), waits for an administrator to approve a new key if the server
asks for that, lists the device's snapshots over SSH, pulls one with stock rsync, checks
the result against the server's manifest, and runs an optional after-command.

    python3 xsrestore.py --server schoolserver --target ~/.sugar/default/datastore --sugar

See ``--help`` and restore/README.md for every option and the exit codes.
"""

import argparse
import base64
import binascii
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid
import xmlrpc.client

PROG = "xsrestore"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_SERIAL = 3
EXIT_KEY = 4
EXIT_REFUSED = 5
EXIT_TIMEOUT = 6
EXIT_UNREACHABLE = 7
EXIT_TRANSFER = 8
EXIT_VERIFY = 9
EXIT_AFTER = 10

EXIT_CODES = (
    (EXIT_OK, "restored and verified"),
    (EXIT_USAGE, "invalid command line"),
    (EXIT_NO_SERIAL, "no serial number (no --serial, and no readable "
                     "/proc/device-tree/mfg-data/SN)"),
    (EXIT_KEY, "key problem (unreadable, malformed, too open, or ssh-keygen failed)"),
    (EXIT_REFUSED, "registration refused (DENIED, UNSUPPORTED_KEY or ERROR; the server's "
                   "error is printed)"),
    (EXIT_TIMEOUT, "timed out waiting for the administrator to approve the key"),
    (EXIT_UNREACHABLE, "cannot reach the server (HTTP registration or SSH)"),
    (EXIT_TRANSFER, "transfer failed: no such volume or snapshot, the server refused the "
                    "request, or rsync failed (its exit code is printed)"),
    (EXIT_VERIFY, "verification against the server's manifest failed"),
    (EXIT_AFTER, "the after-command (--after or --sugar) failed"),
)

SN_PATH = "/proc/device-tree/mfg-data/SN"
SUGAR_KEY = "~/.sugar/default/owner.key"
REGISTER_TIMEOUT = 8.0  # seconds, as Sugar's schoolserver.py
SSH_TIMEOUT = 900  # seconds for one `list` or `manifest` call
MAX_REPORTED = 20

SERIAL_RE = re.compile(r"\w{1,64}", re.ASCII)
VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SNAPSHOT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{6}Z(?:-\d{1,6})?")


class Fail(Exception):
    """Stop with ``code`` after printing ``message`` on stderr."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


def _emit(stream, text):
    try:
        print(text, file=stream, flush=True)
    except UnicodeEncodeError:  # Python 3.6 under the C locale writes ASCII only
        enc = getattr(stream, "encoding", None) or "ascii"
        print(text.encode(enc, "backslashreplace").decode(enc), file=stream, flush=True)


def info(message):
    _emit(sys.stdout, f"{PROG}: {message}")


def error(message):
    sys.stdout.flush()
    _emit(sys.stderr, f"{PROG}: error: {message}")


def shell_line(argv):
    """An argv as one copy-pasteable shell line."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def rsh_quote(word):
    """Quote one word of rsync's ``-e`` string (rsync splits on spaces and honours single
    and double quotes, but not backslashes)."""
    if word and not re.search(r"[\s'\"]", word):
        return word
    if "'" not in word:
        return "'" + word + "'"
    if '"' not in word:
        return '"' + word + '"'
    raise Fail(EXIT_USAGE, f"{word!r} holds both kinds of quotes; rsync -e cannot pass it")


def bracket(host):
    """A host for a URL or an rsync source: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ---- 1. the serial ------------------------------------------------------------------


def find_serial(given):
    if given is not None:
        serial = given.strip()
        if not SERIAL_RE.fullmatch(serial):
            raise Fail(EXIT_USAGE, f"invalid --serial {given!r}: it must match ^\\w{{1,64}}$")
        return serial, "--serial"
    try:
        with open(SN_PATH, "rb") as fh:
            raw = fh.read(4096)
    except OSError as e:
        raise Fail(EXIT_NO_SERIAL, f"no serial number: cannot read {SN_PATH} "
                                   f"({e.strerror or e}); pass --serial SN") from None
    serial = raw.replace(b"\0", b"").decode("ascii", "replace").strip()
    if not SERIAL_RE.fullmatch(serial):
        raise Fail(EXIT_NO_SERIAL, f"no usable serial number in {SN_PATH} ({serial[:40]!r}); "
                                   "pass --serial SN")
    return serial, SN_PATH


# ---- 2. the key -----------------------------------------------------------------------


def keygen_argv(path):
    return ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", path]


def parse_pub(text, where):
    """(type, blob) of an OpenSSH public key line."""
    parts = text.split()
    if len(parts) < 2:
        raise Fail(EXIT_KEY, f"{where} is not an OpenSSH public key")
    try:
        base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise Fail(EXIT_KEY, f"{where} holds no valid base64 key blob") from None
    return parts[0], parts[1]


def generate_key(path):
    parent = os.path.dirname(path)
    if os.path.exists(path + ".pub"):
        raise Fail(EXIT_KEY, f"{path}.pub exists without its private key {path}; move it "
                             "aside or pass --key")
    try:
        if parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        r = subprocess.run(keygen_argv(path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, check=False)
    except OSError as e:
        raise Fail(EXIT_KEY, f"cannot generate a key at {path}: {e}") from None
    if r.returncode != 0 or not os.path.exists(path):
        why = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise Fail(EXIT_KEY, f"ssh-keygen failed (exit {r.returncode}) for {path}"
                             + (f": {why[-1]}" if why else ""))


def find_key(given, dry_run):
    """(private key path, key type, blob); generates an RSA key when none exists."""
    path = os.path.abspath(os.path.expanduser(given or SUGAR_KEY))
    pub = path + ".pub"
    if not os.path.exists(path):
        line = shell_line(keygen_argv(path))
        if dry_run:
            info(f"[dry-run] no key at {path}: would generate one with: {line}")
            return path, "ssh-rsa", f"<the blob of {pub}>"
        info(f"no key at {path}: generating a new RSA key ({line})")
        generate_key(path)
    try:
        st = os.stat(path)
        with open(path, "rb"):
            pass
    except OSError as e:
        raise Fail(EXIT_KEY, f"cannot read the key {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Fail(EXIT_KEY, f"the key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise Fail(EXIT_KEY, f"the key {path} is accessible by others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}) and ssh would ignore it; "
                             f"run: chmod 600 {shlex.quote(path)}")
    if os.path.exists(pub):
        try:
            with open(pub, encoding="utf-8", errors="replace") as fh:
                text = fh.read(65536)
        except OSError as e:
            raise Fail(EXIT_KEY, f"cannot read {pub}: {e.strerror or e}") from None
        where = pub
    else:
        try:
            r = subprocess.run(["ssh-keygen", "-y", "-f", path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        except OSError as e:
            raise Fail(EXIT_KEY, f"{pub} is missing and ssh-keygen cannot run: {e}") from None
        if r.returncode != 0:
            raise Fail(EXIT_KEY, f"{pub} is missing and ssh-keygen -y cannot read {path} "
                                 "(is it passphrase-protected?)")
        text, where = r.stdout.decode("utf-8", "replace"), f"ssh-keygen -y -f {path}"
    ktype, blob = parse_pub(text, where)
    return path, ktype, blob


# ---- 3. registration ------------------------------------------------------------------


class TimeoutTransport(xmlrpc.client.Transport):
    """xmlrpc.client with a socket timeout (Python 3.6 has no ServerProxy timeout)."""

    def __init__(self, timeout):
        xmlrpc.client.Transport.__init__(self)
        self.timeout = timeout

    def make_connection(self, host):
        conn = xmlrpc.client.Transport.make_connection(self, host)
        conn.timeout = self.timeout
        return conn


def call_register(url, serial, nickname, device_uuid, blob):
    """One ``register`` call: the reply struct, or Fail(7 or 5)."""
    proxy = xmlrpc.client.ServerProxy(url, transport=TimeoutTransport(REGISTER_TIMEOUT))
    try:
        reply = proxy.register(serial, nickname, device_uuid, blob)
    except xmlrpc.client.Fault as e:
        raise Fail(EXIT_REFUSED, f"registration failed: the server answered with fault "
                                 f"{e.faultCode}: {e.faultString}") from None
    except xmlrpc.client.ProtocolError as e:
        raise Fail(EXIT_UNREACHABLE, f"cannot register at {url}: HTTP {e.errcode} "
                                     f"{e.errmsg}") from None
    except (OSError, xmlrpc.client.Error, ValueError) as e:
        # socket.timeout, ConnectionRefusedError, socket.gaierror, a non-XML-RPC reply...
        raise Fail(EXIT_UNREACHABLE, f"cannot reach the registration service at {url}: "
                                     f"{e}") from None
    finally:
        proxy("close")()
    if not isinstance(reply, dict) or not isinstance(reply.get("success"), str):
        raise Fail(EXIT_REFUSED, f"registration failed: unexpected reply {reply!r:.200}")
    return reply


def register(args, serial, ktype, blob, nickname, device_uuid):
    url = f"http://{bracket(args.server)}:{args.http_port}/"
    if args.dry_run:
        shown = blob if blob.startswith("<") else f"{blob[:16]}...({len(blob)} chars)"
        info(f"[dry-run] would register at {url}: register({serial!r}, {nickname!r}, "
             f"{device_uuid!r}, {shown!r}), polling every {args.poll:g} s for up to "
             f"{args.wait:g} s while the answer is PENDING")
        return
    info(f"registering {serial} ({ktype} key) at {url}")
    deadline = None
    last_problem = None
    while True:
        try:
            reply = call_register(url, serial, nickname, device_uuid, blob)
        except Fail as e:
            if deadline is None or e.code != EXIT_UNREACHABLE:
                raise
            # Already waiting for approval: a server restart is not the end of the wait.
            if e.message != last_problem:
                error(f"{e.message} (still waiting)")
                last_problem = e.message
            reply = None
        if reply is not None:
            success = reply["success"]
            if success == "OK":
                info(f"registered: the server accepts this key (backup url "
                     f"{reply.get('backupurl', '?')})")
                return
            if success != "PENDING":
                hint = ""
                if success == "UNSUPPORTED_KEY":
                    hint = ("; move the old key aside (or pass --key NEWPATH) so this kit "
                            "generates an RSA key")
                raise Fail(EXIT_REFUSED, f"registration refused ({success}): "
                                         f"{reply.get('error', 'no reason given')}{hint}")
            if deadline is None:
                info(f"Waiting for the administrator to approve this device's new key "
                     f"(serial {serial}). Ask them to run: xsbackup clients approve {serial}")
                deadline = time.monotonic() + args.wait
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            waited = "did not wait (--wait 0)" if args.wait == 0 else \
                f"waited {args.wait:g} s"
            raise Fail(EXIT_TIMEOUT, f"the key of {serial} is still awaiting approval; "
                                     f"{waited}. After the administrator runs 'xsbackup "
                                     f"clients approve {serial}', run this again")
        time.sleep(min(args.poll, remaining))


# ---- 4. choosing the snapshot over SSH --------------------------------------------------


def ssh_argv(args, serial, key):
    return ["ssh", "-F", "/dev/null", "-o", "PasswordAuthentication=no",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=" + args.known_hosts,
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
            "-i", key, "-p", str(args.ssh_port), "-l", serial]


def verb_words(verb, args, sid=None):
    words = [verb]
    if verb == "manifest":
        words += ["--volume", args.volume, "--at", sid or args.at]
    if args.source:
        words += ["--from", args.source]
    return words


def run_verb(args, serial, key, words, retries=0):
    """Run an xsbackup SSH verb; its stdout as bytes."""
    argv = [*ssh_argv(args, serial, key), args.server, *words]
    for attempt in range(retries + 1):
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=SSH_TIMEOUT, check=False)
        except FileNotFoundError:
            raise Fail(EXIT_UNREACHABLE, "ssh is not installed") from None
        except subprocess.TimeoutExpired:
            raise Fail(EXIT_UNREACHABLE, f"'{' '.join(words)}' over SSH took longer than "
                                         f"{SSH_TIMEOUT} s") from None
        if r.returncode == 0:
            return r.stdout
        why = r.stderr.decode("utf-8", "replace").strip().splitlines()
        last = why[-1] if why else "no message"
        if r.returncode != 255:
            raise Fail(EXIT_TRANSFER, f"the server refused '{' '.join(words)}' (exit "
                                      f"{r.returncode}): {last}")
        if attempt < retries:
            # A key approved a moment ago may take the server a moment to pick up.
            time.sleep(2)
    raise Fail(EXIT_UNREACHABLE, f"cannot reach {args.server}:{args.ssh_port} over SSH as "
                                 f"{serial} (ssh exit 255): {last}")


def parse_list(raw):
    try:
        rows = json.loads(raw.decode("utf-8"))
        return [(str(r["volume"]), str(r["id"])) for r in rows]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise Fail(EXIT_TRANSFER, "the server's snapshot list is not valid JSON") from None


def parse_manifest(raw):
    entries = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8", "surrogateescape"))
        except ValueError:
            raise Fail(EXIT_TRANSFER, f"the server's manifest line {n} is not JSON") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise Fail(EXIT_TRANSFER, f"the server's manifest line {n} has no path")
        entries.append(entry)
    return entries


def choose_snapshot(args, rows, whose):
    by_volume = {}
    for volume, sid in rows:
        by_volume.setdefault(volume, []).append(sid)
    if not by_volume:
        raise Fail(EXIT_TRANSFER, f"the server has no snapshot of {whose} yet")
    for volume in sorted(by_volume):
        ids = by_volume[volume]
        info(f"  {volume}: {len(ids)} snapshot(s), newest {ids[-1]}")
    ids = by_volume.get(args.volume)
    if not ids:
        raise Fail(EXIT_TRANSFER, f"{whose} has no snapshot of volume {args.volume!r} "
                                  f"(it has: {', '.join(sorted(by_volume))}); use --volume")
    if args.at == "latest":
        return ids[-1]  # the server lists them oldest first
    if args.at not in ids:
        raise Fail(EXIT_TRANSFER, f"{whose} has no snapshot {args.at} of {args.volume} "
                                  f"(newest: {', '.join(ids[-5:])})")
    return args.at


# ---- 5. the transfer ------------------------------------------------------------------


def rsync_argv(args, serial, key, sid):
    rsh = " ".join(rsh_quote(w) for w in ssh_argv(args, serial, key))
    prefix = f"clients/{args.source}/" if args.source else ""
    source = f"{serial}@{bracket(args.server)}:{prefix}{args.volume}/{sid}/"
    argv = ["rsync", "-a", "--numeric-ids"]
    if args.replace:
        argv.append("--delete")
    return [*argv, "-e", rsh, source, args.target.rstrip("/") + "/"]


def run_rsync(argv):
    env = dict(os.environ)
    env.pop("RSYNC_PROTECT_ARGS", None)  # the server refuses --secluded-args
    try:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, env=env, check=False).returncode
    except FileNotFoundError:
        raise Fail(EXIT_TRANSFER, "rsync is not installed") from None
    if rc != 0:
        raise Fail(EXIT_TRANSFER, f"rsync failed with exit code {rc}")


# ---- 6. verification ------------------------------------------------------------------


def _unsafe(path):
    parts = path.split("/")
    return not path or path.startswith("/") or ".." in parts or "\0" in path


def verify(entries, target, is_root=None):
    """Compare ``target`` with a manifest; a list of mismatches, one line each.

    Files must exist with the same size, symlinks with the same target, directories must
    exist, each with its manifest type. Special files (devices, fifos) are only required
    when running as root, since rsync skips devices for anyone else.
    """
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    problems = []
    btarget = os.fsencode(target)
    for entry in entries:
        path, kind = entry.get("path", ""), entry.get("type")
        if _unsafe(path):
            problems.append(f"{path!r}: unsafe path in the manifest")
            continue
        # Bytes, so a Python 3.6 under the C locale (ASCII file names) still finds them.
        full = os.path.join(btarget, path.encode("utf-8", "surrogateescape"))
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if kind != "special" or is_root:
                problems.append(f"{path}: missing (expected {kind})")
            continue
        except OSError as e:
            problems.append(f"{path}: cannot examine it ({e.strerror or e})")
            continue
        if kind == "dir":
            if not stat.S_ISDIR(st.st_mode):
                problems.append(f"{path}: expected a directory, found {kind_of(st)}")
        elif kind == "file":
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{path}: expected a file, found {kind_of(st)}")
            elif st.st_size != entry.get("size"):
                problems.append(f"{path}: size {st.st_size}, expected {entry.get('size')}")
        elif kind == "symlink":
            if not stat.S_ISLNK(st.st_mode):
                problems.append(f"{path}: expected a symlink, found {kind_of(st)}")
            else:
                found = os.readlink(full).decode("utf-8", "surrogateescape")
                if found != entry.get("target"):
                    problems.append(f"{path}: symlink to {found!r}, expected "
                                    f"{entry.get('target')!r}")
        elif kind == "special":
            if kind_of(st) != "special file":
                problems.append(f"{path}: expected a special file, found {kind_of(st)}")
        else:
            problems.append(f"{path}: unknown type {kind!r} in the manifest")
    return problems


def kind_of(st):
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "special file"


def report_verification(entries, target):
    problems = verify(entries, target)
    if problems:
        for line in problems[:MAX_REPORTED]:
            error(f"mismatch: {line}")
        more = len(problems) - MAX_REPORTED
        raise Fail(EXIT_VERIFY, f"verification failed: {len(problems)} of {len(entries)} "
                                f"entries differ from the server's manifest"
                                + (f" ({more} more not shown)" if more > 0 else ""))
    counts = {}
    for entry in entries:
        counts[entry.get("type")] = counts.get(entry.get("type"), 0) + 1
    info(f"verified {len(entries)} entries against the server's manifest "
         f"({counts.get('file', 0)} files, {counts.get('dir', 0)} directories, "
         f"{counts.get('symlink', 0)} symlinks)")


# ---- 7. after the restore -------------------------------------------------------------


SUGAR_INDEX = ("index", "index_updated")


def sugar_reset(target, dry_run):
    for name in SUGAR_INDEX:
        path = os.path.join(target, name)
        if dry_run:
            info(f"[dry-run] --sugar: would remove {path} so Sugar rebuilds its index")
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise Fail(EXIT_AFTER, f"--sugar: cannot remove {path}: {e}") from None
        info(f"--sugar: removed {path}; Sugar rebuilds its index at its next start")


def run_after(command, target, env_extra, dry_run):
    argv = ["/bin/sh", "-c", command]
    if dry_run:
        info(f"[dry-run] would run the after-command in {target}: {shell_line(argv)}")
        return
    info(f"running the after-command: {command}")
    env = dict(os.environ)
    env.update(env_extra)
    try:
        rc = subprocess.run(argv, cwd=target, env=env, stdin=subprocess.DEVNULL,
                            check=False).returncode
    except OSError as e:
        raise Fail(EXIT_AFTER, f"cannot run the after-command: {e}") from None
    if rc != 0:
        raise Fail(EXIT_AFTER, f"the after-command failed with exit code {rc}")


# ---- the whole run --------------------------------------------------------------------


def build_parser():
    codes = "\n".join(textwrap.fill(text, 86, initial_indent=f"  {code:>2}  ",
                                     subsequent_indent="      ")
                       for code, text in EXIT_CODES)
    epilog = (
        "steps: find the serial, find (or generate) the key, register it (waiting for "
        "approval\nif the server asks), list the snapshots, fetch the manifest, rsync, "
        "verify, after-command.\n\n"
        "Without --replace the snapshot is merged into TARGET: files in TARGET that the\n"
        "snapshot does not have are kept. With --replace they are deleted (rsync --delete).\n\n"
        "--after CMD runs with /bin/sh -c in TARGET, with XSRESTORE_TARGET, XSRESTORE_SERIAL,\n"
        "XSRESTORE_SOURCE, XSRESTORE_VOLUME and XSRESTORE_SNAPSHOT in its environment.\n\n"
        "exit codes:\n" + codes + "\n"
        "  (1 for an unexpected internal error, 130 when interrupted)\n\n"
        "example (a reflashed XO, Sugar stopped):\n"
        "  python3 xsrestore.py --server schoolserver \\\n"
        "      --target ~/.sugar/default/datastore --replace --sugar\n"
    )
    p = argparse.ArgumentParser(
        prog="xsrestore.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Restore this device's data from an xsbackup server with stock rsync.",
        epilog=epilog)
    p.add_argument("--server", required=True, metavar="HOST", help="the backup server")
    p.add_argument("--target", required=True, metavar="DIR",
                   help="restore into DIR (for Sugar: ~/.sugar/default/datastore); created "
                        "when missing")
    p.add_argument("--serial", metavar="SN",
                   help=f"the device's serial (default: read from {SN_PATH})")
    p.add_argument("--key", metavar="PATH",
                   help=f"the SSH private key (default: {SUGAR_KEY}); generated with "
                        "ssh-keygen (RSA 2048) when it does not exist")
    p.add_argument("--nickname", help="the name to register (default: this host's name)")
    p.add_argument("--uuid", help="the uuid to register (default: a new uuid4)")
    p.add_argument("--http-port", type=int, default=8080, metavar="P",
                   help="the server's registration port (default: 8080)")
    p.add_argument("--ssh-port", type=int, default=22, metavar="P",
                   help="the server's SSH port (default: 22)")
    p.add_argument("--known-hosts", default="/dev/null", metavar="FILE",
                   help="ssh's UserKnownHostsFile (default: /dev/null)")
    p.add_argument("--wait", type=float, default=1800, metavar="SECONDS",
                   help="wait this long for an administrator to approve a new key "
                        "(default: 1800; 0: do not wait)")
    p.add_argument("--poll", type=float, default=10, metavar="SECONDS",
                   help="register again this often while waiting (default: 10)")
    p.add_argument("--volume", default="datastore",
                   help="the volume to restore (default: datastore)")
    p.add_argument("--at", default="latest", metavar="ID",
                   help="a snapshot id (YYYY-MM-DDTHHMMSSZ[-N]) or latest (default)")
    p.add_argument("--from", dest="source", metavar="OLD",
                   help="restore the snapshots of OLD, the serial of the device this one "
                        "replaces (the administrator runs: xsbackup clients alias SN OLD)")
    p.add_argument("--replace", action="store_true",
                   help="make TARGET exactly the snapshot: delete what the snapshot does "
                        "not have (rsync --delete); default: merge")
    p.add_argument("--after", metavar="CMD",
                   help="run CMD with /bin/sh -c in TARGET after a verified restore")
    p.add_argument("--sugar", action="store_true",
                   help="after a verified restore, remove TARGET/index and "
                        "TARGET/index_updated so Sugar rebuilds its index")
    p.add_argument("--dry-run", action="store_true",
                   help="print every step and command line; contact nothing, change nothing")
    return p


def check_args(parser, args):
    if args.poll <= 0:
        parser.error("--poll must be more than 0 seconds")
    if args.wait < 0:
        parser.error("--wait must be 0 or more seconds")
    for name in ("http_port", "ssh_port"):
        if not 0 < getattr(args, name) < 65536:
            parser.error(f"--{name.replace('_', '-')} must be a port number")
    if not args.server.strip() or args.server.startswith("-") or re.search(r"[\s@/]",
                                                                            args.server):
        parser.error(f"invalid --server {args.server!r}")
    if not VOLUME_RE.fullmatch(args.volume):
        parser.error(f"invalid --volume {args.volume!r}")
    if args.at != "latest" and not SNAPSHOT_RE.fullmatch(args.at):
        parser.error(f"--at must be latest or a snapshot id like 2026-11-23T101500Z, "
                     f"not {args.at!r}")
    if args.source is not None and not SERIAL_RE.fullmatch(args.source):
        parser.error(f"invalid --from {args.source!r}: a serial number")
    args.target = os.path.abspath(os.path.expanduser(args.target))
    if args.replace and os.path.realpath(args.target) in (
            "/", os.path.realpath(os.path.expanduser("~"))):
        parser.error(f"--replace would delete everything else in {args.target}; "
                     "choose a narrower --target")


def restore(args):
    dry = args.dry_run
    serial, serial_from = find_serial(args.serial)
    info(f"serial {serial} (from {serial_from})")
    key, ktype, blob = find_key(args.key, dry)
    info(f"key {key} ({ktype})")
    nickname = args.nickname if args.nickname is not None else socket.gethostname()
    device_uuid = args.uuid if args.uuid is not None else str(uuid.uuid4())
    register(args, serial, ktype, blob, nickname, device_uuid)
    whose = args.source or serial
    list_words = verb_words("list", args)
    if dry:
        sid = args.at
        info(f"[dry-run] would list the snapshots of {whose}: "
             f"{shell_line([*ssh_argv(args, serial, key), args.server, *list_words])}")
        info("[dry-run] would fetch the manifest: " + shell_line(
            [*ssh_argv(args, serial, key), args.server, *verb_words("manifest", args, sid)]))
        entries = None
    else:
        info(f"snapshots of {whose} on {args.server}:")
        rows = parse_list(run_verb(args, serial, key, list_words, retries=3))
        sid = choose_snapshot(args, rows, whose)
        entries = parse_manifest(run_verb(args, serial, key,
                                          verb_words("manifest", args, sid)))
        info(f"restoring {args.volume} snapshot {sid} of {whose} ({len(entries)} entries) "
             f"into {args.target} ({'replace' if args.replace else 'merge'})")
    argv = rsync_argv(args, serial, key, sid)
    if dry:
        info(f"[dry-run] would create {args.target} if missing and run: {shell_line(argv)}")
        info("[dry-run] would verify the result against the manifest")
    else:
        try:
            os.makedirs(args.target, exist_ok=True)
        except OSError as e:
            raise Fail(EXIT_TRANSFER, f"cannot create {args.target}: {e}") from None
        info(f"running: {shell_line(argv)}")
        run_rsync(argv)
        report_verification(entries, args.target)
    if args.sugar:
        sugar_reset(args.target, dry)
    if args.after:
        run_after(args.after, args.target, {
            "XSRESTORE_TARGET": args.target, "XSRESTORE_SERIAL": serial,
            "XSRESTORE_SOURCE": whose, "XSRESTORE_VOLUME": args.volume,
            "XSRESTORE_SNAPSHOT": sid}, dry)
    info("[dry-run] nothing was changed" if dry else
         f"done: {args.volume} snapshot {sid} of {whose} restored into {args.target}")
    return EXIT_OK


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        return restore(args)
    except Fail as e:
        error(e.message)
        return e.code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as e:  # one clear line rather than a traceback on a child's laptop
        error(f"internal error: {e.__class__.__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
