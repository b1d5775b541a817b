"""Off-site copies of every snapshot in a restic repository (local, SFTP, S3, ...).

``restic`` runs the engine (every call through ``procs``), ``state`` keeps what is
replicated and each client's place in the queue, ``replicate`` backs promoted snapshots
up and mirrors retention, ``recover`` brings snapshots back (restore and rebuild).
"""
