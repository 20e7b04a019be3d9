"""The REST trigger example of docs/deployment.md, run as written (bash and curl) against the real
deployment of conftest.py: the token step, then the trigger with `logical_date`. Only the URL and
the credentials that `.env` would give are set from the deployment. The DAG stays paused and the
run is deleted at once, so it never runs (its source is the compose stack's bucket)."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import REPO
from deployment.conftest import DAG_ID

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(300)]


def rest_example() -> str:
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "/auth/token" in b]
    return block


def test_the_docs_rest_trigger_example_triggers_a_run(deployment):
    script = rest_example()
    assert "set -a; . ./.env; set +a\n" in script and "AIRFLOW_URL=http://localhost:8080\n" in script
    script = script.replace("set -a; . ./.env; set +a\n", "").replace(
        "AIRFLOW_URL=http://localhost:8080\n", f"AIRFLOW_URL={deployment.url}\n")
    env = os.environ | {"AIRFLOW_ADMIN_USER": deployment.username, "AIRFLOW_ADMIN_PASSWORD": deployment.password}
    deployment.api.set_paused(DAG_ID, True)

    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    try:
        assert run["dag_id"] == DAG_ID and run["state"] == "queued"
        assert run["conf"] == {"source": "s3://documents/", "task_types": ["exqa", "ynqa"]}
        assert deployment.api.run(DAG_ID, run["dag_run_id"])["dag_run_id"] == run["dag_run_id"]
    finally:
        deployment.api.call("DELETE", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")
