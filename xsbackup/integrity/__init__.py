"""Integrity: ``check`` (structure and content against the manifests), ``diff`` and
``find`` over a client's snapshots. Read-only, except ``check --repair-manifests``, which
only writes manifests that are missing."""
