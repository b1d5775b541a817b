"""The HTTP layer: availability, registration, the JSON API and the web UI."""
