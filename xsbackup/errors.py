"""The one exception tree of xsbackup.

Every class carries its exit code, and its docstring is the user-facing meaning of that
code. Only the CLI's ``main()`` (and the forced-command dispatcher, which is its own
``main``) catches these and turns them into a one-line message and an exit status.

Exit-code bands:

* 0 success, 1 generic error, 2 usage error (click's own);
* 3-19 admin-side errors (configuration, state root, registry);
* rsync's own codes (1-35) pass through ``ssh-command`` unchanged, so everything
  ``ssh-command`` itself can exit with lives in 40-59, where no rsync code can be
  confused with it (an admin-side error reaching it becomes 59);
* 128+n means killed by signal n.

``xsbackup exit-codes`` lists the table below for the README.
"""

from __future__ import annotations

from typing import Any


class XsbackupError(Exception):
    """An error occurred."""

    exit_code = 1
    reason = "error"  # short label for metrics
    http_status = 500  # the HTTP status the web layer answers with (500: logged, not shown)

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.describe())

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.describe()


class ConfigError(XsbackupError):
    """The configuration is invalid."""

    exit_code = 3


class StateRootError(XsbackupError):
    """The state root is missing, not initialised, or unusable."""

    exit_code = 4


class XattrUnsupported(StateRootError):
    """The state root's filesystem does not support user extended attributes."""

    exit_code = 5


class ClientNotFound(XsbackupError):
    """No such client in the registry."""

    exit_code = 6
    http_status = 404


class ClientExists(XsbackupError):
    """The client is already registered."""

    exit_code = 7


class InvalidKey(XsbackupError):
    """The public key is malformed or of an unsupported type."""

    exit_code = 8


class InvalidName(XsbackupError):
    """A serial number, volume or snapshot id is malformed."""

    exit_code = 9
    http_status = 400


class KeyInUse(XsbackupError):
    """The public key already belongs to another client."""

    exit_code = 10


class LockBusy(XsbackupError):
    """Another process holds the lock."""

    exit_code = 11
    http_status = 409


class SystemUserError(XsbackupError):
    """The system login for a client could not be created or removed."""

    exit_code = 12


class UserNotFound(XsbackupError):
    """No such admin user."""

    exit_code = 13
    http_status = 404


class UserExists(XsbackupError):
    """The admin user already exists."""

    exit_code = 14
    http_status = 409


class InvalidPassword(XsbackupError):
    """The password or role is not acceptable."""

    exit_code = 15
    http_status = 400


class NothingPending(XsbackupError):
    """No key of this client is awaiting approval."""

    exit_code = 16
    http_status = 409


class CanonicalJSONError(XsbackupError, ValueError):
    """The document is not canonical JSON."""

    exit_code = 17

    def __init__(self, violation: Any) -> None:
        """``violation``: the ``snapshots.cjson.Violation`` saying where and why."""
        super().__init__(str(violation))
        self.violation = violation


class RsyncNotFound(XsbackupError):
    """The configured rsync program (ingest.rsync) was not found."""

    exit_code = 18


class ListenError(XsbackupError):
    """A server port could not be opened (in use, privileged, or a bad address)."""

    exit_code = 19


class SeveralPending(XsbackupError):
    """Several registrations of this client are waiting; choose one by fingerprint."""

    exit_code = 20


# ---- integrity (21-23) --------------------------------------------------------------------


class DamageFound(XsbackupError):
    """check found stored files that differ from their manifest (damage)."""

    exit_code = 21


class StructureProblems(XsbackupError):
    """check found structural problems (no damaged file): see its findings."""

    exit_code = 22


# ---- storage backends (24-27) ---------------------------------------------------------


class BackendUnavailable(XsbackupError):
    """The storage backend cannot work here (tool missing, or the filesystem cannot)."""

    exit_code = 24


class BackendSwitchRefused(XsbackupError):
    """The state root is stored by another backend; only xsbackup migrate converts it."""

    exit_code = 25


class MigrateFailed(XsbackupError):
    """A migration step failed or did not verify; that snapshot was left as it was."""

    exit_code = 26


# ---- refusals of the forced command (40-59) ------------------------------------------


class Refused(XsbackupError):
    """The request was refused."""

    exit_code = 40
    http_status = 403


class RequestRefused(Refused):
    """The SSH command, an rsync option or a path was refused."""

    exit_code = 40
    reason = "request"


class UnknownClient(Refused):
    """The client is unknown."""

    exit_code = 41
    reason = "unknown"


class ClientDisabled(Refused):
    """The client is disabled."""

    exit_code = 42
    reason = "disabled"


class Maintenance(Refused):
    """The server is in maintenance mode."""

    exit_code = 43
    reason = "maintenance"
    http_status = 503


