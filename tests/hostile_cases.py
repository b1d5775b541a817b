"""Hostile SSH commands a client may send, each with the words its refusal must contain.

Shared by the pure parser tests and the end-to-end tests through real sshd.
"""

from __future__ import annotations

UP = "rsync --server -logDtpre.iLsfxCIvu"
DOWN = "rsync --server --sender -logDtpre.iLsfxCIvu"
SN = "SHF00112233"

# (case id, SSH_ORIGINAL_COMMAND, text expected in the refusal line)
HOSTILE: list[tuple[str, str, str]] = [
    ("inplace", f"{UP} --inplace . documents/", "--inplace"),
    ("append", f"{UP} --append . documents/", "--append"),
    ("append-verify", f"{UP} --append-verify . documents/", "--append-verify"),
    ("short-s", "rsync --server -slogDtpre.iLsfxCIvu . documents/", "-s"),
    ("protect-args", f"{UP} --protect-args . documents/", "--protect-args"),
    ("secluded-args", f"{UP} --secluded-args . documents/", "--secluded-args"),
    ("link-dest", f"{UP} --link-dest=/etc . documents/", "--link-dest"),
    ("link-dest-split", f"{UP} --link-dest /etc . documents/", "--link-dest"),
    ("copy-dest", f"{UP} --copy-dest=/etc . documents/", "--copy-dest"),
    ("compare-dest", f"{UP} --compare-dest=/etc . documents/", "--compare-dest"),
    ("backup-dir", f"{UP} -b --backup-dir /tmp/x . documents/", "--backup-dir"),
    ("files-from", f"{UP} --files-from=/etc/passwd . documents/", "--files-from"),
    ("log-file", f"{UP} --log-file=/tmp/x.log . documents/", "--log-file"),
    ("write-batch", f"{UP} --write-batch=/tmp/b . documents/", "--write-batch"),
    ("read-batch", f"{UP} --read-batch=/tmp/b . documents/", "--read-batch"),
    ("only-write-batch", f"{UP} --only-write-batch=/tmp/b . documents/", "--only-write-batch"),
    ("daemon", f"{UP} --daemon . documents/", "--daemon"),
    ("config", f"{UP} --config=/etc/rsyncd.conf . documents/", "--config"),
    ("copy-devices", f"{UP} --copy-devices . documents/", "--copy-devices"),
    ("write-devices", f"{UP} --write-devices . documents/", "--write-devices"),
    ("super", f"{UP} --super . documents/", "--super"),
    ("debug", f"{UP} --debug=ALL . documents/", "--debug"),
    ("unknown-option", f"{UP} --frobnicate . documents/", "--frobnicate"),
    ("download-L", "rsync --server --sender -Llogtpre.iLsfxCIvu . documents/latest/", "-L"),
    ("download-k", "rsync --server --sender -klogtpre.iLsfxCIvu . documents/latest/", "-k"),
    ("download-K", "rsync --server --sender -Klogtpre.iLsfxCIvu . documents/latest/", "-K"),
    ("download-copy-unsafe-links", f"{DOWN} --copy-unsafe-links . documents/latest/",
     "--copy-unsafe-links"),
    ("download-remove-source-files", f"{DOWN} --remove-source-files . documents/latest/",
     "--remove-source-files"),
    ("sender-late", f"{UP} --sender . documents/latest/", "--sender"),
    ("dotdot-upload", f"{UP} . ../SHF00000001/volumes/documents", "'..'"),
    ("dotdot-download", f"{DOWN} . documents/latest/../../../../../../etc", "'..'"),
    ("absolute-upload", f"{UP} . /etc/cron.d/evil", "absolute path"),
    ("absolute-download", f"{DOWN} . /etc/", "absolute path"),
    ("completion-other-serial", f"{UP} . /var/lib/ds-backup/completion/SHF00000001",
     "absolute path"),
    ("other-client-volume", f"{UP} . SHF00000001/documents/", "volume root"),
    ("deeper-destination", f"{UP} . documents/sub/dir", "volume root"),
    ("read-only-alias-upload", f"{UP} . datastore-latest", "read-only"),
    ("shell-semicolon", f"{UP} . documents; touch /tmp/xsbackup-pwned", "exactly one path"),
    ("shell-subst", f"{UP} . $(touch${{IFS}}/tmp/xsbackup-pwned)", "invalid volume name"),
    ("shell-backtick", f"{UP} . `touch /tmp/xsbackup-pwned`", "exactly one path"),
    ("shell-pipe", f"{UP} . documents|sh", "invalid volume name"),
    ("rsync-path-smuggling", "rsync; touch /tmp/xsbackup-pwned; rsync --server -a . documents",
     "not allowed"),
    ("rsync-path-sh", "sh -c 'rsync --server -a . documents'", "only rsync"),
    ("not-server", "rsync -a /etc/ documents/", "--server"),
    ("newline-injection", f"{UP} . documents\ntouch /tmp/xsbackup-pwned", "exactly one path"),
    ("no-dot", f"{UP} documents/", "before '.'"),
    ("scp", "scp -t /tmp", "only rsync"),
    ("sftp-server", "/usr/lib/openssh/sftp-server", "only rsync"),
    ("internal-sftp", "internal-sftp", "only rsync"),
    ("empty", "", "empty command"),
    ("whitespace", "   ", "empty command"),
    ("bad-volume-name", f"{UP} . .hidden/", "invalid volume name"),
    ("download-current", f"{DOWN} . datastore-current/", "invalid volume name"),
    ("download-no-snapshot", f"{DOWN} . documents/", "must name a snapshot"),
    ("download-bad-id", f"{DOWN} . documents/yesterday/", "not a snapshot id"),
]
