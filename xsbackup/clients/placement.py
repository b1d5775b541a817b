"""Which fleet server a client belongs on: weighted rendezvous (highest-random-weight)
hashing.

Every (server, serial) pair gets a pseudo-random number ``u`` in (0, 1) from SHA-256 of
the two names; the server's score is ``-weight / ln(u)`` and the highest score wins. The
scores are independent exponential races, so a server wins a share of the serials equal to
its share of the total weight, and the answer depends only on the names and weights:
adding a server takes from every other one only the serials it now wins (about 1/n of
them), and removing one moves only the serials it held. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

_SCALE = float(1 << 64)


def score(server: str, serial: str, weight: float) -> float:
    """The rendezvous score of ``server`` for ``serial``; higher wins."""
    digest = hashlib.sha256(f"{server}\0{serial}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / _SCALE  # strictly inside (0, 1)
    return -weight / math.log(u)


def assign(serial: str, members: Iterable[tuple[str, float]]) -> str:
    """The member (``(name, weight)`` pairs, weights above zero) that ``serial`` belongs
    on; ties, which SHA-256 makes vanishingly rare, go to the smaller name."""
    best: tuple[float, str] | None = None
    for name, weight in members:
        if weight <= 0:
            raise ValueError(f"server {name}: weight must be above zero, got {weight}")
        cand = (score(name, serial, weight), name)
        if best is None or cand[0] > best[0] or (cand[0] == best[0] and name < best[1]):
            best = cand
    if best is None:
        raise ValueError("no servers to place the client on")
    return best[1]
