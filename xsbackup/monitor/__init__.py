"""Monitoring: per-client status and the Prometheus metrics."""
