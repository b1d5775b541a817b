"""Restore: safe access to stored snapshots, archives, the Journal and downloads."""
