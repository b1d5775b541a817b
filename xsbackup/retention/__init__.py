"""Retention: the pure policy math and the prune that applies it."""
