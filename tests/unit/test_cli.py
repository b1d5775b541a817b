"""The command line in-process (click's CliRunner): help for every command, the JSON of
``clients list``, ``exit-codes`` and ``config``, usage errors."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
import pytest

from tests.conftest import Server, run_cli
from xsbackup import config
from xsbackup.cli.main import cli
from xsbackup.clients.registry import Registry


def command_paths(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group under ``group``, as the words that name it (through click's
    ``list_commands``/``get_command``, which load the top level's lazy commands)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*path, name))


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for word in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), word)
        assert found is not None, word
        command = found
    return command


ALL_COMMANDS = [(), *command_paths(cli)]


def test_the_tree_has_every_documented_command() -> None:
    names = {" ".join(p) for p in ALL_COMMANDS}
    assert {"init", "serve", "ssh-command", "status", "maintenance", "keys", "clients add",
            "clients list", "clients set-policy", "clients alias", "clients pending",
            "admin add-user", "postprocess", "snapshots list", "cjson check", "prune", "du",
            "restore plan", "restore archive", "exit-codes", "config"} <= names


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "xsbackup")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(path: tuple[str, ...], flag: str) -> None:
    r = run_cli(*path, flag)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(" ".join(("Usage: xsbackup", *path)) + " ")
    summary = command_at(path).get_short_help_str(limit=1000)
    assert summary
    assert " ".join(summary.split()[:3]) in " ".join(r.stdout.split())
    assert r.stderr == ""


def test_usage_errors_exit_2_with_one_hint() -> None:
    r = run_cli("clients", "add")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert "Missing argument 'SERIAL'" in r.stderr
    assert run_cli("no-such-command").exit_code == 2
    assert run_cli("clients", "set-policy", "SN", "--keep-last", "many").exit_code == 2


def test_version() -> None:
    r = run_cli("--version")
    assert r.exit_code == 0
    assert r.stdout.startswith("xsbackup, version ")


def test_clients_list_json_and_text(server: Server) -> None:
    empty = server.cli("clients", "list", "--json")
    assert (empty.exit_code, orjson.loads(empty.stdout)) == (0, [])
    assert server.cli("clients", "list").stdout == "no clients\n"
    server.add_client("SHF00000002", nickname="Ana's XO")
    registry = Registry(server.store)
    registry.add("SHF00000001", None)
    registry.add_alias("SHF00000002", "SHF00000001")
    registry.modify("SHF00000001", lambda c: setattr(c, "disabled", True))
    (server.store.client_dir("SHF00000002") / "volumes" / "documents").mkdir()
    rows = orjson.loads(server.cli("clients", "list", "--json").stdout)
    assert [r["serial"] for r in rows] == ["SHF00000001", "SHF00000002"]
    first, second = rows
    assert set(first) == {"serial", "nickname", "uuid", "keys", "disabled", "aliases",
                          "created", "volumes"}
    assert (first["disabled"], first["keys"], first["volumes"]) == (True, [], [])
    assert (second["nickname"], second["aliases"], second["volumes"]) == (
        "Ana's XO", ["SHF00000001"], ["documents"])
    assert second["keys"] == [{"type": "ssh-ed25519", "status": "active", "supported": True}]
    text = server.cli("clients", "list").stdout.splitlines()
    assert text[0].split() == ["SHF00000001", "-", "-", "(disabled)"]
    assert text[1].split() == ["SHF00000002", "Ana's", "XO", "ssh-ed25519"]


def test_exit_codes_text_and_json_agree() -> None:
    rows = orjson.loads(run_cli("exit-codes", "--json").stdout)
    assert rows == sorted(rows, key=lambda r: r["code"])
    assert {"code": 4, "name": "StateRootError",
            "meaning": "The state root is missing, not initialised, or unusable."} in rows
    text = run_cli("exit-codes").stdout.splitlines()
    assert [line.split(None, 2) for line in text] == [
        [str(r["code"]), r["name"], r["meaning"]] for r in rows]


def test_config_json_shows_the_effective_settings(server: Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server.configure('[admission]\nslots = 3\n[postprocess]\ncjson_patterns = ["*.x"]\n')
    monkeypatch.setenv("XSBACKUP_ADMISSION_MAX_LOAD", "2.5")
    values = orjson.loads(server.cli("config", "--json").stdout)
    assert values["root"] == str(server.root)
    assert values["config_file"] == str(server.root / "xsbackup.toml")
    assert (values["admission.slots"], values["admission.max_load"]) == (3, 2.5)
    assert values["postprocess.cjson_patterns"] == ["*.x"]
    expected = config.load(server.root).flat()
    assert values.pop("storage.recorded_backend") == "hardlink"
    assert {k: v for k, v in values.items() if k not in ("root", "config_file")} == expected
    text = server.cli("config").stdout.splitlines()
    assert "admission.slots = 3" in text
    assert "postprocess.cjson_patterns = ['*.x']" in text


def test_config_defaults_is_toml_of_the_defaults(tmp_path: Path) -> None:
    text = run_cli("config", "--defaults").stdout
    parsed = tomllib.loads(text)
    flat = {f"{section}.{k}": v for section, body in parsed.items() for k, v in body.items()}
    assert flat == config.load(tmp_path, environ={}).flat()
    # It is the shipped example file.
    assert text == (Path(__file__).resolve().parents[2] / "etc" / "xsbackup.toml").read_text()


def test_config_errors_are_one_line(server: Server) -> None:
    server.configure("[admission]\nslots = -1\n")
    r = server.cli("config", "--json", check=False)
    assert r.exit_code == 3
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("xsbackup: error: ")
