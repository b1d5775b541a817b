"""xsbackup: a snapshot storage server for backups pushed with stock rsync over SSH."""

__version__ = "0.1.0"
