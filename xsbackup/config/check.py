"""The ``[check]`` section: the nightly sampled integrity check (``xsbackup.integrity``)."""

from __future__ import annotations

from xsbackup.config.declare import section
from xsbackup.config.declare import setting as _key


@section
class CheckSettings:
    schedule: str = _key("04:00", "daily time (HH:MM) of the sampled check", kind="clock")
    sample_percent: float = _key(1.0, "percent of each client's inodes it reads, rotating "
                                 "(each read within 100/percent nights)", minimum=1e-4, maximum=100)
