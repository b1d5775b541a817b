"""The fleet-wide commands: each server's own ``xsbackup … --json`` answer, aggregated.

Every report is one JSON document: ``servers`` (a row per server, ``ok`` with its figures
or ``error`` with the reason it failed) and, where the command has them, ``clients`` (a row
per client per server) or ``items`` (prune's plan). ``failed`` counts the failed servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xsbackup.fleet.inventory import FleetServer, Inventory
from xsbackup.fleet.remote import XSBACKUP, Answer, parse_json, run_all

METRICS_MARK = "# xsbackup-fleet: metrics"
_STATUS = f"{XSBACKUP} status --json"
_COLLECT = f"{_STATUS} && printf '%s\\n' '{METRICS_MARK}' && {XSBACKUP} metrics"


def _server_row(a: Answer) -> dict[str, Any]:
    s = a.server
    return {"server": s.name, "host": s.host, "port": s.port, "site": s.site, "ok": a.ok,
            "error": a.error or None, "seconds": round(a.seconds, 3)}


def _report(command: str, answers: Sequence[Answer], rows: list[dict[str, Any]],
            **extra: Any) -> dict[str, Any]:
    return {"command": command, "servers": rows,
            "failed": sum(1 for a in answers if not a.ok), **extra}


def _status_rows(answers: Sequence[Answer]) -> tuple[list[dict[str, Any]],
                                                       list[dict[str, Any]]]:
    servers: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    for a in answers:
        row = _server_row(a)
        if a.ok:
            data = a.data
            row.update(disk=data.get("disk", {}), storage=data.get("storage", {}).get("name"),
                       warnings=data.get("warnings", []), clients=len(data.get("clients", [])))
            clients.extend({"server": a.server.name, **c} for c in data.get("clients", []))
        servers.append(row)
    return servers, clients


def status_answer(text: str) -> dict[str, Any]:
    data = parse_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("clients"), list):
        raise ValueError("not a status document")
    return data


def status(inv: Inventory, timeout: float, parallel: int | None) -> dict[str, Any]:
    """``fleet status``: every server's disk and every client's row."""
    answers = run_all(inv.servers, _STATUS, timeout=timeout, parallel=parallel,
                      parse=status_answer)
    servers, clients = _status_rows(answers)
    return _report("status", answers, servers, clients=clients)


def check(inv: Inventory, timeout: float, parallel: int | None) -> dict[str, Any]:
    """``fleet check``: status, plus what is wrong across the fleet: servers that fail or
    warn, a client registered on more than one server; and (not a problem, for
    ``move-client``) the clients that are not where placement would put them now."""
    report = status(inv, timeout, parallel)
    problems = [f"{r['server']}: {r['error']}" for r in report["servers"] if not r["ok"]]
    problems += [f"{r['server']}: {w}" for r in report["servers"] for w in r.get("warnings", [])]
    where: dict[str, list[str]] = {}
    for c in report["clients"]:
        where.setdefault(c["serial"], []).append(c["server"])
    problems += [f"client {sn} is registered on {len(on)} servers: {', '.join(on)}"
                 for sn, on in sorted(where.items()) if len(on) > 1]
    misplaced = [{"serial": sn, "server": on[0], "assigned": inv.assign(sn).name}
                 for sn, on in sorted(where.items())
                 if len(on) == 1 and inv.assign(sn).name != on[0]]
    report.update(command="check", problems=problems, misplaced=misplaced)
    return report


def _du_answer(text: str) -> list[dict[str, Any]]:
    data = parse_json(text)
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError("not a du document")
    return data


def du(inv: Inventory, timeout: float, parallel: int | None) -> dict[str, Any]:
    """``fleet du``: every client's bytes on disk, per server."""
    answers = run_all(inv.servers, f"{XSBACKUP} du --json", timeout=timeout,
                      parallel=parallel, parse=_du_answer)
    servers, clients = [], []
    for a in answers:
        row = _server_row(a)
        if a.ok:
            mine = [{"server": a.server.name, "client": d.get("client"),
                     "total": d.get("total", 0), "apparent": d.get("apparent", 0),
                     "snapshots": len(d.get("snapshots", []))} for d in a.data]
            row.update(total=sum(c["total"] for c in mine), clients=len(mine))
            clients.extend(mine)
        servers.append(row)
    return _report("du", answers, servers, clients=clients)


