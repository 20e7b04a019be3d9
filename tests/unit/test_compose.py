"""Static checks of docker-compose.yaml (no Docker engine runs here to bring it up)."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_every_variable_is_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yaml").read_text()))
    listed = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
              if line and not line.startswith("#")}
    assert used and used <= listed, f"missing from .env.example: {sorted(used - listed)}"


def test_images_or_build_contexts_exist_and_airflow_mounts_code():
    services = compose()["services"]
    assert {"postgres", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert (REPO / service["build"] / "Dockerfile").is_file(), name
        if name.startswith(("api-server", "scheduler", "dag-processor", "triggerer")):
            assert {"./dags:/opt/airflow/dags", "./plugins:/opt/airflow/plugins"} <= set(service["volumes"])


def test_no_credentials_committed():
    text = (REPO / "docker-compose.yaml").read_text() + (REPO / ".env.example").read_text()
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)[A-Z_]*=\S", (REPO / ".env.example").read_text())
    assert "hf_" not in text
