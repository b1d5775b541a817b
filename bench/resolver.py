"""Where a no-change backup's server side spends its syscalls: rsync 3.5's path resolver.

A diagnostic for issue 17, counted rather than timed (``strace -c -f``; valgrind's
callgrind for the wrapper's instructions), so a busy machine does not change it. No ssh:
the client's stock ``rsync -a --delete SRC/ HOST:documents/`` runs with a local rsh that
starts the server side directly, so only the server is counted. Every case is a
no-change backup of the same tree against the same previous snapshot, and checks that
it linked every file.

* ``wrapper``: the real forced command (``xsbackup ssh-command``, as ``authorized_keys``
  forces it): its rsync and its own Python. Also its instruction count (rsync not traced).
* ``wrapper_rsync``: the very rsync line the wrapper runs (read from its ``execve``), run
  directly: the base at the state root's depth (``<root>/clients/SN/volumes/V/
  snapshots/ID``).
* ``shallow_base``: the same options with the base a hardlinked copy of the snapshot 3
  components deep (as raw rsync's in ``ingest.py``), confined to its parent.
* ``raw``: plain ``rsync --server --link-dest=<that shallow base>`` as root, no
  ``--fake-super`` (``ingest.py``'s raw anchor).
* ``relative_link_dest``, ``symlinked_base``, ``no_confine_root``: the wrapper's line with
  the base spelled ``../snapshots/ID``, through a one-component symlink (relative target)
  in the client's directory, and without ``--confine-root``.

Usage: ``python bench/resolver.py [--files 3000] [--mb 37]``. Needs strace; callgrind is
optional. Writes ``bench/results/resolver.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    XSBACKUP,
    exit_on_sigterm,
    finish,
    make_tree,
    new_result,
    quiet_wait,
    run_args,
    temp_dir,
    write_bench_config,
)
from bench.ingest import SN, _linked

VOLUME = "documents"
COUNTED = ("openat", "newfstatat", "close", "getcwd", "linkat", "lgetxattr")


def _rsh(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nshift  # the host\n" + body)
    path.chmod(0o755)
    return path


def _push(src: Path, rsh: Path, env: dict[str, str]) -> None:
    subprocess.run(["rsync", "-a", "--delete", "-e", str(rsh), f"{src}/", f"x:{VOLUME}/"],
                   check=True, env=env)


def _strace_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in (*COUNTED, "total") and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=3000, help="files in the tree (3000)")
    ap.add_argument("--mb", type=float, default=37, help="total size in MB (37)")
    run_args(ap, out="resolver.json", quiet_load=0, quiet_timeout=600)
    args = ap.parse_args(argv)
    exit_on_sigterm()
    if shutil.which("strace") is None:
        sys.exit("strace is needed")
    result = new_result("resolver", ("ingest.upload", "storage.hardlink", "cli.entry"))
    result |= {"quiet_wait": quiet_wait(args.quiet_load, args.quiet_timeout),
               "config": {"files": args.files, "mb": args.mb, "seed": args.seed}}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("XSBACKUP_") and k != "PYTHONDONTWRITEBYTECODE"}
    with temp_dir("xsbench-resolver-") as tmp:
        src = tmp / "src"
        result["tree"] = make_tree(src, args.files, int(args.mb * 1_000_000), args.seed)
        root = tmp / "xsroot"
        subprocess.run([XSBACKUP, "--root", str(root), "init"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        write_bench_config(root)
        key = tmp / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", SN, "-f",
                        str(key)], check=True)
        subprocess.run([XSBACKUP, "--root", str(root), "clients", "add", SN, "--pubkey",
                        f"{key}.pub"], check=True, env=env, stdout=subprocess.DEVNULL)
        forced = shlex.join([XSBACKUP, "--root", str(root), "ssh-command", "--client", SN])
        wrap = _rsh(tmp / "rsh-wrapper", 'export SSH_ORIGINAL_COMMAND="$*"\n'
                    f'exec $TRACE {forced}\n')
        direct = _rsh(tmp / "rsh-direct", 'mapfile -t A < "$ARGV"\nexec $TRACE rsync "${A[@]}"\n')

        from xsbackup import config
        from xsbackup.context import Context
        from xsbackup.snapshots import postprocess
        from xsbackup.store import Store

        store, settings = Store(root), config.load(root, environ={})
        vol = store.volume_dir(SN, VOLUME)

        def promote() -> Path:
            postprocess.run_once(Context.open(settings))
            sid = store.latest_id(SN, VOLUME)
            assert sid is not None
            return vol / "snapshots" / sid

        _push(src, wrap, {**env, "TRACE": ""})
        base = promote()
        # The wrapper's own rsync line, from its execve.
        trace = tmp / "execve.txt"
        _push(src, wrap, {**env, "TRACE": f"strace -f -s 4096 -e trace=execve -o {trace}"})
        found = list(re.finditer(r'execve\("[^"]*rsync", \[(.*?)\], ', trace.read_text()))
        line = [s.encode().decode("unicode_escape") for s in re.findall(r'"((?:[^"\\]|\\.)*)"',
                                                                       found[-1].group(1))]
        result["wrapper_rsync_line"] = line
        base = promote()
        opts = line[1:line.index("--")]
        shallow = tmp / "base"
        subprocess.run(["cp", "-al", str(base), str(shallow)], check=True)

        def variant(name: str, argv: list[str]) -> tuple[list[str], Path]:
            dest = vol / f"bench-{name}"
            return [*argv, "--", ".", f"{dest}/"], dest

        def opts_with(link: str | None, confine: str | None) -> list[str]:
            out = []
            for o in opts:
                if o.startswith("--link-dest=") and link is not None:
                    out.append(f"--link-dest={link}")
                elif o.startswith("--confine-root="):
                    if confine is not None:
                        out.append(f"--confine-root={confine}")
                else:
                    out.append(o)
            return out

        symlink = store.client_dir(SN) / "b"
        cases: dict[str, Any] = {}
        plans = {
            "wrapper_rsync": opts_with(str(base), str(store.client_dir(SN))),
            "shallow_base": opts_with(str(shallow), str(tmp)),
            "raw": [*(o for o in opts if (o.startswith("-") and not o.startswith("--"))
                      or o == "--server"), "--delete", f"--link-dest={shallow}"],
            "relative_link_dest": opts_with(f"../snapshots/{base.name}",
                                            str(store.client_dir(SN))),
            "symlinked_base": opts_with(str(symlink), str(store.client_dir(SN))),
            "no_confine_root": opts_with(None, None),
        }
        for name, argv_opts in plans.items():
            full, dest = variant(name, argv_opts)
            if name == "symlinked_base":
                os.symlink(os.path.relpath(base, symlink.parent), symlink)
            argfile = tmp / f"argv-{name}"
            argfile.write_text("\n".join(full) + "\n")
            out = tmp / f"strace-{name}.txt"
            _push(src, direct, {**env, "ARGV": str(argfile),
                                "TRACE": f"strace -f -c -o {out}"})
            files, linked = _linked(shallow if name in ("shallow_base", "raw") else base,
                                    dest)
            counts = _strace_counts(out)
            cases[name] = {"syscalls": counts, "per_file": counts["total"] / files,
                           "files": files, "linked": linked, "argv": full}
            if symlink.is_symlink():
                symlink.unlink()
            shutil.rmtree(dest)
        out = tmp / "strace-wrapper.txt"
        _push(src, wrap, {**env, "TRACE": f"strace -f -c -o {out}"})
        new = promote()
        files, linked = _linked(base, new)
        counts = _strace_counts(out)
        cases["wrapper"] = {"syscalls": counts, "per_file": counts["total"] / files,
                            "files": files, "linked": linked}
        if shutil.which("valgrind"):
            log = tmp / "callgrind.txt"
            _push(src, wrap, {**env, "TRACE": "valgrind --tool=callgrind "
                              f"--callgrind-out-file=/dev/null --log-file={log}"})
            promote()
            got = re.search(r"Collected : (\d+)", log.read_text())
            if got:
                cases["wrapper"]["instructions_without_rsync"] = int(got.group(1))
        result["cases"] = cases
        depth = {"state_root_base": len(base.parts) - 1, "shallow_base": len(shallow.parts) - 1}
        result["base_depth_components"] = depth
        result["extra_syscalls_per_file_per_component"] = (
            (cases["wrapper_rsync"]["syscalls"]["total"]
             - cases["shallow_base"]["syscalls"]["total"])
            / files / (depth["state_root_base"] - depth["shallow_base"]))
    return finish(result, args.out, print_table)


def print_table(r: dict[str, Any]) -> None:
    print(f"\nno-change backup of {r['config']['files']} files, server side "
          f"(base {r['base_depth_components']['state_root_base']} components deep, "
          f"shallow {r['base_depth_components']['shallow_base']})")
    print(f"{'case':<22} {'syscalls':>9} {'per file':>9} {'linked':>13}")
    for name, c in r["cases"].items():
        print(f"{name:<22} {c['syscalls']['total']:>9} {c['per_file']:>9.1f} "
              f"{c['linked']:>6}/{c['files']:<6}")
    print(f"extra syscalls per file per component of the base: "
          f"{r['extra_syscalls_per_file_per_component']:.2f}")
    w = r["cases"]["wrapper"]
    if "instructions_without_rsync" in w:
        print(f"wrapper's own instructions (rsync not traced): "
              f"{w['instructions_without_rsync'] / 1e6:.1f} M")


if __name__ == "__main__":
    sys.exit(main())
