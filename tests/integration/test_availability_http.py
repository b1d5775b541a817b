"""Over HTTP, as the issue reproduced it: ten self-registered serials asking for
availability do not exhaust the window for everyone; a client with history still gets
its 200."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import local_push
from tests.integration.test_http import Web, rsa_blob, web  # noqa: F401 - fixture
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
OLD = "SHF0000HIST"


def test_self_registered_serials_leave_room_for_a_client_with_history(
        web: Web, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    web.server.add_client(OLD)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    assert local_push(web.server, OLD, src).returncode == 0
    assert postprocess.run_once(web.server.ctx()) == {"promoted": 1}
    web.configure()  # the shipped availability defaults: a window of 10, 5 for newcomers
    serials = [f"SHF{i:08d}" for i in range(10)]
    for sn in serials:  # one key per client: the attacker makes one for each serial
        blob = rsa_blob(tmp_path, f"attacker-{sn}")
        assert web.register(sn, f"x{sn}", "uuid", blob)["success"] == "OK"
    answers = [web.get(f"/backup/1/available/{sn}") for sn in serials]
    assert [r.status for r in answers] == [200] * 5 + [503] * 5
    assert all(1 <= int(r.headers["Retry-After"]) <= 300 for r in answers[5:])
    assert web.get(f"/backup/1/available/{OLD}").status == 200
    assert web.counters()['admissions{path="http",reason="new",result="refused"}'] == 5
