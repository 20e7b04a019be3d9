"""A self-contained local Airflow (SQLite metadata DB, this repo's dags and plugins) for the demo and tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def airflow_env(home: Path) -> dict[str, str]:
    """The environment that points Airflow at `home` and this repo (added to the current one)."""
    paths = [str(REPO / "plugins"), str(REPO / "dags"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
    }


def configure(home: Path) -> None:
    """Point this process's Airflow at `home` and this repo. Must run before airflow is imported."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(home))


def setup_db(env: dict[str, str] | None = None) -> None:
    """Create or upgrade the metadata database and the `gpu` pool (idempotent), for this process's
    Airflow or the one `env` configures. The pool has one slot per GPU (BONITO_GPU_SLOTS, default
    1); generate tasks run in it."""
    env = env or dict(os.environ)
    airflow = str(Path(sys.executable).with_name("airflow"))
    for args in (["db", "migrate"],
                 ["pools", "set", "gpu", env.get("BONITO_GPU_SLOTS", "1"), "GPU slots for bonito generate tasks"]):
        subprocess.run([airflow, *args], check=True, stdout=subprocess.DEVNULL, env=env)


def load_dag(dag_id: str):
    """The DAG as the dag-processor would parse it from this repo's dags folder."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)
