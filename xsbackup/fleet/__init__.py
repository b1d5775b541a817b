"""The fleet: many independent xsbackup servers run together over SSH (fabric)."""
