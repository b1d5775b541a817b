"""The command line: one module per command group; each parses, opens and calls the core."""
