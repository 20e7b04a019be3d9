"""The Dataset view against a run's own settings (issue #22), on Airflow's real api-server app as in
test_view.py: it reads runs from the deployment's stores only, never a folder a run's conf chose;
run ids `.` and `..` reach no other run's folder; pages forbid script and framing by other origins;
cells show what they hold (control and bidirectional characters visible, isolated); a page past the
end says so."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from test_view import DAG_ID, _row, api, failed_run  # noqa: F401 - the module's fixtures

from bonito_tasks.contracts import EXAMPLES, GenerateMetrics, RunRef
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore

pytestmark = [pytest.mark.airflow]

SECRET = '{"secret": "another team\'s report"}'


def add_run(run_id: str, conf: dict, run_type: str = "manual") -> RunRef:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(DagRun(dag_id=DAG_ID, run_id=run_id, run_type=run_type, state="failed", conf=conf,
                           run_after=datetime.now(UTC), start_date=datetime.now(UTC)))
    return RunRef(dag_id=DAG_ID, run_id=run_id)


def get(api, path: str, **kwargs):  # noqa: F811
    return api.get(f"/bonito/dags/{DAG_ID}/runs/{path}", headers={"Authorization": f"Bearer {api.token}"}, **kwargs)


@pytest.fixture
def deployment_store(tmp_path, monkeypatch):
    """A deployment whose store is tmp_path/store (the only allowed one), with another team's
    folder next to it holding a report."""
    store = tmp_path / "store"
    monkeypatch.setenv("BONITO_STORE", str(store))
    monkeypatch.setenv("BONITO_ALLOWED_STORES", str(store))
    monkeypatch.delenv("BONITO_SCHEDULE_CONFIG", raising=False)
    foreign = tmp_path / "another" / "team"
    report = foreign / DAG_ID / "probe" / "validate" / "report"
    report.mkdir(parents=True)
    (report / "summary.json").write_text(SECRET)
    return store, foreign


def test_the_view_reads_a_run_from_the_deployments_store_not_the_one_its_conf_names(api, deployment_store):  # noqa: F811
    store, foreign = deployment_store
    run = add_run(f"probe_{uuid.uuid4().hex[:8]}", {"store": str(foreign), "source": "/docs"})
    # The attack of the issue: the conf names a foreign store, a viewer asks for a file of it.
    (foreign / DAG_ID / run.run_id / "validate" / "report").mkdir(parents=True)
    (foreign / DAG_ID / run.run_id / "validate" / "report" / "summary.json").write_text(SECRET)
    for path in ("", "/summary.json", "/files/validate/report/summary.json", "/rows/examples"):
        answer = get(api, run.run_id + path)
        assert answer.status_code == 403 and "another team" not in answer.text, (path, answer.status_code)
        assert "the Dataset view reads runs from those only" in answer.text
    # The same run id in the deployment's store: shown from there.
    mine = add_run(f"mine_{uuid.uuid4().hex[:8]}", {"store": str(store) + "/", "source": "/docs"})
    page = get(api, mine.run_id)
    assert page.status_code == 200 and f"store <code>{store}</code>" in page.text


def test_a_scheduled_run_reads_the_scheduled_settings_store(api, deployment_store, tmp_path, monkeypatch):  # noqa: F811
    nightly = tmp_path / "nightly"
    monkeypatch.setenv("BONITO_SCHEDULE_CONFIG", json.dumps({"store": str(nightly)}))
    # (the DAG's params name a store; a scheduled run's folder is in the scheduled settings' one)
    run = add_run(f"scheduled__{uuid.uuid4().hex[:8]}", {"store": str(tmp_path / "elsewhere")}, run_type="scheduled")
    page = get(api, run.run_id)
    assert page.status_code == 200 and f"store <code>{nightly}</code>" in page.text


# Airflow 3.3 refuses a run id holding '..' itself; '.' it accepts (test_access.py covers every id).
@pytest.mark.parametrize("run_id", [".", "_ledger", "~"])
def test_run_id_dot_reaches_no_other_runs_folder(api, deployment_store, run_id):  # noqa: F811
    store, _ = deployment_store
    victim = LocalStore(store)
    victim.write_bytes(f"{DAG_ID}/victim/validate/report/summary.json", SECRET.encode())
    victim.write_bytes(f"{DAG_ID}/_ledger/summary.json", SECRET.encode())
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        if session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id)) is None:
            add_run(run_id, {"store": str(store), "source": "/docs"})
    encoded = {".": "%2e"}.get(run_id, run_id)
    for path in ("/files/victim/validate/report/summary.json", "/files/bonito_dataset/victim/validate/report/"
                 "summary.json", "/files/summary.json", "/files/_ledger/summary.json", "/summary.json"):
        answer = get(api, encoded + path)
        assert "another team" not in answer.text, (run_id, path, answer.status_code)


def test_pages_forbid_inline_script_and_framing_by_other_origins(api, failed_run):  # noqa: F811
    _, run = failed_run
    for path in ("", "/rows/quarantine", "/rows/nothing", "/files/validate/report/quality.html"):
        answer = get(api, run.run_id.replace(":", "%3A").replace("+", "%2B") + path)
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'self'" in csp and answer.headers["x-frame-options"] == "SAMEORIGIN", path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        if "files/" not in path:  # the view's own pages: no script at all, the stylesheet by nonce
            assert "script-src 'none'" in csp and "default-src 'none'" in csp
            nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
            assert f'<style nonce="{nonce}">' in answer.text and "<script" not in answer.text
        else:  # files from the store: a sandbox, an opaque origin
            assert csp.startswith("sandbox")


def _examples_run(store_root, rows) -> RunRef:
    run = add_run(f"cells_{uuid.uuid4().hex[:8]}", {"store": str(store_root), "source": "/docs"})
    shard = StageWriter(LocalStore(store_root), run, "generate", partition=0)
    shard.begin()
    shard.add("examples", pa.Table.from_pylist(rows, EXAMPLES))
    shard.commit(metrics=GenerateMetrics(prompts=len(rows)))
    return run


def test_cells_show_control_and_bidi_characters_and_isolate_them(api, deployment_store):  # noqa: F811
    from bonito_airflow.view.app import visible

    store, _ = deployment_store
    row = _row(1, True) | {"output": "pay \u202eoiv.exe\u202c now\x00\x1b[31m\u200b", "task_type": "exqa"}
    run = _examples_run(store, [row])
    page = get(api, f"{run.run_id}/rows/examples")
    assert page.status_code == 200
    assert "pay ⟨U+202E⟩oiv.exe⟨U+202C⟩ now␀␛[31m⟨U+200B⟩" in page.text
    assert not re.search("[\u202a-\u202e\u2066-\u2069\u200b\x00\x1b]", page.text)
    assert "unicode-bidi: isolate" in page.text
    assert visible("a\tb\nc\r\n") == "a\tb\nc\r\n" and visible("\x7f\x85") == "␡⟨U+0085⟩" and visible(3) == 3


def test_a_page_past_the_end_says_so(api, deployment_store):  # noqa: F811
    store, _ = deployment_store
    run = _examples_run(store, [_row(i, True) for i in range(7)])
    page = get(api, f"{run.run_id}/rows/examples", params={"offset": 10**12})
    assert page.status_code == 200
    assert "Offset 1000000000000 is past the end: examples has 7 rows" in page.text
    assert "Rows 1000000000001" not in page.text
    assert "Rows 1–7 of 7" in get(api, f"{run.run_id}/rows/examples").text
