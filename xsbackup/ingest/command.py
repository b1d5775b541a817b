"""Parse and validate ``SSH_ORIGINAL_COMMAND``: a pure function, no filesystem access.

Threat model. The string comes from an authenticated but untrusted client. Whatever it
says, the result must be one of: a connectivity check, an rsync upload into one of the
client's own volume roots, an rsync download from one of its own snapshots, a named
xsbackup verb, git's ``git-upload-archive`` for one of its volumes (``restore.gitarchive``
checks its arguments), or a ``RequestRefused`` naming what was wrong. In particular:

* no shell ever sees the string: it is split with rrsync's own tokeniser (backslash
  escapes only, as rsync's client writes them), and the first two words must be exactly
  ``rsync --server``, so ``--rsync-path`` smuggling and ``;``/``$()`` payloads fail;
* every option is checked against ``LONG_OPTS``/short-option tables that start from
  rrsync's (Debian's ``/usr/bin/rrsync``) and are stricter: options that would write
  through hardlinks into history (``--inplace``, ``--append*``), that name server paths
  the server owns (``--link-dest``, ``--copy-dest``, ``--compare-dest``, ``--backup-dir``,
  ``--files-from``, ``--log-file``, batch files, ``--config``), that change how the server
  itself runs (``--daemon``, ``--super``, ``--fake-super``, ``-s``) or that follow or
  expose symlinks (``-L``, ``-k``, ``-K``, ``--copy-unsafe-links``) are refused;
  anything unknown is refused;
* ``--temp-dir``/``-T`` and ``--partial-dir`` are accepted (ds-backup sends ``-T /tmp``)
  but dropped: the server supplies its own inside the client's area;
* paths: ``..`` anywhere is refused, absolute paths are refused except ds-backup's exact
  completion-flag path for the authenticated serial, an upload must name a volume root,
  and a download must name a snapshot (``<volume>/latest``, ``<volume>/<id>``, or
  ds-backup's ``datastore-latest`` / ``datastore-YYYY-MM-DD_HH:MM``).

Callers map the result onto real paths (``ingest``), never by joining raw strings.
"""

from __future__ import annotations

import re

from xsbackup.errors import RequestRefused
from xsbackup.records import field, record
from xsbackup.store import CLIENT_RE, SNAPSHOT_RE, VOLUME_RE

# 0: no argument; 1: argument not checked; -1: refused; "drop": accepted, argument
# replaced by the server's own.
LONG_OPTS: dict[str, int | str] = {
    "append": -1, "append-verify": -1, "backup-dir": -1, "block-size": 1, "bwlimit": 1,
    "checksum-choice": 1, "checksum-seed": 1, "compare-dest": -1, "compress-choice": 1,
    "compress-level": 1, "compress-threads": 1, "config": -1, "copy-dest": -1,
    "copy-devices": -1, "copy-dirlinks": -1, "copy-links": -1, "copy-unsafe-links": -1,
    "daemon": -1, "debug": -1, "delay-updates": 0, "delete": 0, "delete-after": 0,
    "delete-before": 0, "delete-delay": 0, "delete-during": 0, "delete-excluded": 0,
    "delete-missing-args": 0, "dirs": 0, "existing": 0, "fake-super": -1, "files-from": -1,
    "force": 0, "from0": 0, "fsync": 0, "fuzzy": 0, "group": 0, "groupmap": 1,
    "hard-links": 0, "iconv": 1, "ignore-errors": 0, "ignore-existing": 0,
    "ignore-missing-args": 0, "ignore-times": 0, "info": 1, "inplace": -1,
    "keep-dirlinks": -1, "link-dest": -1, "links": 0, "list-only": 0, "log-file": -1,
    "log-file-format": -1, "log-format": 1, "max-alloc": 1, "max-delete": 1, "max-size": 1,
    "min-size": 1, "mkpath": 0, "modify-window": 1, "msgs2stderr": 0, "munge-links": 0,
    "new-compress": 0, "no-W": 0, "no-implied-dirs": 0, "no-msgs2stderr": 0,
    "no-munge-links": -1, "no-r": 0, "no-relative": 0, "no-specials": 0, "numeric-ids": 0,
    "old-compress": 0, "one-file-system": 0, "only-write-batch": -1, "open-noatime": 0,
    "owner": 0, "partial": 0, "partial-dir": "drop", "perms": 0, "preallocate": 0,
    "protect-args": -1, "read-batch": -1, "recursive": 0, "remove-sent-files": 0,
    "remove-source-files": 0, "safe-links": 0, "secluded-args": -1, "size-only": 0,
    "skip-compress": 1, "specials": 0, "stats": 0, "stderr": 1, "suffix": 1, "super": -1,
    "temp-dir": "drop", "timeout": 1, "times": 0, "use-qsort": 0, "usermap": 1,
    "write-batch": -1, "write-devices": -1,
}
DOWNLOAD_REFUSED = frozenset({"remove-source-files", "remove-sent-files"})
UPLOAD_ONLY = frozenset({
    "delete", "delete-after", "delete-before", "delete-delay", "delete-during",
    "delete-excluded", "delete-missing-args", "force", "max-delete", "delay-updates",
    "partial", "partial-dir", "temp-dir", "fuzzy", "fsync", "preallocate", "mkpath",
    "suffix", "ignore-existing", "existing",
})

