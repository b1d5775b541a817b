"""Snapshots: promotion, post-processing, Canonical JSON validation and disk usage."""
