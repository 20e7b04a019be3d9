"""Runs bonito_dataset once with dag.test() and OpenLineage's file transport configured the standard
way ([openlineage] transport in Airflow's config, here as AIRFLOW__OPENLINEAGE__TRANSPORT), in a
process of its own: the provider reads its configuration once per process.

    python tests/e2e/lineage_run.py OUT_DIR CONF_JSON

Writes OUT_DIR/events.jsonl (one event a line) and prints the run's id and state as JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    out, conf = Path(sys.argv[1]), json.loads(sys.argv[2])
    repo = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(repo), str(repo / "plugins"), str(repo / "dags")]
    from bonito_dev.local import configure

    configure(out / "airflow")
    os.environ["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(out / "events.jsonl"), "append": True})
    os.environ["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "bonito-e2e"
    # The provider abandons an event whose emission takes longer (default 10 s): a loaded 2-core CI
    # machine can take that long, and a lost COMPLETE would read as a missing event.
    os.environ["AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT"] = "120"
    from bonito_dev.local import load_dag, setup_db

    setup_db()
    dag_run = load_dag("bonito_dataset").test(run_conf=conf)
    print("LINEAGE_RUN " + json.dumps({"run_id": dag_run.run_id, "state": str(dag_run.state)}), flush=True)


if __name__ == "__main__":  # vLLM's engine process re-imports the main module: run only once
    main()
