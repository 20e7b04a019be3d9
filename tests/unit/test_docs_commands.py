"""The docs cannot drift from the code: every shell command README.md, docs/, the runbooks and
benchmarks/README.md show is run here, or checked as far as this machine allows, with the reason
written next to its rule (Docker, MinIO, a GPU, the deployment). A command no rule knows fails the
test, so a new command in the docs needs a decision here. Every repository path, make target,
environment variable, param and Airflow setting the pages name must exist, and the list of source
formats in docs/design.md must be the extract stage's.

What runs: `make` in dry-run mode (the target and its variables exist), the secret generators and
the runbook's ledger one-liner for real, Airflow CLI lines through Airflow's own argument parser,
`docker compose` lines against the services of docker-compose.yaml, module and script flags against
the argparse definitions. The REST trigger example runs against a real deployment in
tests/deployment/test_docs_rest.py; here its bodies are validated with Airflow's request models.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.airflow

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "dags" / "runbooks").glob("*.md")),
         REPO / "benchmarks" / "README.md"]
COMMAND_START = ("make ", "python ", "python3 ", "docker ", ".venv/bin/python ", "airflow ", "mc ", "curl ",
                 "benchmarks/", "vllm ", "cp ", "set -a", "export ")
# Why a command cannot run here: it is checked as far as written below, the rest needs this.
NEEDS_DOCKER = "needs Docker with the compose plugin and the stack up (docker-compose.yaml: tests/unit/test_compose.py)"
NEEDS_MINIO = "needs MinIO of the compose stack (the network)"
NEEDS_DEPLOYMENT = "needs a running Airflow: tests/deployment/test_docs_rest.py runs it against the real deployment"
NEEDS_GPU = "needs a GPU, or minutes of vLLM's CPU build (tests/integration/test_generate_server.py runs a server)"


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _without_fences(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every line of a ```bash block (continuations joined, comments cut) and
    every inline `command` that starts like one."""
    found = []
    for page in PAGES:
        text = _text(page)
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.append((page.name, _strip_comment(line)))
        for code in re.findall(r"`([^`\n]+)`", _without_fences(text)):
            if code.startswith(COMMAND_START) and not code.endswith("/"):
                found.append((page.name, code))
    return found


def _strip_comment(line: str) -> str:
    """The line without a trailing comment (two spaces or more, then `#`)."""
    return re.split(r"\s{2,}#", line)[0].rstrip()


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "dags"), str(REPO)])}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env, timeout=120, **kwargs)


def _check_make(command: str) -> None:
    words = shlex.split(command)
    dry = _run(["make", "-n", "-o", ".venv/bin/.installed", *words[1:]])
    assert dry.returncode == 0, f"{command}: {dry.stderr[-500:]}"
    for word in words[2:]:
        if word.startswith("CONF="):
            _check_params(json.loads(word.removeprefix("CONF=")), command)


def _check_python_c(command: str, tmp_path: Path) -> None:
    words = shlex.split(command.replace("<store>", str(tmp_path / "store")))
    done = _run([sys.executable, *words[1:]])
    assert done.returncode == 0 and done.stdout.strip(), f"{command}: {done.stderr[-800:]}"


