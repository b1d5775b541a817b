"""The pure SSH_ORIGINAL_COMMAND parser: refusals, accepted forms, and a fuzz property."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile_cases import DOWN, HOSTILE, SN, UP
from xsbackup import config
from xsbackup.errors import RequestRefused
from xsbackup.ingest.command import VERB_ARGS, VERB_PATHS, VERBS, Request, parse
from xsbackup.ingest.upload import _server_opts
from xsbackup.store import CLIENT_RE, SNAPSHOT_RE, VOLUME_RE


@pytest.mark.parametrize(("command", "expected"), [(c, e) for _, c, e in HOSTILE],
                         ids=[i for i, _, _ in HOSTILE])
def test_hostile_is_refused(command: str, expected: str) -> None:
    with pytest.raises(RequestRefused) as err:
        parse(command, SN)
    assert expected in err.value.message
    assert "\n" not in err.value.message
    assert err.value.exit_code == 40


def test_interactive_login_is_refused() -> None:
    with pytest.raises(RequestRefused, match="interactive login"):
        parse(None, SN)


def test_true_is_a_connectivity_check() -> None:
    assert parse("true", SN).kind == "true"


@pytest.mark.parametrize(("command", "volume"), [
    ("rsync --server -ltrze.iLsfxCIvu --timeout=160 --delete --partial . datastore-current",
     "datastore"),
    ("rsync --server -ltrze.iLsfxCIvu --timeout=160 --delete --partial . power-logs", "power-logs"),
    ("rsync --server -ltrze.iLsfxCIvu --timeout=160 --delete --partial . documents", "documents"),
    (f"{UP} . documents/", "documents"),
    ("rsync --server -vlHogDtpAXre.iLsfxCIvu --numeric-ids --stats . photos", "photos"),
    ("rsync --server -blHogDtprce.iLsfxCIvu --delete --partial-dir .p . documents/",
     "documents"),
])
def test_uploads_accepted(command: str, volume: str) -> None:
    req = parse(command, SN)
    assert req.kind == "upload"
    assert req.volume == volume
    assert not any(o.startswith(("--partial-dir", "--temp-dir")) for o in req.options)


def test_ds_backup_completion_flag() -> None:
    req = parse("rsync --server -ltrze.iLsfxCIvu --timeout=10 --temp-dir /tmp . "
                f"/var/lib/ds-backup/completion/{SN}", SN)
    assert req.kind == "completion"
    assert req.options == ("-ltrze.iLsfxCIvu", "--timeout=10")


@pytest.mark.parametrize(("path", "volume", "snapshot", "sub", "slash"), [
    ("documents/latest/", "documents", "latest", (), True),
    ("documents/2026-01-02T030405Z/", "documents", "2026-01-02T030405Z", (), True),
    ("documents/2026-01-02T030405Z-2/a/b", "documents", "2026-01-02T030405Z-2", ("a", "b"),
     False),
    ("datastore-latest/", "datastore", "latest", (), True),
    ("datastore-2026-01-02_03:04", "datastore", "minute:2026-01-02_03:04", (), False),
    ("my\\ docs/latest/", "", "", (), True),
])
def test_downloads(path: str, volume: str, snapshot: str, sub: tuple[str, ...],
                   slash: bool) -> None:
    if not volume:
        with pytest.raises(RequestRefused):
            parse(f"{DOWN} . {path}", SN)
        return
    req = parse(f"{DOWN} . {path}", SN)
    assert (req.kind, req.volume, req.snapshot, req.subpath, req.trailing_slash) == \
        ("download", volume, snapshot, sub, slash)


TOKENS = st.sampled_from([
    "rsync", "--server", "--sender", ".", "..", "/", "documents", "documents/", "latest",
    "-logDtpre.iLsfxCIvu", "-e.iLsfxCIvu", "--delete", "--inplace", "--temp-dir", "/tmp",
    "--partial-dir", "-T", "--timeout=10", "--link-dest=/", "-B512", "-@-1", "--", "-s",
    "datastore-current", "datastore-latest", "/var/lib/ds-backup/completion/SHF00112233",
    "2026-01-02T030405Z", "\\ ", ";", "$(x)", "--files-from=-", "--info=progress2",
    "list", "archive", "manifest", "--volume", "--at", "--format", "--from", "tar", "zip",
    "--volume=documents", "--from=SHF00000042", "clients", "a/../b", "true",
    "diff", "find", "--newest", "3", "latest", "*.odt",
])


def assert_contract(req: Request, command: str) -> None:
    """What ``parse`` promises the dispatcher about a request it accepts, kind by kind."""
    for text in (*req.options, *(v for _, v in req.verb_opts), req.verb_path,
                 *req.verb_args):
        assert "\n" not in text
        assert "\0" not in text
    assert req.source == "" or CLIENT_RE.fullmatch(req.source)
    if req.kind == "true":
        assert command.strip() == "true"
    elif req.kind == "upload":
        assert VOLUME_RE.fullmatch(req.volume)
        assert not req.source
        assert not any(o.startswith(("--partial-dir", "--temp-dir")) for o in req.options)
    elif req.kind == "completion":
        assert not req.volume
        assert not req.source
    elif req.kind == "download":
        assert VOLUME_RE.fullmatch(req.volume)
        assert req.snapshot == "latest" or SNAPSHOT_RE.fullmatch(req.snapshot) \
            or req.snapshot.startswith("minute:")
        assert ".." not in req.subpath
    elif req.kind == "verb":
        assert req.verb in VERBS
        assert all(key in VERBS[req.verb] for key, _ in req.verb_opts)
        assert req.source == dict(req.verb_opts).get("--from", "")
        assert not req.verb_path or req.verb in VERB_PATHS
        assert len(req.verb_args) == VERB_ARGS.get(req.verb, 0)
        assert not req.verb_path.startswith("/")
        assert ".." not in req.verb_path.split("/")
    else:
        raise AssertionError(f"unknown request kind {req.kind!r}")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(TOKENS, st.text(max_size=12)), max_size=12))
def test_parser_raises_only_refusals(words: list[str]) -> None:
    command = " ".join(words)
    try:
        req = parse(command, SN)
    except RequestRefused as e:
        message = e.message
    else:
        assert_contract(req, command)
        return
    assert message
    assert "\n" not in message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_on_arbitrary_text(command: str) -> None:
    with contextlib.suppress(RequestRefused):
        parse(command, SN)


@pytest.mark.parametrize(("command", "limit", "expected"), [
    # ds-backup's own --timeout=160 is kept under the default limit of 300 s...
    ("rsync --server -ltrze.iLsfxCIvu --timeout=160 --delete --partial . documents",
     300, "--timeout=160"),
    # ...and a client that asks for none, for 0 (none) or for more gets the limit.
    ("rsync --server -logDtpre.iLsfxCIvu . documents/", 300, "--timeout=300"),
    ("rsync --server -logDtpre.iLsfxCIvu --timeout=0 . documents/", 300, "--timeout=300"),
    ("rsync --server -logDtpre.iLsfxCIvu --timeout=5 --timeout=9000 . documents/", 300,
     "--timeout=300"),
    ("rsync --server --sender -logDtpre.iLsfxCIvu . documents/latest/", 300, "--timeout=300"),
    # ingest.timeout = 0: the client's own choice, as rsync would make it.
    ("rsync --server -logDtpre.iLsfxCIvu --timeout=160 . documents/", 0, "--timeout=160"),
    ("rsync --server -logDtpre.iLsfxCIvu . documents/", 0, None),
])
def test_server_side_io_timeout(tmp_path: Path, command: str, limit: int,
                                expected: str | None) -> None:
    settings = config.load(tmp_path, overrides={"ingest.timeout": limit}, environ={})
    opts = _server_opts(settings, parse(command, SN))
    assert [o for o in opts if o.startswith("--timeout")] == ([expected] if expected else [])


def test_the_default_io_timeout_leaves_ds_backup_its_own() -> None:
    assert config.SCHEMA["ingest.timeout"].default >= 160


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "١٢"])
def test_timeout_takes_whole_seconds(value: str) -> None:
    with pytest.raises(RequestRefused, match="whole number of seconds"):
        parse(f"rsync --server -logDtpre.iLsfxCIvu --timeout={value} . documents/", SN)


def test_diff_and_find_verbs() -> None:
    req = parse("diff 2026-01-02T030405Z latest --volume documents", SN)
    assert (req.verb, req.verb_args, req.opt("--volume")) == \
        ("diff", ("2026-01-02T030405Z", "latest"), "documents")
    req = parse("find '*.odt' --newest 3 --from SHF00000042", SN)
    assert (req.verb, req.verb_args, req.opt("--newest"), req.source) == \
        ("find", ("'*.odt'",), "3", "SHF00000042")
    for bad in ("diff latest", "diff a b c", "find", "find x --newest many",
                "find x --at latest"):
        with pytest.raises(RequestRefused):
            parse(bad, SN)
