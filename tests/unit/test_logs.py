"""The log file handler follows logrotate: a moved or deleted log file is reopened."""

from __future__ import annotations

import logging
from pathlib import Path

from xsbackup.logs import WatchedFile


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("xsbackup", logging.INFO, __file__, 1, msg, None, None)


def test_a_rotated_log_is_reopened(tmp_path: Path) -> None:
    log = tmp_path / "xsbackup.log"
    handler = WatchedFile(log)
    try:
        handler.handle(_record("first"))
        log.rename(tmp_path / "xsbackup.log.1")  # logrotate's move
        handler.handle(_record("second"))
        log.unlink()  # and a deletion
        handler.handle(_record("third"))
    finally:
        handler.close()
    assert (tmp_path / "xsbackup.log.1").read_text() == "first\n"
    assert log.read_text() == "third\n"
