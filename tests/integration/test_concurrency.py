"""Concurrent registry writers never lose an update: ``xsbackup clients set-policy`` and
``clients alias`` run as many processes at once, registry edits from threads and processes
together, and OLPC registrations arriving at the same time over HTTP (a running ``xsbackup
serve``), from threads and from other processes, all land in the registry and in
``authorized_keys``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import XSBACKUP, Server
from tests.integration.test_serve import start, stop
from xsbackup import config
from xsbackup.clients import registration
from xsbackup.clients.registry import Client, Registry
from xsbackup.store import Store
from xsbackup.units import format_bytes

pytestmark = pytest.mark.integration
NEW = "SHF00000100"

# A writer in its own process: waits for the gate file so that all of them start
# together, then does one registry write (an alias edit that holds the record for a
# while, or an OLPC registration).
WRITER = """
import os, sys, time
from pathlib import Path
from xsbackup import config
from xsbackup.clients import registration
from xsbackup.clients.registry import Registry
from xsbackup.store import Store

root, gate, what, serial, arg = sys.argv[1:6]
while not os.path.exists(gate):
    time.sleep(0.002)
registry = Registry(Store(Path(root)))
if what == "alias":
    def add(client):
        aliases = list(client.aliases)
        time.sleep(0.05)  # hold the record read: an unlocked writer would now lose updates
        client.aliases = [*aliases, arg]
    registry.modify(serial, add)
    print("OK")
else:
    settings = config.load(root, environ={})
    print(registration.register(settings, registry, serial, "", "", arg, "xs", "127.0.0.1")[
    "success"])
"""


def ed25519() -> str:
    """A fresh ``ssh-ed25519 <blob>`` public key."""
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


def spawn_writer(root: Path, gate: Path, what: str, serial: str,
                 arg: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(gate), what, serial,
                             arg], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=90)
        assert p.returncode == 0, stderr
        out.append(stdout.strip())
    return out


def test_many_set_policy_and_alias_processes_lose_nothing(server: Server) -> None:
    registry = Registry(server.store)
    registry.add(NEW, None)
    olds = [f"SHF0000020{i}" for i in range(8)]
    for sn in olds:
        registry.add(sn, None)
    wanted = {"keep_last": 1, "keep_hourly": 2, "keep_daily": 3, "keep_weekly": 4,
              "keep_monthly": 5, "keep_yearly": 6, "keep_first_monthly": 7,
              "quota_bytes": 8_000_000}
    argv = [[f"--{k.replace('_', '-')}", str(v)] for k, v in wanted.items()]
    commands = [["clients", "set-policy", NEW, *a] for a in argv]
    commands += [["clients", "alias", NEW, old] for old in olds]
    procs = [subprocess.Popen([XSBACKUP, "--root", str(server.root), *c],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    finish(procs)
    client = registry.get(NEW)
    assert client.policy == wanted
    assert sorted(client.aliases) == olds
    # What the CLI reports reads the same record back.
    shown = server.xsbackup("clients", "set-policy", NEW).stdout
    printed = {**wanted, "quota_bytes": format_bytes(wanted["quota_bytes"])}  # IEC units
    assert all(f"{k}={v}" in shown for k, v in printed.items())


def test_record_edits_from_processes_and_threads_lose_nothing(server: Server,
                                                              tmp_path: Path) -> None:
    registry = Registry(server.store)
    registry.add(NEW, None)
    olds = [f"SHF000003{i:02d}" for i in range(16)]
    for sn in olds:
        registry.add(sn, None)
    gate = tmp_path / "go"
    procs = [spawn_writer(server.root, gate, "alias", NEW, old) for old in olds[:8]]

    def add_slowly(old: str) -> Callable[[Client], None]:
        def add(client: Client) -> None:
            aliases = list(client.aliases)
            time.sleep(0.05)
            client.aliases = [*aliases, old]
        return add

    ready = threading.Event()

    def thread_writer(old: str) -> None:
        ready.wait()
        registry.modify(NEW, add_slowly(old))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(thread_writer, old) for old in olds[8:]]
        gate.touch()
        ready.set()
        for f in futures:
            f.result()
    assert finish(procs) == ["OK"] * 8
    assert sorted(registry.get(NEW).aliases) == olds


def test_concurrent_registrations_over_http_threads_and_processes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # new_key = open: a known serial's new key is added, so concurrent registrations of
    # one serial with different keys must all survive too.
    (root / "xsbackup.toml").write_text(
        '[registration]\nnew_key = "open"\nmax_new_per_address_per_hour = 0\n')
    served = start(root)
    try:
        keys = {f"SHF000004{i:02d}": ed25519() for i in range(24)}
        shared = [ed25519() for _ in range(6)]     # one serial, six devices' keys
        serials = list(keys)
        over_http, in_threads, in_procs = serials[:8], serials[8:16], serials[16:]
        gate = tmp_path / "go"
        procs = [spawn_writer(root, gate, "register", sn, keys[sn]) for sn in in_procs]
        procs += [spawn_writer(root, gate, "register", NEW, k) for k in shared[:2]]
        settings = config.load(root, environ={})
        registry = Registry(Store(root))
        ready = threading.Event()

        def by_http(sn: str, key: str) -> str:
            ready.wait()
            with xmlrpc.client.ServerProxy(served.url("/")) as proxy:
                reply = proxy.register(sn, "", "", key)
            assert isinstance(reply, dict)
            return str(reply["success"])

        def by_call(sn: str, key: str) -> str:
            ready.wait()
            return registration.register(settings, registry, sn, "", "", key, "xs",
                                         "127.0.0.1")["success"]

        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(by_http, sn, keys[sn]) for sn in over_http]
            futures += [pool.submit(by_call, sn, keys[sn]) for sn in in_threads]
            futures += [pool.submit(by_http, NEW, k) for k in shared[2:4]]
            futures += [pool.submit(by_call, NEW, k) for k in shared[4:]]
            gate.touch()
            ready.set()
            answers = [f.result() for f in futures]
        answers += finish(procs)
        assert answers == ["OK"] * len(answers)
    finally:
        assert stop(served) == 0
    registry = Registry(Store(root))
    for sn, key in keys.items():
        assert [k.openssh() for k in registry.get(sn).active_keys()] == [key]
    assert sorted(k.openssh() for k in registry.get(NEW).active_keys()) == sorted(shared)
    authorized = (root / "ssh" / "authorized_keys").read_text()
    for key in [*keys.values(), *shared]:
        assert authorized.count(key) == 1, key
    lines = [ln for ln in authorized.splitlines() if not ln.startswith("#")]
    assert len(lines) == len(keys) + len(shared)
    assert os.listdir(root / "locks").count("registry.lock") == 1
