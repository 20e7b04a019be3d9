"""Issue #22's attacks on the real deployment of conftest.py (api-server, scheduler, Celery worker,
SimpleAuthManager with the accounts admin and alice, role user), each of which must fail:

1. a run whose conf names a foreign store: check_params refuses it (no retry), nothing is written
   there, and the Dataset view does not read it;
2. run id `.`: its folder is its own, not the DAG's, so its files route reaches no other run;
3. the user who triggered a run approves it: Airflow refuses (403), the approver's answer counts;
4. the view's pages carry a CSP without script and forbid framing by other origins;

and the direct attacks that held before keep holding: no credentials (401), a forged token, path
traversal, script in a query echoed on the page, offsets past the end.

Named to run after test_stack.py: unpausing the DAG here lets the every-minute sweep start runs,
and test_stack.py expects the first scheduled run it sees to be its own.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import quote

import httpx
import pytest

from bonito_tasks.store import run_segment
from deployment.conftest import DAG_ID, TRIGGERER, USERNAME
from deployment.stack import wait_until

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(1800)]

SECRET = "another team's contract"


def _states(api, run_id: str) -> dict[str, tuple[str, int]]:
    return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in api.task_instances(DAG_ID, run_id)
            if ti["map_index"] == -1}


def _view(deployment, run_id: str, path: str = "", **kwargs) -> httpx.Response:
    return deployment.api.http.get(f"/bonito/dags/{DAG_ID}/runs/{quote(run_id, safe='')}{path}", **kwargs)


def test_a_conf_naming_a_foreign_store_is_refused_before_any_task_touches_it(deployment, tmp_path):
    foreign = tmp_path / "another" / "team"
    alice = deployment.api_as(TRIGGERER)
    deployment.api.set_paused(DAG_ID, False)
    try:
        run_id = alice.trigger(DAG_ID, {"store": str(foreign), "task_types": ["exqa"]})
        # What the viewer then read: a file of the run's folder in that store.
        report = foreign / DAG_ID / run_segment(run_id) / "validate" / "report"
        report.mkdir(parents=True)
        (report / "summary.json").write_text(json.dumps({"secret": SECRET}))
        run = deployment.api.wait_for_run(DAG_ID, run_id, timeout=900, details=deployment.details, expect="failed")
    finally:
        deployment.api.set_paused(DAG_ID, True)
    states = _states(deployment.api, run_id)
    assert states["check_params"] == ("failed", 1), states  # failed on its first try, not retried
    assert states["plan"][0] == "upstream_failed", states
    [check] = [ti for ti in deployment.api.task_instances(DAG_ID, run_id) if ti["task_id"] == "check_params"]
    log = deployment.api.task_log(DAG_ID, run_id, check)
    assert f"store={str(foreign)!r} is not under an allowed store location (allowed: {deployment.store}" in log, log
    assert "nothing was read or written" in log
    written = sorted(p.relative_to(foreign).as_posix() for p in foreign.rglob("*") if p.is_file())
    assert written == [f"{DAG_ID}/{run_segment(run_id)}/validate/report/summary.json"]  # only what we planted
    for path in ("", "/files/validate/report/summary.json", "/summary.json"):
        answer = _view(deployment, run["dag_run_id"], path)
        assert answer.status_code == 403 and SECRET not in answer.text, (path, answer.status_code)


def test_run_id_dot_cannot_read_other_runs(deployment):
    victim = deployment.store / DAG_ID / "victim-run" / "validate" / "report"
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "summary.json").write_text(json.dumps({"secret": SECRET}))
    deployment.api.set_paused(DAG_ID, True)  # the run stays queued, and is deleted below
    created = deployment.api.trigger(DAG_ID, {}, dag_run_id=".")
    assert created == "."
    try:
        page = deployment.api.http.get(f"/bonito/dags/{DAG_ID}/runs/%2E")
        assert page.status_code == 200, page.text[:500]
        assert f"store <code>{deployment.store}</code>" in page.text
        for path in ("victim-run/validate/report/summary.json", f"{DAG_ID}/victim-run/validate/report/summary.json",
                     "%2E%2E/victim-run/validate/report/summary.json", "..%2Fvictim-run/validate/report/summary.json"):
            answer = deployment.api.http.get(f"/bonito/dags/{DAG_ID}/runs/%2E/files/{path}")
            assert answer.status_code in (403, 404) and SECRET not in answer.text, (path, answer.status_code)
        # The pages' headers (issue item 4).
        csp = page.headers["content-security-policy"]
        assert "script-src 'none'" in csp and "frame-ancestors 'self'" in csp and "unsafe-inline" not in csp, csp
        assert page.headers["x-frame-options"] == "SAMEORIGIN"
        assert "<script" not in page.text
    finally:
        deployment.api.call("DELETE", f"/dags/{DAG_ID}/dagRuns/%2E")


def test_direct_attacks_keep_failing(deployment):
    deployment.api.set_paused(DAG_ID, True)
    run_id = deployment.api.trigger(DAG_ID, {}, dag_run_id=f"probe_{uuid.uuid4().hex[:8]}")
    secret = deployment.store.parent / "secret.html"
    secret.write_text(SECRET)
    try:
        base = f"/bonito/dags/{DAG_ID}/runs/{run_id}"
        anonymous = httpx.Client(base_url=deployment.url, timeout=30)
        for path in ("", "/summary.json", "/rows/examples", "/files/validate/report/quality.html"):
            assert anonymous.get(base + path).status_code == 401, path
        claims = {"sub": USERNAME, "role": "admin", "exp": int(time.time()) + 3600}
        unsigned = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                            for part in ({"alg": "none", "typ": "JWT"}, claims)) + "."
        forged = anonymous.get(base, headers={"Authorization": f"Bearer {unsigned}"})
        assert forged.status_code in (401, 403), forged.status_code
        for path in ("/files/%2e%2e/%2e%2e/%2e%2e/secret.html", "/files/..%2F..%2F..%2Fsecret.html",
                     f"/files/{quote(str(secret), safe='')}", "/files/validate%5C..%5C..%5Csecret.html"):
            answer = deployment.api.http.get(base + path)
            assert answer.status_code in (403, 404) and SECRET not in answer.text, (path, answer.status_code)
        echoed = deployment.api.http.get(base + "/rows/examples", params={"value": "<script>alert(1)</script>"})
        assert echoed.status_code == 200 and "<script>alert(1)" not in echoed.text
        assert "&lt;script&gt;" in echoed.text
        huge = deployment.api.http.get(base + "/rows/examples", params={"offset": 10**12, "limit": 10**9})
        assert huge.status_code == 200 and "Rows 1000000000001" not in huge.text
    finally:
        deployment.api.call("DELETE", f"/dags/{DAG_ID}/dagRuns/{run_id}")


def test_the_user_who_triggered_a_run_cannot_approve_it(deployment):
    conf = {"task_types": ["exqa"], "full_refresh": True, "require_approval": True, "min_pass_rate": 0,
            "max_duplicate_rate": 1, "max_label_share": 1}
    alice = deployment.api_as(TRIGGERER)
    hitl = "/dags/{dag}/dagRuns/{run}/taskInstances/approve/-1/hitlDetails"
    deployment.api.set_paused(DAG_ID, False)
    try:
        run_id = alice.trigger(DAG_ID, conf)
        path = hitl.format(dag=DAG_ID, run=quote(run_id, safe=""))

        def waiting():
            states = _states(deployment.api, run_id)
            assert states.get("validate", ("",))[0] not in ("failed", "upstream_failed"), states
            return states.get("approve", ("",))[0] in ("awaiting_input", "deferred")

        wait_until(waiting, 900, "the approve task to wait for a decision", interval=5,
                   details=lambda: deployment.api.failure_report(DAG_ID, run_id) + deployment.details())
        assert deployment.api.run(DAG_ID, run_id)["triggering_user_name"] == TRIGGERER
        detail = deployment.api.call("GET", path)
        assert [u["id"] for u in detail["assigned_users"]] == [USERNAME]  # BONITO_APPROVERS less alice
        refused = alice.http.patch(f"/api/v2{path}", json={"chosen_options": ["Approve"], "params_input": {}})
        assert refused.status_code == 403, refused.text
        assert deployment.api.call("GET", path)["response_received"] is False
        deployment.api.call("PATCH", path, json={"chosen_options": ["Reject"], "params_input": {"note": "not mine"}})
        deployment.api.wait_for_run(DAG_ID, run_id, timeout=600, details=deployment.details, expect="failed")
    finally:
        deployment.api.set_paused(DAG_ID, True)
    states = _states(deployment.api, run_id)
    assert states["approve"][0] == "failed" and states["publish"][0] == "upstream_failed", states
    [approve] = [ti for ti in deployment.api.task_instances(DAG_ID, run_id) if ti["task_id"] == "approve"]
    assert f"publishing rejected by {USERNAME}: not mine" in deployment.api.task_log(DAG_ID, run_id, approve)