def _declared_flags(source: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", source.read_text(encoding="utf-8")))


def _check_module_or_script(command: str) -> None:
    words = shlex.split(command)
    if words[0].endswith("python") and words[1] == "-m":
        source, args = REPO / (words[2].replace(".", "/") + ".py"), words[3:]
    else:
        script = words[1] if words[0].endswith("python") else words[0]
        if "<" in script:  # `.venv/bin/python benchmarks/<script>`: the folder holds scripts
            assert list((REPO / Path(script).parent).glob("*.py")), command
            return
        source, args = REPO / script, words[2:] if words[0].endswith("python") else words[1:]
    assert source.is_file(), f"{command}: no {source.relative_to(REPO)}"
    flags = _declared_flags(source) | ({"--check"} if source.name == "params_table.py" else set())
    for flag in (a for a in args if a.startswith("--")):
        assert flag in flags, f"{command}: {source.name} has no {flag} (it has {sorted(flags)})"


def _check_airflow(command: str) -> None:
    from airflow.cli import cli_parser

    args = shlex.split(command.replace("<GPUs>", "1").replace(" ...", " description"))[1:]
    try:
        cli_parser.get_parser().parse_args(args)
    except SystemExit as refused:
        raise AssertionError(f"{command}: Airflow's CLI refuses it") from refused


def _compose_services() -> set[str]:
    import yaml

    return set(yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"])


def _check_compose(command: str) -> None:
    """The subcommand, and every service it names, exist (it runs only where Docker does)."""
    words = shlex.split(command)
    sub, rest = words[2], words[3:]
    assert words[:2] == ["docker", "compose"] and sub in {"up", "ps", "config", "exec", "logs"}, command
    services = _compose_services()
    if sub in {"exec", "logs"}:
        assert rest[0] in services, f"{command}: no service {rest[0]}"
        if rest[1:2] == ["airflow"]:
            _check_airflow(shlex.join(rest[1:]))
    for word in rest:
        if "=" in word and not word.startswith("-"):
            assert word.split("=")[0] in services, f"{command}: no service {word.split('=')[0]}"


def _check_export(command: str) -> None:
    name, _, value = command.removeprefix("export ").partition("=")
    assert name == "AIRFLOW_CONN_AWS_DEFAULT", command
    connection = json.loads(shlex.split(value)[0])
    assert connection["conn_type"] == "aws" and set(connection) <= {"conn_type", "login", "password", "extra"}


def _check_cp(command: str) -> None:
    assert command == "cp .env.example .env" and (REPO / ".env.example").is_file()


# (pattern, what is done here; a string is the reason the command is only checked as far as written)
RULES = [
    (r"make ", _check_make),
    (r"python3? -c ", _check_python_c),
    (r"(\.venv/bin/)?python -m bonito_dev\.", _check_module_or_script),
    (r"(\.venv/bin/python )?benchmarks/\S+\.py", _check_module_or_script),
    (r"\.venv/bin/python benchmarks/<script>", _check_module_or_script),
    (r"airflow ", _check_airflow),
    (r"docker compose ", _check_compose),  # checked as written; running it: NEEDS_DOCKER
    (r"export AIRFLOW_CONN_AWS_DEFAULT=", _check_export),
    (r"cp \.env\.example \.env$", _check_cp),
    (r"mc ", NEEDS_MINIO),
    (r"set -a; \. \./\.env; set \+a$", "reads the compose stack's .env (the next lines need it)"),
    (r"(AIRFLOW_URL=|TOKEN=\$\(curl|curl .*(/auth/token|/api/v2/))", NEEDS_DEPLOYMENT),
    (r"vllm serve", NEEDS_GPU),
]


def _rule(command: str):
    for pattern, action in RULES:
        if re.match(pattern, command):
            return action
    return None


@pytest.mark.parametrize("page, command", shown_commands(), ids=lambda v: v[:70])
def test_every_command_shown_runs_or_is_checked(page, command, tmp_path):
    action = _rule(command)
    assert action is not None, f"{page}: no rule in {Path(__file__).name} knows `{command}`: add one"
    if isinstance(action, str):
        return  # it cannot run here, for the reason its rule gives
    if action is _check_python_c:
        action(command, tmp_path)
    else:
        action(command)


# --- names the pages use

_TOP_LEVEL = ("bonito_tasks/", "bonito_dev/", "plugins/", "dags/", "tests/", "benchmarks/", "docs/", ".ci/")
_WRITTEN_BY_TESTS = {"tests/deployment/artifacts/"}  # screenshots of the UI tests, made when they run
_TOP_FILES = {"Makefile", "Dockerfile", "Dockerfile.gpu", "docker-compose.yaml", "pyproject.toml", "constraints.txt",
              ".env.example", ".dockerignore", "README.md"}


def _backticked() -> list[tuple[str, str]]:
    return [(page.name, code) for page in PAGES for code in re.findall(r"`([^`\n]+)`", _without_fences(_text(page)))]


def test_every_repository_path_named_exists():
    for page, code in _backticked():
        for word in code.split():
            path = word.strip("(),;:'\"").split("#")[0].split("::")[0]
            if not (path.startswith(_TOP_LEVEL) or path in _TOP_FILES) or "://" in path or path in _WRITTEN_BY_TESTS:
                continue
            pattern = re.sub(r"<[^>]+>|NNNNN|\*+", "*", path).rstrip("/")
            assert list(REPO.glob(pattern)) or (REPO / pattern).exists(), f"{page}: `{code}` names {path}: missing"


def _code_text() -> str:
    files = [*REPO.glob("bonito_tasks/**/*.py"), *REPO.glob("bonito_dev/*.py"), *REPO.glob("plugins/**/*.py"),
             *REPO.glob("dags/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("tests/**/*.py"),
             REPO / "docker-compose.yaml", REPO / "Makefile",
             REPO / ".env.example", REPO / ".ci" / "run", REPO / "Dockerfile", REPO / "Dockerfile.gpu"]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


# Variables read by the libraries underneath, not by this project's code.
_LIBRARY_ENV = {"HF_TOKEN", "HF_HOME", "HF_ENDPOINT", "PIP_EXTRA_INDEX_URL", "AWS_ACCESS_KEY_ID", "AIRFLOW_HOME",
                "TOKENIZERS_PARALLELISM", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_USE_AOT_COMPILE",
                "VLLM_CPU_KVCACHE_SPACE", "PYTHONPATH", "CI"}


def test_every_environment_variable_named_is_read_somewhere():
    code = _code_text()
    for page, code_span in _backticked():
        for name in re.findall(r"\$?\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", code_span):
            if name.startswith("AIRFLOW__") or name.startswith("AIRFLOW_CONN_") or name in _LIBRARY_ENV:
                continue
            if not re.match(r"^(BONITO|AIRFLOW|HF|MINIO|POSTGRES|AWS)_", name):
                continue  # a constant or a Bonito marker, not a variable
            assert name in code, f"{page}: `{code_span}` names {name}, which nothing reads"


def test_every_airflow_setting_named_exists():
    from airflow.configuration import conf

    for page, code_span in _backticked():
        for section, key in re.findall(r"AIRFLOW__([A-Z_]+?)__([A-Z_]+)", code_span):
            assert conf.has_option(section.lower(), key.lower()), f"{page}: no Airflow setting [{section}] {key}"
        for section, key in re.findall(r"\[(\w+)\] (\w+)", code_span):
            if section in {"core", "api", "scheduler", "celery", "openlineage", "api_auth", "database", "logging"}:
                assert conf.has_option(section, key), f"{page}: no Airflow setting [{section}] {key}"


def _check_params(values: dict, where: str) -> None:
    from bonito_tasks.config import RunConfig

    unknown = set(values) - set(RunConfig.model_fields)
    assert not unknown, f"{where}: {sorted(unknown)} are not params"


# `name=value` spans that name code's arguments, not params: StageWriter's partition, the DAG's max_active_runs.
_NOT_PARAMS = {"partition", "max_active_runs"}


def test_every_param_in_an_example_exists():
    """JSON objects of params (CONF, the scheduled settings, REST conf) and `param=value` spans (a
    plain value: Python code such as `extra="forbid"` is not a param setting)."""
    from bonito_tasks.config import RunConfig

    fields = set(RunConfig.model_fields)
    for page in PAGES:
        text = _text(page)
        for raw in re.findall(r"'(\{.*?\})'", text) + re.findall(r"`(\{[^`]*\})`", text):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(value.get("conf"), dict):
                value = value["conf"]
            if set(value) & fields:
                _check_params(value, f"{page.name}: {raw}")
        for name in re.findall(r"`([a-z][a-z0-9_]+)=[\w.:/-]+`", _without_fences(text)):
            known = name in fields or (name in _NOT_PARAMS and f"{name}=" in _code_text())
            assert known, f"{page.name}: `{name}=...` is not a param"


def test_the_source_formats_in_the_design_doc_are_the_extract_stages():
    from bonito_tasks.extract.readers import READERS, TABLE_READERS

    design = _text(REPO / "docs" / "design.md")
    bullet = design[design.index("- **Formats**"):]
    bullet = bullet[:bullet.index("\n- **")]
    named = set(re.findall(r"`(\.[a-z]+)`", bullet))
    assert named == set(READERS) | set(TABLE_READERS)


def test_the_rest_example_is_what_airflow_accepts():
    """The token request and the trigger body of docs/deployment.md, read by Airflow's own models
    (the trigger body without logical_date is refused)."""
    from airflow.api_fastapi.auth.managers.simple.datamodels.login import LoginBody
    from airflow.api_fastapi.core_api.datamodels.dag_run import TriggerDAGRunPostBody
    from pydantic import ValidationError

    [block] = [b for b in re.findall(r"```bash\n(.*?)```", _text(REPO / "docs" / "deployment.md"), flags=re.S)
               if "/auth/token" in b]
    login = re.search(r"-d \"(\{.*?\})\"", block).group(1).replace('\\"', '"')
    login = re.sub(r"\$\{?\w+(:-\w+)?\}?", "x", login)
    LoginBody.model_validate_json(login)
    body = json.loads(re.search(r"-d '(\{.*?\})'", block).group(1))
    TriggerDAGRunPostBody.model_validate(body)
    _check_params(body["conf"], "deployment.md's REST example")
    with pytest.raises(ValidationError, match="logical_date"):
        TriggerDAGRunPostBody.model_validate({k: v for k, v in body.items() if k != "logical_date"})
    assert "/api/v2/dags/bonito_dataset/dagRuns" in block and "Authorization: Bearer $TOKEN" in block
