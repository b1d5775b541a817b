"""The service: the embedded SSH server and the process that runs everything together."""