def _prune_answer(text: str) -> dict[str, Any]:
    data = parse_json(text)
    if not isinstance(data, dict):
        raise ValueError("not a prune document")
    return data


def prune(inv: Inventory, timeout: float, parallel: int | None,
          dry_run: bool) -> dict[str, Any]:
    """``fleet prune``: each server's plan (``prune --dry-run``), or what it did."""
    answers = run_all(inv.servers, f"{XSBACKUP} prune --json" + (" --dry-run" if dry_run
                                                                 else ""),
                      timeout=timeout, parallel=parallel, parse=_prune_answer)
    servers, items = [], []
    for a in answers:
        row = _server_row(a)
        if a.ok:
            mine = [{"server": a.server.name, "section": section, **it}
                    for section in ("policy", "quota")
                    for it in a.data.get(section, {}).get("items", [])]
            pruned = [it for it in mine if not it["keep"]
                      and not str(it.get("outcome", "")).startswith("skip")]
            row.update(pruning=len(pruned), frees=sum(it.get("exclusive", 0) for it in pruned),
                       deleted_files=a.data.get("deleted", 0))
            items.extend(mine)
        servers.append(row)
    return _report("prune", answers, servers, items=items, dry_run=dry_run)


def _collect_answer(text: str) -> dict[str, Any]:
    # Only ``collect`` parses an exposition: the other commands skip the parser's import.
    from prometheus_client.parser import text_string_to_metric_families

    head, mark, tail = text.partition(f"\n{METRICS_MARK}\n")
    if not mark:
        raise ValueError("no metrics section")
    status_doc = status_answer(head)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(tail):
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = float(sample.value)
            if "offsite" in sample.name and "seconds" in sample.name:
                key = "offsite_lag_seconds"
                samples[key] = max(samples.get(key, 0.0), float(sample.value))
    return {"status": status_doc, "metrics": samples}


def collect(inv: Inventory, timeout: float, parallel: int | None,
            overdue_seconds: float) -> dict[str, Any]:
    """``fleet collect``: disk per server, overdue clients fleet-wide and off-site lag,
    from each server's status and ``/metrics`` exposition (``xsbackup metrics``)."""
    answers = run_all(inv.servers, _COLLECT, timeout=timeout, parallel=parallel,
                      parse=_collect_answer)
    servers, overdue = [], []
    for a in answers:
        row = _server_row(a)
        if a.ok:
            st, metrics = a.data["status"], a.data["metrics"]
            mine = [_overdue_row(a.server, c) for c in st["clients"]
                    if not c.get("disabled") and _is_overdue(c, overdue_seconds)]
            row.update(disk=st.get("disk", {}), clients=len(st["clients"]),
                       overdue=len(mine), queue_depth=metrics.get("xsbackup_queue_depth"),
                       offsite_lag_seconds=metrics.get("offsite_lag_seconds"),
                       warnings=st.get("warnings", []))
            overdue.extend(mine)
        servers.append(row)
    return _report("collect", answers, servers, overdue=overdue,
                   overdue_seconds=overdue_seconds)


def _is_overdue(client: dict[str, Any], limit: float) -> bool:
    age = client.get("age_seconds")
    return not isinstance(age, int | float) or age > limit


def _overdue_row(server: FleetServer, c: dict[str, Any]) -> dict[str, Any]:
    return {"server": server.name, "serial": c.get("serial"), "nickname": c.get("nickname"),
            "last_success": c.get("last_success"), "age": c.get("age")}
