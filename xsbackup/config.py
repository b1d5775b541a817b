"""Configuration: defaults < TOML file < ``XSBACKUP_*`` environment < command line.

Every key is declared once in ``SCHEMA`` with its type and default, so the loader validates
the whole configuration at load time and the README's table is generated from the same
place. A key ``section.name`` is set in the file as ``[section] name = ...`` and in the
environment as ``XSBACKUP_SECTION_NAME``. Lists are comma-separated in the environment.

The state root is chosen by ``--root`` or ``XSBACKUP_ROOT``; the file by ``--config``,
``XSBACKUP_CONFIG``, or else ``<root>/xsbackup.toml`` when it exists.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xsbackup.errors import ConfigError

DEFAULT_ROOT = "./xsbackup-state"


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] | None = None


SCHEMA: dict[str, Key] = {
    "server.bind": Key(str, "127.0.0.1", "address the embedded SSH and HTTP servers bind"),
    "server.ssh_port": Key(int, 2222, "embedded SSH server port", minimum=0),
    "server.http_port": Key(int, 8080, "HTTP server port", minimum=0),
    "server.service_user": Key(str, "xsbackup",
                               "SSH login name that acts as the key's own client"),
    "server.public_host": Key(str, "", "host name given to clients in backupurl "
                              "(default: the HTTP Host header)"),
    "server.shutdown_timeout": Key(float, 30.0, "seconds running transfers get on SIGTERM",
                                   minimum=0),
    "server.max_connections": Key(int, 64, "concurrent SSH connections at most", minimum=1),
    "server.auth_timeout": Key(float, 30.0, "seconds an SSH client has to authenticate",
                               minimum=1),
    "server.max_auth_failures": Key(int, 10, "failed SSH logins per address per 5 minutes "
                                    "before that address is refused", minimum=1),
    "http.threads": Key(int, 8, "HTTP worker threads", minimum=1),
    "availability.window_count": Key(int, 10, "clients admitted per window by the "
                                     "availability check", minimum=0),
    "availability.window_minutes": Key(float, 5.0, "the admission window", minimum=0.01),
    "availability.reservation_minutes": Key(float, 10.0, "how long a 200 reserves admission "
                                            "for that client's SSH transfer", minimum=0.01),
    "registration.new_serial": Key(str, "open", "policy for an unknown serial",
                                   choices=("open", "approve", "closed")),
    "registration.new_key": Key(str, "approve", "policy for a known serial with a new key",
                                choices=("open", "approve", "closed")),
    "admission.max_load": Key(float, 8.0, "refuse transfers above this 1-minute load average",
                              minimum=0),
    "admission.max_blocks_pct": Key(float, 95.0, "refuse transfers above this % of disk blocks",
                                    minimum=0),
    "admission.max_inodes_pct": Key(float, 95.0, "refuse transfers above this % of inodes",
                                    minimum=0),
    "admission.slots": Key(int, 10, "concurrent transfers at most", minimum=0),
    "admission.maintenance": Key(bool, False, "refuse every transfer (also: xsbackup maintenance)"),
    "ingest.rsync": Key(str, "rsync", "the rsync executable the server runs"),
    "ingest.timeout": Key(int, 0, "rsync --timeout forced on the server side (0: the client's)",
                          minimum=0),
    "postprocess.cjson_patterns": Key(list, ["*.metadata", "*.cjson"],
                                      "file-name patterns validated as Canonical JSON"),
    "postprocess.cjson_max_bytes": Key(int, 1 << 20, "metadata files larger are reported, not read",
                                       minimum=0),
    "postprocess.workers": Key(int, 4, "clients post-processed in parallel", minimum=1),
    "postprocess.sweep_seconds": Key(float, 60.0, "periodic queue sweep of --watch", minimum=0.1),
    "hooks.dir": Key(str, "hooks", "hook directory; relative paths are under the state root"),
    "hooks.timeout": Key(float, 60.0, "seconds a hook may run before it is killed", minimum=0.1),
    "retention.keep_last": Key(int, 0, "keep the N newest snapshots", minimum=-1),
    "retention.keep_within": Key(str, "90d", "keep everything newer than this (e.g. 90d, 12h; "
                                 "empty: off)"),
    "retention.keep_hourly": Key(int, 0, "keep the newest snapshot of N hours (-1: all)",
                                 minimum=-1),
    "retention.keep_daily": Key(int, 0, "keep the newest snapshot of N days", minimum=-1),
    "retention.keep_weekly": Key(int, 0, "keep the newest snapshot of N ISO weeks", minimum=-1),
    "retention.keep_monthly": Key(int, 0, "keep the newest snapshot of N months", minimum=-1),
    "retention.keep_yearly": Key(int, 0, "keep the newest snapshot of N years", minimum=-1),
    "retention.keep_first_monthly": Key(int, -1, "after keep_within, keep the FIRST snapshot "
                                        "of N months (-1: all; the original XS server)",
                                        minimum=-1),
    "quota.soft_quota_pct": Key(float, 70.0, "trim in fair-share rounds above this % of the "
                                "state root's blocks or inodes", minimum=0),
    "prune.schedule": Key(str, "03:00", "daily time (server local HH:MM) of the scheduled "
                          "policy prune and quota check; empty: never"),
    "ui.overdue_days": Key(float, 2.0, "days without a successful backup before the web "
                           "UI marks a client overdue", minimum=0.01),
    "ui.max_login_failures": Key(int, 5, "failed sign-ins per user name, and per address, "
                                 "before sign-ins are refused for a while", minimum=1),
    "ui.login_lockout_minutes": Key(float, 5.0, "window in which failed sign-ins count, "
                                    "and how long a refusal lasts", minimum=0.01),
    "log.target": Key(str, "file", "where logs go", choices=("file", "syslog")),
    "log.level": Key(str, "info", "log level", choices=("debug", "info", "warning", "error")),
}


def _coerce(name: str, key: Key, value: Any, *, from_text: bool) -> Any:
    try:
        if key.type is bool:
            if isinstance(value, bool):
                out: Any = value
            elif from_text and str(value).lower() in ("1", "true", "yes", "on"):
                out = True
            elif from_text and str(value).lower() in ("0", "false", "no", "off", ""):
                out = False
            else:
                raise ValueError(value)
        elif key.type is list:
            if from_text and isinstance(value, str):
                out = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out = list(value)
            else:
                raise ValueError(value)
        elif key.type is int:
            if isinstance(value, bool) or (not from_text and not isinstance(value, int)):
                raise ValueError(value)
            out = int(value)
        elif key.type is float:
            if isinstance(value, bool) or (
                not from_text and not isinstance(value, int | float)
            ):
                raise ValueError(value)
            out = float(value)
        else:
            if not isinstance(value, str):
                raise ValueError(value)
            out = value
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}: expected {key.type.__name__}, got {value!r}"
        ) from None
    if key.minimum is not None and out < key.minimum:
        raise ConfigError(f"{name}: must be at least {key.minimum:g}, got {out!r}")
    if key.choices is not None and out not in key.choices:
        raise ConfigError(f"{name}: must be one of {', '.join(key.choices)}, got {out!r}")
    return out


@dataclass(frozen=True)
class Settings:
    """The validated configuration, with the state root resolved to an absolute path."""

    root: Path
    values: Mapping[str, Any]
    config_file: Path | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def replace(self, **overrides: Any) -> Settings:
        """A copy with ``section_name=value`` overrides (tests and the CLI use this)."""
        values = dict(self.values)
        for k, v in overrides.items():
            name = k.replace("__", ".")
            if name not in SCHEMA:
                raise ConfigError(f"unknown setting {name}")
            values[name] = _coerce(name, SCHEMA[name], v, from_text=False)
        return Settings(self.root, values, self.config_file)

    @property
    def hooks_dir(self) -> Path:
        return self.root / str(self.values["hooks.dir"])


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for k, v in body.items():
            name = f"{section}.{k}"
            if name not in SCHEMA:
                raise ConfigError(f"{where}: unknown setting {name}")
            out[name] = v
    return out


def load(
    root: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the configuration. ``overrides`` are CLI values keyed by name."""
    env = os.environ if environ is None else environ
    root_text = root if root is not None else env.get("XSBACKUP_ROOT", DEFAULT_ROOT)
    root_path = Path(os.path.abspath(os.fspath(root_text)))
    cfg_text = config_file if config_file is not None else env.get("XSBACKUP_CONFIG")
    cfg: Path | None
    if cfg_text:
        cfg = Path(os.path.abspath(os.fspath(cfg_text)))
        if not cfg.is_file():
            raise ConfigError(f"configuration file {cfg} does not exist")
    else:
        cfg = root_path / "xsbackup.toml"
        if not cfg.is_file():
            cfg = None

    values = {name: key.default for name, key in SCHEMA.items()}
    if cfg is not None:
        try:
            with cfg.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{cfg}: {e}") from None
        for name, v in _flatten(data, str(cfg)).items():
            values[name] = _coerce(name, SCHEMA[name], v, from_text=False)
    for name, key in SCHEMA.items():
        env_name = "XSBACKUP_" + name.replace(".", "_").upper()
        if env_name in env:
            values[name] = _coerce(env_name, key, env[env_name], from_text=True)
    for name, v in (overrides or {}).items():
        if v is None:
            continue
        if name not in SCHEMA:
            raise ConfigError(f"unknown setting {name}")
        values[name] = _coerce(name, SCHEMA[name], v, from_text=isinstance(v, str))
    return Settings(root_path, values, cfg)


def example_toml() -> str:
    """The documented defaults as a TOML file (``etc/xsbackup.toml`` is this text)."""
    lines = ["# xsbackup configuration: every key with its default.",
             "# Precedence: command line > XSBACKUP_<SECTION>_<KEY> environment > this file.", ""]
    section = ""
    for name, key in SCHEMA.items():
        sec, k = name.split(".", 1)
        if sec != section:
            if section:
                lines.append("")
            lines.append(f"[{sec}]")
            section = sec
        lines.append(f"# {key.help}")
        lines.append(f"{k} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)