# rrsync's short options less 's' (secluded args) and 'KLk' (follow symlinks). 'e' is
# only valid as the trailing capability blob ("-e.iLsfxCIvu"), handled by the regex.
SHORT_NO_ARG = "ACDEHIJNORSUWXbcdgilmnopqrtuvxyz"
SHORT_REFUSED = {"s": "--secluded-args", "L": "--copy-links", "k": "--copy-dirlinks",
                 "K": "--keep-dirlinks"}
_SHORT_RE = re.compile(r"-(?=.)([" + SHORT_NO_ARG + r"]*)(e\d*\.\w*)?")
_SHORT_NUM_RE = re.compile(r"-[@B]-?\d+")
_TOKEN_RE = re.compile(r"(?:[^\s\\]+|\\.[^\s\\]*)+")
_UNESCAPE_RE = re.compile(r"\\(.)")
_LONG_RE = re.compile(r"--([A-Za-z0-9][A-Za-z0-9-]*)(?:=(.*))?", re.DOTALL)
COMPLETION_PREFIX = "/var/lib/ds-backup/completion/"
_DS_MINUTE_RE = re.compile(r"datastore-(\d{4}-\d{2}-\d{2}_\d{2}:\d{2})")

# Named xsbackup verbs besides rsync, and the options each accepts (all take a value).
VERBS: dict[str, frozenset[str]] = {
    "archive": frozenset({"--volume", "--at", "--format", "--from"}),
    "list": frozenset({"--volume", "--from"}),
    "manifest": frozenset({"--volume", "--at", "--from"}),
    "diff": frozenset({"--volume", "--from"}),
    "find": frozenset({"--volume", "--newest", "--from"}),
}
VERB_PATHS = frozenset({"archive"})
# Verbs whose positional arguments are not paths, and how many each takes exactly:
# ``diff A B`` (two snapshots: ids, latest or times) and ``find PATTERN`` (a glob).
VERB_ARGS: dict[str, int] = {"diff": 2, "find": 1}


@record(frozen=True)
class Request:
    """A validated request. ``kind`` is true, upload, completion, download, verb or
    gitarchive."""

    kind: str
    options: tuple[str, ...] = ()
    volume: str = ""
    snapshot: str = ""            # download: "latest", an id, or "minute:YYYY-MM-DD_HH:MM"
    subpath: tuple[str, ...] = ()  # download: components below the snapshot root
    trailing_slash: bool = False
    source: str = ""              # download/verb: an aliased client to read (read-only)
    verb: str = ""
    verb_opts: tuple[tuple[str, str], ...] = field(default=())
    verb_path: str = ""
    verb_args: tuple[str, ...] = ()

    def opt(self, name: str) -> str | None:
        return dict(self.verb_opts).get(name)


def refuse(message: str) -> RequestRefused:
    return RequestRefused(message)


def tokenize(command: str) -> list[str]:
    return [_UNESCAPE_RE.sub(r"\1", t) for t in _TOKEN_RE.findall(command)]