class LoadTooHigh(Refused):
    """The server's load average is over the limit."""

    exit_code = 44
    reason = "load"
    http_status = 503


class DiskFull(Refused):
    """The state root's disk blocks are used over the limit."""

    exit_code = 45
    reason = "blocks"
    http_status = 503


class InodesFull(Refused):
    """The state root's inodes are used over the limit."""

    exit_code = 46
    reason = "inodes"
    http_status = 503


class NoSlot(Refused):
    """All concurrent transfer slots are taken."""

    exit_code = 47
    reason = "slots"
    http_status = 503


class BackupInProgress(Refused):
    """A backup of this client is already in progress."""

    exit_code = 48
    reason = "in-progress"
    http_status = 503


class OverQuota(Refused):
    """The client is over its disk quota."""

    exit_code = 49
    reason = "quota"


class HookVeto(Refused):
    """A pre-ingest hook vetoed the transfer."""

    exit_code = 50
    reason = "hook"


class SnapshotNotFound(Refused):
    """No such snapshot."""

    exit_code = 51
    reason = "no-snapshot"
    http_status = 404


class NotReadable(Refused):
    """This client may not read that client's snapshots."""

    exit_code = 52
    reason = "alias"


class PathRefused(Refused):
    """The path leaves the snapshot or passes through a symlink."""

    exit_code = 53
    reason = "path"


class PathNotFound(Refused):
    """No such path in the snapshot."""

    exit_code = 54
    reason = "no-path"
    http_status = 404


class JournalError(Refused, ValueError):
    """A Sugar Journal entry could not be served."""

    exit_code = 55
    reason = "journal"


class EntryNotFound(JournalError, LookupError):
    """No such Journal entry in the snapshot."""

    exit_code = 56
    reason = "no-entry"


class NotADatastore(JournalError):
    """The directory is not a Sugar datastore."""

    exit_code = 57
    reason = "no-datastore"


class TooManySessions(Refused):
    """This client already has as many sessions as one client may run at once."""

    exit_code = 58
    reason = "sessions"

    @classmethod
    def of(cls, client: str, limit: int) -> TooManySessions:
        return cls(f"client {client} already has {limit} sessions running; "
                   "try again when they end")


class ServerError(XsbackupError):
    """The server failed internally; the details are in its log."""

    exit_code = 59


# ---- off-site copies on restic (60-64) ---------------------------------------------


class OffsiteUnreachable(XsbackupError):
    """The off-site repository is unreachable, or there is no repository at that location."""

    exit_code = 60
    reason = "unreachable"


class ResticNotFound(XsbackupError):
    """The configured restic program (offsite.restic) was not found."""

    exit_code = 61


class OffsiteAuthFailed(XsbackupError):
    """The off-site repository refused the password or the backend credentials."""

    exit_code = 62
    reason = "credentials"


class OffsiteFailed(XsbackupError):
    """restic failed on the off-site repository; its first error line says why."""

    exit_code = 63
    reason = "restic"


class OffsiteNotConfigured(XsbackupError):
    """No off-site repository is configured (offsite.repository)."""

    exit_code = 64


# ---- restore push (65-68) -------------------------------------------------------------


class PushFailed(XsbackupError):
    """A restore push failed on one or more devices (the summary names them)."""

    exit_code = 65


class DeviceUnreachable(PushFailed):
    """The device could not be reached, or refused the login or its host key."""

    exit_code = 66


class DeviceFull(PushFailed):
    """The device has not enough free space for the snapshot."""

    exit_code = 67


class DeviceWriteFailed(PushFailed):
    """Writing the data on the device, or verifying it there, failed."""

    exit_code = 68
class InventoryError(ConfigError):
    """The fleet inventory is missing or invalid."""

    exit_code = 70


class FleetServerFailed(XsbackupError):
    """At least one fleet server did not answer (its row says why)."""

    exit_code = 71


class MoveFailed(XsbackupError):
    """A client's move between fleet servers stopped; the same command resumes it."""

    exit_code = 72


def all_errors() -> list[type[XsbackupError]]:
    """One class per exit code, ordered by code, for documentation.

    A class is listed when it sets ``exit_code`` itself (a subclass that inherits its code
    is documented by its parent), except a class whose code a subclass sets again: that
    class only groups its subclasses (``Refused``), and the subclass is what a user meets.
    Only the subclasses of ``XsbackupError`` imported so far are seen; ``xsbackup
    exit-codes`` imports every module first.
    """
    seen: list[type[XsbackupError]] = []
    todo: list[type[XsbackupError]] = [XsbackupError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    own = [c for c in seen if "exit_code" in vars(c)]
    listed = [c for c in own
              if not any(o is not c and issubclass(o, c) and o.exit_code == c.exit_code
                         for o in own)]
    return sorted(listed, key=lambda c: (c.exit_code, c.__name__))
