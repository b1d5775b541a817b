"""Ingest: the forced command's dispatch, command parsing, admission, upload and queue."""