def parse(command: str | None, client: str) -> Request:
    """Validate ``SSH_ORIGINAL_COMMAND`` for ``client``; raise ``RequestRefused``."""
    if command is None:
        raise refuse("interactive login is not allowed; this account only accepts rsync")
    if not command.strip():
        raise refuse("empty command; this account only accepts rsync")
    if command.strip() == "true":
        return Request("true")
    if is_git_archive(command):
        return _git_archive(command)
    words = tokenize(command)
    if not words:
        raise refuse("empty command; this account only accepts rsync")
    if words[0] in VERBS:
        return _verb(words)
    if words[0] != "rsync":
        raise refuse(f"command {words[0][:40]!r} is not allowed; only rsync is accepted")
    if words[1:2] != ["--server"]:
        raise refuse("rsync must be invoked as 'rsync --server'")
    sender = words[2:3] == ["--sender"]
    rest = words[3:] if sender else words[2:]
    options: list[str] = []
    i = 0
    saw_dot = False
    while i < len(rest):
        word = rest[i]
        i += 1
        if word == ".":
            saw_dot = True
            break
        if word == "--":
            continue
        if _SHORT_NUM_RE.fullmatch(word):
            options.append(word)
            continue
        m = _SHORT_RE.fullmatch(word)
        if m:
            options.append(word)
            continue
        if word == "-T":  # -T DIR: accepted and replaced by the server's temp dir
            if i >= len(rest):
                raise refuse("option -T needs an argument")
            i += 1
            continue
        if word.startswith("-") and not word.startswith("--"):
            bad = next((c for c in word[1:] if c in SHORT_REFUSED), None)
            if bad is not None:
                raise refuse(f"option -{bad} ({SHORT_REFUSED[bad]}) is refused on this server")
            raise refuse(f"option {word[:40]!r} is not allowed")
        lm = _LONG_RE.fullmatch(word)
        if not lm:
            raise refuse(f"unexpected argument {word[:40]!r} before '.'")
        name, value = lm.group(1), lm.group(2)
        rule = LONG_OPTS.get(name)
        if rule is None:
            raise refuse(f"option --{name[:40]} is not allowed")
        if name == "sender":
            raise refuse("--sender must come right after --server")
        if rule == -1 or (sender and name in DOWNLOAD_REFUSED):
            raise refuse(f"option --{name} is refused on this server")
        if sender and name in UPLOAD_ONLY and rule == 0:
            # Harmless for a sender, but a sender never needs it: keep the table strict.
            raise refuse(f"option --{name} is not allowed on a download")
        if rule == 0:
            if value is not None:
                raise refuse(f"option --{name} takes no argument")
            options.append(word)
            continue
        if value is None:
            if i >= len(rest):
                raise refuse(f"option --{name} needs an argument")
            value = rest[i]
            i += 1
        if rule == "drop":
            continue
        if "\n" in value or "\0" in value:
            raise refuse(f"option --{name} has a control character in its argument")
        if name == "timeout" and not (value.isascii() and value.isdigit()):
            raise refuse("option --timeout takes a whole number of seconds")
        options.append(f"--{name}={value}")
    if not saw_dot:
        raise refuse("invalid rsync command: missing '.' argument")
    args = rest[i:]
    if len(args) != 1:
        raise refuse("exactly one path is allowed" if args else "a path is required")
    path = args[0]
    if sender:
        return _download(tuple(options), path)
    return _upload(tuple(options), path, client)


def _verb(words: list[str]) -> Request:
    name, allowed = words[0], VERBS[words[0]]
    opts: list[tuple[str, str]] = []
    paths: list[str] = []
    args: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            key, eq, value = word.partition("=")
            if key not in allowed:
                raise refuse(f"{name}: option {key[:40]!r} is not allowed")
            if not eq:
                if i >= len(words):
                    raise refuse(f"{name}: option {key} needs a value")
                value = words[i]
                i += 1
            if "\0" in value or "\n" in value:
                raise refuse(f"{name}: option {key} has a control character")
            opts.append((key, value))
        elif name in VERB_PATHS and not paths:
            paths.append(word)
        elif len(args) < VERB_ARGS.get(name, 0):
            if "\0" in word or "\n" in word:
                raise refuse(f"{name}: an argument has a control character")
            args.append(word)
        else:
            raise refuse(f"{name}: unexpected argument {word[:40]!r}")
    if len(args) != VERB_ARGS.get(name, 0):
        raise refuse(f"{name}: takes {VERB_ARGS[name]} arguments, got {len(args)}")
    given = dict(opts)
    if "--newest" in given and not (given["--newest"].isascii() and
                                    given["--newest"].isdigit()):
        raise refuse(f"{name}: --newest takes a whole number")
    if "--volume" in given and not VOLUME_RE.fullmatch(given["--volume"]):
        raise refuse(f"{name}: invalid volume name {given['--volume'][:80]!r}")
    if "--format" in given and given["--format"] not in ("tar", "zip"):
        raise refuse(f"{name}: --format must be tar or zip")
    if "--from" in given and not CLIENT_RE.fullmatch(given["--from"]):
        raise refuse(f"{name}: invalid client {given['--from'][:80]!r}")
    path = paths[0] if paths else ""
    if path:
        if path.startswith("/"):
            raise refuse(f"absolute path {path[:80]!r} is not allowed")
        _components(path)
    return Request("verb", verb=name, verb_opts=tuple(opts), verb_path=path,
                   verb_args=tuple(args), source=given.get("--from", ""))


