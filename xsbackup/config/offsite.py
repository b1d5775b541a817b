"""The ``[offsite]`` section: off-site copies in a restic repository (``xsbackup.offsite``)."""

from __future__ import annotations

from xsbackup.config.declare import section
from xsbackup.config.declare import setting as _key
from xsbackup.errors import ConfigError

# Repository locations restic accepts: a local path, or one of its backends' prefixes.
OFFSITE_BACKENDS = ("sftp:", "s3:", "b2:", "rest:", "azure:", "gs:", "swift:", "rclone:")
# Backend credentials restic reads from the environment; serve passes these through.
OFFSITE_ENV = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
               "B2_ACCOUNT_ID", "B2_ACCOUNT_KEY", "AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_KEY",
               "GOOGLE_PROJECT_ID", "GOOGLE_APPLICATION_CREDENTIALS"]


@section
class OffsiteSettings:
    repository: str = _key("", "restic repository of the off-site copies: /path, "
                           "sftp:user@host:/path, s3:http://host:port/bucket, b2:..., "
                           "rest:...; empty: no off-site copies")
    password_file: str = _key("offsite/password", "file holding the repository password "
                              "(mode 0600; relative paths are under the state root)")
    password_command: str = _key("", "command printing the repository password (instead "
                                 "of password_file; run by restic through a shell)")
    credentials_file: str = _key("", "KEY=VALUE lines of backend credentials "
                                 "(AWS_ACCESS_KEY_ID=...; mode 0600; relative paths are "
                                 "under the state root); empty: none")
    credentials_env: list[str] = _key(OFFSITE_ENV,
                                      "environment variables passed on to restic")
    restic: str = _key("restic", "the restic executable")
    options: list[str] = _key([], "restic extended options, each key=value (restic -o; "
                              "e.g. sftp.command=ssh -p 2200 backup@host -s sftp)")
    volumes: list[str] = _key([], "volumes replicated (empty: every volume)")
    upload_limit: int = _key(0, "upload bandwidth limit per second (a size such as "
                             "\"2MiB\"; 0: none)", minimum=0, kind="size")
    window_start: str = _key("", "replicate only from this time of day (server local "
                             "HH:MM; empty, with window_end empty: at any time)",
                             kind="clock")
    window_end: str = _key("", "... until this time of day (may be past midnight: "
                           "22:00 to 06:00)", kind="clock")
    interval_minutes: float = _key(15.0, "how often serve looks for snapshots to "
                                   "replicate", minimum=0.1)
    retry_seconds: float = _key(60.0, "back-off after a failed run, doubled per "
                                "consecutive failure up to 64 times", minimum=1)
    notify_after: int = _key(3, "consecutive failures (of a client, or of the repository) "
                             "that run the offsite-failed hooks, once per streak",
                             minimum=1)
    prune_schedule: str = _key("04:30", "daily time (server local HH:MM) serve runs "
                               "restic prune; empty: never", kind="clock")
    keep_last: int = _key(0, "off-site policy, over what local retention keeps: keep the "
                          "N newest", minimum=-1)
    keep_within: str = _key("", "off-site policy: keep everything newer than this "
                            "(empty: off)", kind="duration")
    keep_hourly: int = _key(0, "off-site policy: newest of N hours", minimum=-1)
    keep_daily: int = _key(0, "off-site policy: newest of N days", minimum=-1)
    keep_weekly: int = _key(0, "off-site policy: newest of N ISO weeks", minimum=-1)
    keep_monthly: int = _key(0, "off-site policy: newest of N months", minimum=-1)
    keep_yearly: int = _key(0, "off-site policy: newest of N years", minimum=-1)
    keep_first_monthly: int = _key(0, "off-site policy: first of N months", minimum=-1)

    def __post_init__(self) -> None:
        repo = self.repository
        if repo and not (repo.startswith("/") or repo.startswith(OFFSITE_BACKENDS)):
            raise ConfigError(f"offsite.repository: expected an absolute path or one of "
                              f"{', '.join(OFFSITE_BACKENDS)}..., got {repo!r}")
        if repo and not (self.password_file or self.password_command):
            raise ConfigError("offsite.password_file: set it or offsite.password_command")
        if bool(self.window_start) != bool(self.window_end):
            raise ConfigError("offsite.window_end: set both window_start and window_end, "
                              "or neither")
        for option in self.options:
            if "=" not in option or option.startswith("="):
                raise ConfigError(f"offsite.options: expected key=value, got {option!r}")
        for name in self.volumes:
            if not name or "/" in name or name in (".", ".."):
                raise ConfigError(f"offsite.volumes: invalid volume name {name!r}")
