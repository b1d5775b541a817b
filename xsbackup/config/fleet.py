"""The ``[fleet]`` section: this server as a member of a fleet (``xsbackup.fleet``)."""

from __future__ import annotations

from xsbackup.config.declare import section
from xsbackup.config.declare import setting as _key


@section
class FleetSettings:
    inventory: str = _key("", "fleet inventory TOML (relative: under the state root)")
    timeout: float = _key(30.0, "seconds each step on one fleet server may take", minimum=1)
    place_as: str = _key("", "inventory name of this server; set: registration follows placement")
