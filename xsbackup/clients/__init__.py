"""Clients: the registry of serials and keys, registration and system users."""
