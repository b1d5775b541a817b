"""Configuration: defaults < TOML file < ``XSBACKUP_*`` environment < command line.

Every key is declared once in ``SCHEMA`` with its type and default, so the loader validates
the whole configuration at load time and the README's table is generated from the same
place. A key ``section.name`` is set in the file as ``[section] name = ...`` and in the
environment as ``XSBACKUP_SECTION_NAME``. Lists are comma-separated in the environment.

The state root is chosen by ``--root`` or ``XSBACKUP_ROOT``; the file by ``--config``,
``XSBACKUP_CONFIG``, or else ``<root>/xsbackup.toml`` when it exists.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from xsbackup import units
from xsbackup.config.check import CheckSettings  # new sections have their own modules
from xsbackup.config.declare import section as _section
from xsbackup.config.declare import setting as _key
from xsbackup.config.fleet import FleetSettings
from xsbackup.config.offsite import OffsiteSettings
from xsbackup.errors import ConfigError
from xsbackup.layout import state_root
from xsbackup.records import MISSING
from xsbackup.records import fields_of as fields


@_section
class ServerSettings:
    bind: str = _key("127.0.0.1", "address the embedded SSH and HTTP servers bind")
    ssh_port: int = _key(2222, "SSH port: the embedded server's, and the one restore plans "
                         "give clients", minimum=0, maximum=65535)
    embedded_ssh: bool = _key(True, "serve runs the embedded SSH server (false: OpenSSH "
                              "answers SSH; also serve --no-ssh)")
    http_port: int = _key(8080, "HTTP server port", minimum=0, maximum=65535)
    service_user: str = _key("xsbackup", "SSH login name that acts as the key's own client")
    public_host: str = _key("", "host name given to clients in backupurl "
                            "(default: the HTTP Host header)")
    shutdown_timeout: float = _key(30.0, "seconds running transfers get on SIGTERM", minimum=0)
    max_startups: str = _key("10:30:60", "unauthenticated SSH connections, start:rate:full "
                             "as OpenSSH's MaxStartups: from start on, a new one drops the "
                             "longest-silent one with rate% odds rising to 100% at full",
                             kind="startups")
    login_grace_seconds: float = _key(15.0, "seconds from an SSH connection's accept to a "
                                      "successful login, and again to its command "
                                      "(OpenSSH's LoginGraceTime; formerly auth_timeout)",
                                      minimum=1)
    max_connections: int = _key(64, "concurrent authenticated SSH sessions at most",
                                minimum=1)
    max_auth_failures: int = _key(10, "failed SSH logins per address per 5 minutes before "
                                  "that address is refused", minimum=1)
    forked_command: bool = _key(True, "serve runs the pre-loaded forced command server "
                                "(<root>/run/forced.sock): each SSH connection's forced "
                                "command is a fork of it, without Python's start-up; "
                                "off, or without serve, each runs alone")

    @property
    def startups(self) -> units.Startups:
        return units.parse_startups(self.max_startups)


@_section
class HttpSettings:
    threads: int = _key(8, "HTTP worker threads", minimum=1)
    connection_limit: int = _key(1000, "open HTTP connections at most (more wait in the "
                                 "listen backlog)", minimum=1)
    channel_timeout: int = _key(30, "seconds an HTTP connection may sit idle, take to send "
                                "one whole request, or leave a response unread, before it "
                                "is closed", minimum=1)
    max_downloads: int = _key(4, "archives, files and Journal entries streamed at once, in "
                              "all (at most http.threads - 2, at least 1)", minimum=1)
    downloads_per_user: int = _key(2, "downloads one web user may stream at once", minimum=1)
    trusted_proxies: list[str] = _key(
        [], "addresses or networks (CIDR) of reverse proxies in front of the web server; "
        "only from these are X-Forwarded-For and X-Forwarded-Proto believed, so the "
        "per-address limits count the device or browser behind the proxy",
        kind="networks")


@_section
class AvailabilitySettings:
    window_count: int = _key(10, "clients admitted per window by the availability check",
                             minimum=0)
    window_minutes: float = _key(5.0, "the admission window", minimum=0.01)
    reservation_minutes: float = _key(10.0, "how long a 200 reserves admission for that "
                                      "client's SSH transfer", minimum=0.01)
    max_per_address: int = _key(2, "grants one source address holds at once (0: no bound; "
                                "raise it when devices share an address behind NAT)",
                                minimum=0)
    new_per_window: int = _key(5, "places of a window open to clients without a snapshot "
                               "yet (any device can register itself); the rest stay for "
                               "clients with history", minimum=1)


POLICIES = ("open", "approve", "closed")


@_section
class RegistrationSettings:
    new_serial: str = _key("open", "policy for an unknown serial", choices=POLICIES)
    new_key: str = _key("approve", "policy for a known serial with a new key",
                        choices=POLICIES)
    max_new_per_address_per_hour: int = _key(
        20, "new serials registered from one address per hour at most (0: unlimited)",
        minimum=0)
    max_new_per_hour: int = _key(300, "new serials registered per hour at most, from all "
                                 "addresses (0: unlimited)", minimum=0)
    max_pending_per_serial: int = _key(5, "registrations of one serial kept waiting for "
                                       "approval at most", minimum=1)


@_section
class AdmissionSettings:
    max_load: float = _key(8.0, "refuse transfers above this 1-minute load average",
                           minimum=0)
    max_blocks_pct: float = _key(95.0, "refuse transfers above this % of disk blocks",
                                 minimum=0, maximum=100)
    max_inodes_pct: float = _key(95.0, "refuse transfers above this % of inodes",
                                 minimum=0, maximum=100)
    slots: int = _key(10, "concurrent transfers at most", minimum=0)
    max_sessions_per_client: int = _key(3, "concurrent SSH sessions (transfers, restores, "
                                        "archives) of one client at most", minimum=1)
    maintenance: bool = _key(False, "refuse every transfer (also: xsbackup maintenance)")


@_section
class IngestSettings:
    rsync: str = _key("rsync", "the rsync executable the server runs")
    timeout: int = _key(300, "seconds of I/O silence after which the server ends a session "
                        "(rsync --timeout; a client's own shorter --timeout is kept; 0: none)",
                        minimum=0)
    abandon_partial_hours: float = _key(24.0, "an interrupted transfer's tree, kept so the "
                                        "next one can resume, is discarded by prune once "
                                        "untouched this long (at once when the disk is "
                                        "under pressure)", minimum=0)


# The storage backends (``xsbackup.storage``); the factory there maps each name to its class.
STORAGE_BACKENDS = ("hardlink", "btrfs", "reflink")


@_section
class StorageSettings:
    backend: str = _key("auto", "how snapshots are stored: hardlink (one tree per "
                        "snapshot, unchanged files hardlinked to the previous one), btrfs "
                        "(read-only subvolume snapshots), reflink (copy-on-write copies, "
                        "XFS); auto: what xsbackup init chose and recorded in the state "
                        "root (a root without a record is hardlink). Naming another "
                        "backend than the recorded one is refused",
                        choices=("auto", *STORAGE_BACKENDS))
    root_group: str = _key("", "group that may read the state root (init makes it 0750, "
                           "owned by this group); empty: the service account only (0700)")


@_section
class PostprocessSettings:
    cjson_patterns: list[str] = _key(["*.metadata", "*.cjson"],
                                     "file-name patterns validated as Canonical JSON")
    cjson_max_bytes: int = _key(1 << 20, "metadata files larger are reported, not read "
                                "(bytes, or a size such as \"1MiB\", \"512KiB\", \"1MB\")",
                                minimum=0, kind="size")
    workers: int = _key(4, "clients post-processed in parallel", minimum=1)
    sweep_seconds: float = _key(60.0, "periodic queue sweep of --watch", minimum=0.1)


@_section
class HooksSettings:
    dir: str = _key("hooks", "hook directory; relative paths are under the state root")
    timeout: float = _key(60.0, "seconds a hook may run before it is killed", minimum=0.1)


@_section
class RetentionSettings:
    keep_last: int = _key(0, "keep the N newest snapshots", minimum=-1)
    keep_within: str = _key("90d", "keep everything newer than this (12h, 90d, 2w, "
                            "1m = 31 days, 1y = 365 days; empty: off)", kind="duration")
    keep_hourly: int = _key(0, "keep the newest snapshot of N hours (-1: all)", minimum=-1)
    keep_daily: int = _key(0, "keep the newest snapshot of N days", minimum=-1)
    keep_weekly: int = _key(0, "keep the newest snapshot of N ISO weeks", minimum=-1)
    keep_monthly: int = _key(0, "keep the newest snapshot of N months", minimum=-1)
    keep_yearly: int = _key(0, "keep the newest snapshot of N years", minimum=-1)
    keep_first_monthly: int = _key(-1, "after keep_within, keep the FIRST snapshot of N "
                                   "months (-1: all; the original XS server)", minimum=-1)


@_section
class QuotaSettings:
    soft_quota_pct: float = _key(70.0, "trim in fair-share rounds above this % of the state "
                                 "root's blocks or inodes", minimum=0, maximum=100)


@_section
class PruneSettings:
    schedule: str = _key("03:00", "daily time (server local HH:MM, 00:00-23:59) of the "
                         "scheduled policy prune and quota check; empty: never", kind="clock")


@_section
class UiSettings:
    overdue_days: float = _key(2.0, "days without a successful backup before the web UI "
                               "marks a client overdue", minimum=0.01)
    max_login_failures: int = _key(5, "failed sign-ins per user name, and per address, "
                                   "before sign-ins are refused for a while", minimum=1)
    login_lockout_minutes: float = _key(5.0, "window in which failed sign-ins count, and how "
                                        "long a refusal lasts", minimum=0.01)


@_section
class LogSettings:
    target: str = _key("file", "where logs go", choices=("file", "syslog"))
    level: str = _key("info", "log level", choices=("debug", "info", "warning", "error"))


SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings, "http": HttpSettings, "availability": AvailabilitySettings,
    "registration": RegistrationSettings, "admission": AdmissionSettings,
    "ingest": IngestSettings, "storage": StorageSettings, "postprocess": PostprocessSettings,
    "hooks": HooksSettings, "retention": RetentionSettings, "quota": QuotaSettings,
    "prune": PruneSettings, "ui": UiSettings, "log": LogSettings, "check": CheckSettings,
    "offsite": OffsiteSettings, "fleet": FleetSettings,
}
_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}


@_section
class Key:
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    kind: str | None = None


def _schema() -> dict[str, Key]:
    out: dict[str, Key] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            default = f.default_factory() if f.default is MISSING else f.default
            meta = f.metadata
            out[f"{section}.{f.name}"] = Key(_TYPES[str(f.type)], default, meta["help"],
                                             meta["minimum"], meta.get("maximum"),
                                             meta["choices"], meta.get("kind"))
    return out


# Every key, derived from the section dataclasses above (their fields are the one owner).
SCHEMA: dict[str, Key] = _schema()
# Old names still read, as the key they became (a file must not give both).
RENAMED: dict[str, str] = {"server.auth_timeout": "server.login_grace_seconds"}


def _env_name(name: str) -> str:
    return "XSBACKUP_" + name.replace(".", "_").upper()

# The text forms a ``kind`` names; each raises ValueError with a one-line reason.
_KINDS: dict[str, Callable[[str], object]] = {
    "duration": units.parse_duration, "clock": units.parse_clock,
    "startups": units.parse_startups}


def _coerce(name: str, key: Key, value: Any, *, from_text: bool) -> Any:
    """``value`` as ``key``'s type, checked against its kind and bounds; ``ConfigError``
    naming ``name`` (the key, or the environment variable it came from) otherwise."""
    if key.kind == "networks":
        import ipaddress  # here: the forced command's settings have no address to check

        out: Any = _as_type(name, key, value, from_text=from_text)
        for item in out:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"{name}: not an address or network: {item!r}") from None
    elif key.kind == "size":
        try:
            out = units.parse_size(value)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
    elif key.kind is not None:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected str, got {value!r}")
        try:
            if value or key.kind == "startups":  # "" turns a duration or clock off
                _KINDS[key.kind](value)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
        out = value
    else:
        out = _as_type(name, key, value, from_text=from_text)
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if key.minimum is not None and out < key.minimum:
        raise ConfigError(f"{name}: must be at least {key.minimum:g}, got {out!r}")
    if key.maximum is not None and out > key.maximum:
        raise ConfigError(f"{name}: must be at most {key.maximum:g}, got {out!r}")
    if key.choices is not None and out not in key.choices:
        raise ConfigError(f"{name}: must be one of {', '.join(key.choices)}, got {out!r}")
    return out


def _as_type(name: str, key: Key, value: Any, *, from_text: bool) -> Any:
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
    return out


@_section
class Settings:
    """The validated configuration, one typed section each, with the state root resolved."""

    root: Path
    config_file: Path | None
    server: ServerSettings
    http: HttpSettings
    availability: AvailabilitySettings
    registration: RegistrationSettings
    admission: AdmissionSettings
    ingest: IngestSettings
    storage: StorageSettings
    postprocess: PostprocessSettings
    hooks: HooksSettings
    retention: RetentionSettings
    quota: QuotaSettings
    prune: PruneSettings
    ui: UiSettings
    log: LogSettings
    check: CheckSettings
    offsite: OffsiteSettings
    fleet: FleetSettings

    @classmethod
    def build(cls, root: Path, values: Mapping[str, Any], config_file: Path | None) -> Settings:
        sections: dict[str, Any] = {}
        for section, sec_cls in SECTIONS.items():
            sections[section] = sec_cls(**{
                f.name: values[f"{section}.{f.name}"] for f in fields(sec_cls)})
        return cls(root=root, config_file=config_file, **sections)

    def flat(self) -> dict[str, Any]:
        """Every key as ``section.name`` to its value (``xsbackup config`` shows this)."""
        return {f"{section}.{f.name}": getattr(getattr(self, section), f.name)
                for section, sec_cls in SECTIONS.items() for f in fields(sec_cls)}

    def replace(self, **overrides: Any) -> Settings:
        """A copy with ``section__name=value`` overrides (tests and the CLI use this)."""
        values = self.flat()
        for k, v in overrides.items():
            name = k.replace("__", ".")
            if name not in SCHEMA:
                raise ConfigError(f"unknown setting {name}")
            values[name] = _coerce(name, SCHEMA[name], v, from_text=False)
        return Settings.build(self.root, values, self.config_file)

    @property
    def hooks_dir(self) -> Path:
        return self.root / self.hooks.dir


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for k, v in body.items():
            name = RENAMED.get(f"{section}.{k}", f"{section}.{k}")
            if name not in SCHEMA:
                raise ConfigError(f"{where}: unknown setting {name}")
            if name in out:
                raise ConfigError(f"{where}: {section}.{k} and {name} are one setting; "
                                  f"set only {name}")
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
    root_path = Path(state_root(root, env))
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
    for old, name in RENAMED.items():
        if _env_name(old) in env:
            values[name] = _coerce(_env_name(old), SCHEMA[name], env[_env_name(old)],
                                   from_text=True)
    for name, key in SCHEMA.items():
        env_name = _env_name(name)
        if env_name in env:
            values[name] = _coerce(env_name, key, env[env_name], from_text=True)
    for name, v in (overrides or {}).items():
        if v is None:
            continue
        if name not in SCHEMA:
            raise ConfigError(f"unknown setting {name}")
        values[name] = _coerce(name, SCHEMA[name], v, from_text=isinstance(v, str))
    return Settings.build(root_path, values, cfg)


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
