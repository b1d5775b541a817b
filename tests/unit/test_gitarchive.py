"""git's upload-archive arguments and repository paths, parsed as git's server would."""

from __future__ import annotations

import os

import pytest

from xsbackup.errors import PathRefused, RequestRefused
from xsbackup.ingest import command
from xsbackup.restore.gitarchive import (
    FLUSH,
    Options,
    parse_arguments,
    pkt,
    read_arguments,
)


def test_options_anywhere_before_the_double_dash() -> None:
    assert parse_arguments(["--format=zip", "latest", "--prefix", "p/", "a", "-9", "--",
                            "-b"]) == Options("zip", "p/", "latest", ("a", "-b"), False,
                                              False, 9)
    assert parse_arguments(["HEAD", "./a//b/", "."]) == Options(treeish="HEAD", paths=())
    assert parse_arguments(["-l"]).list_only
    assert parse_arguments(["--format", "tar.gz", "-v", "x"]).verbose


@pytest.mark.parametrize(("args", "message"), [
    (["--remote=x", "latest"], "Unexpected option --remote"),
    (["--exec", "sh", "latest"], "the option '--exec' requires '--remote'"),
    (["-o", "f", "latest"], "Unexpected option --output"),
    (["--add-file=/etc/passwd", "latest"], "cannot be used together"),
    (["--worktree-attributes", "latest"], "no git repository"),
    (["--frobnicate", "latest"], "unknown option 'frobnicate'"),
    (["--format=rar", "latest"], "Unknown archive format 'rar'"),
    (["-9", "latest"], "Argument not supported for format 'tar': -9"),
    (["--format"], "requires a value"),
    ([], "a tree-ish is required"),
])
def test_refused_arguments(args: list[str], message: str) -> None:
    with pytest.raises(RequestRefused, match=message):
        parse_arguments(args)


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/etc", "a\0b"])
def test_paths_that_could_leave_are_refused(path: str) -> None:
    with pytest.raises(PathRefused):
        parse_arguments(["latest", path])


def read(data: bytes) -> list[str]:
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        return read_arguments(r, 5)
    finally:
        os.close(r)


def test_pkt_lines_up_to_the_flush() -> None:
    assert read(pkt(b"argument --format=zip\n") + pkt(b"argument latest") + FLUSH) == [
        "--format=zip", "latest"]
    for data, message in ((pkt(b"command foo\n") + FLUSH, "'argument' token or flush"),
                          (b"zzzz", "bad pkt-line"), (b"0002", "bad pkt-line length"),
                          (pkt(b"argument x"), "hung up before its flush-pkt"),
                          (b"".join(pkt(b"argument x") for _ in range(70)) + FLUSH,
                           "Too many options")):
        with pytest.raises(RequestRefused, match=message):
            read(data)


@pytest.mark.parametrize(("cmd", "volume", "source"), [
    ("git-upload-archive '/documents'", "documents", ""),
    ("git-upload-archive 'documents'", "documents", ""),
    ("git upload-archive '/'", "", ""),
    ("git-upload-archive '/clients/SHF00000042/datastore/'", "datastore", "SHF00000042"),
])
def test_repository_paths(cmd: str, volume: str, source: str) -> None:
    req = command.parse(cmd, "SHF00112233")
    assert (req.kind, req.volume, req.source) == ("gitarchive", volume, source)


@pytest.mark.parametrize("cmd", [
    "git-upload-archive '/documents/../../etc'", "git-upload-archive '/a/b'",
    "git-upload-archive '/documents'; rm -rf /", "git-upload-archive '/clients/x y/docs'",
    "git-upload-archive '/documents' extra", "git-upload-archive \"/documents\"",
])
def test_repository_paths_refused(cmd: str) -> None:
    assert command.is_git_archive(cmd)
    with pytest.raises(RequestRefused):
        command.parse(cmd, "SHF00112233")