_GIT_ARCHIVE_RE = re.compile(r"git[- ]upload-archive +('?)(/?[A-Za-z0-9._/-]*)\1")


def is_git_archive(command: str | None) -> bool:
    """Whether the command is git's ``git-upload-archive '<path>'`` (``git archive
    --remote``): its refusals are answered in git's protocol."""
    return command is not None and command.lstrip().startswith(
        ("git-upload-archive", "git upload-archive"))


def _git_archive(command: str) -> Request:
    """``git-upload-archive '/VOLUME'`` or ``'/clients/SN/VOLUME'`` (an aliased client's);
    ``'/'``: the client's only volume. git quotes the path in single quotes."""
    m = _GIT_ARCHIVE_RE.fullmatch(command.strip())
    if m is None:
        raise refuse("git-upload-archive takes one repository path: /VOLUME")
    parts, _ = _components(m.group(2))
    source = ""
    if parts[:1] == ["clients"]:
        if len(parts) < 2 or not CLIENT_RE.fullmatch(parts[1]):
            raise refuse("/clients/<serial>/<volume> names an aliased client's volume")
        source, parts = parts[1], parts[2:]
    if len(parts) > 1 or (parts and not VOLUME_RE.fullmatch(parts[0])):
        raise refuse(f"{m.group(2)[:80]!r} is not a volume: use /VOLUME, for example "
                     "/documents")
    return Request("gitarchive", volume=parts[0] if parts else "", source=source)


def _components(path: str) -> tuple[list[str], bool]:
    if "\0" in path or "\n" in path:
        raise refuse("path contains a control character")
    trailing = path.endswith("/") or path.endswith("/.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse(f"path {path[:80]!r} contains '..'")
    return parts, trailing


def _upload(options: tuple[str, ...], path: str, client: str) -> Request:
    if path.startswith("/"):
        if path == COMPLETION_PREFIX + client:
            return Request("completion", options)
        raise refuse(f"absolute path {path[:80]!r} is not allowed")
    parts, trailing = _components(path)
    if not parts:
        raise refuse("upload must name a volume, for example 'documents/'")
    head = parts[0]
    if head == "clients":
        raise refuse("clients/ holds other clients' snapshots, which are read-only")
    if head == "datastore-current":
        volume = "datastore"
    elif head == "datastore-latest" or _DS_MINUTE_RE.fullmatch(head):
        raise refuse(f"{head} is a read-only snapshot")
    elif VOLUME_RE.fullmatch(head):
        volume = head
    else:
        raise refuse(f"invalid volume name {head[:80]!r}")
    if len(parts) > 1:
        raise refuse(f"upload must target a volume root ({volume}/), not {path[:80]!r}")
    return Request("upload", options, volume=volume, trailing_slash=trailing)


def _download(options: tuple[str, ...], path: str) -> Request:
    if path.startswith("/"):
        raise refuse(f"absolute path {path[:80]!r} is not allowed")
    parts, trailing = _components(path)
    source = ""
    if parts[:1] == ["clients"]:
        if len(parts) < 2 or not CLIENT_RE.fullmatch(parts[1]):
            raise refuse("clients/<serial>/<volume>/... names an aliased client's snapshot")
        source, parts = parts[1], parts[2:]
    req = _download_own(options, parts, trailing)
    if not source:
        return req
    from dataclasses import replace

    return replace(req, source=source)


def _download_own(options: tuple[str, ...], parts: list[str], trailing: bool) -> Request:
    if not parts:
        raise refuse("download must name a snapshot, for example 'documents/latest/'")
    head = parts[0]
    if head == "datastore-latest":
        return Request("download", options, volume="datastore", snapshot="latest",
                       subpath=tuple(parts[1:]), trailing_slash=trailing)
    m = _DS_MINUTE_RE.fullmatch(head)
    if m:
        return Request("download", options, volume="datastore", snapshot="minute:" + m.group(1),
                       subpath=tuple(parts[1:]), trailing_slash=trailing)
    if not VOLUME_RE.fullmatch(head) or head == "datastore-current":
        raise refuse(f"invalid volume name {head[:80]!r}")
    if len(parts) < 2:
        raise refuse(f"download must name a snapshot: {head}/latest/ or {head}/<snapshot-id>/")
    which = parts[1]
    if which != "latest" and not SNAPSHOT_RE.fullmatch(which):
        raise refuse(f"{which[:80]!r} is not a snapshot id")
    return Request("download", options, volume=head, snapshot=which,
                   subpath=tuple(parts[2:]), trailing_slash=trailing)
