"""`make ui`'s pieces that need no running Airflow: the form's defaults it sets, ports, and the lock
that keeps one local Airflow per database (tests/deployment/test_make_ui.py runs the real thing)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bonito_dev import ui
from bonito_dev.local import HomeBusy, lock_home, record_in_lock
from bonito_dev.processes import MARKER
from conftest import SAMPLE_DOCS, TINY_MODEL


def test_form_defaults_from_the_environment():
    from bonito_airflow.params import env_defaults
    from bonito_tasks.config import ConfigRejected

    defaults = env_defaults({"BONITO_FORM_DEFAULTS": '{"min_pass_rate": 0.5, "task_types": ["ynqa"]}'}, "/h")
    assert defaults["min_pass_rate"] == 0.5 and defaults["task_types"] == ["ynqa"]
    assert defaults["store"] == "/h/bonito-store"
    with pytest.raises(ConfigRejected, match="BONITO_FORM_DEFAULTS: unknown field 'min_passrate'.*'min_pass_rate'"):
        env_defaults({"BONITO_FORM_DEFAULTS": '{"min_passrate": 0.5}'}, "/h")


def test_the_ui_form_with_only_a_source_is_the_demo_on_the_tiny_model(tmp_path):
    from bonito_airflow.params import env_defaults, run_params
    from bonito_dev.demo import demo_conf
    from bonito_tasks.config import check_config

    env = ui.ui_env(tmp_path / "airflow", tmp_path / "store", 8123, tmp_path / "pw.json",
                    base={"BONITO_SOURCE": "s3://x/", "BONITO_ALLOWED_SOURCES": "s3://mine/"})
    form = {name: p.value for name, p in run_params(**env_defaults(env, env["AIRFLOW_HOME"])).items()}
    config = check_config(form | {"source": str(SAMPLE_DOCS)})
    assert config.model_id == str(TINY_MODEL) and config.store == str(tmp_path / "store")
    assert config == check_config(demo_conf(tmp_path))  # every other param as `make demo` sets it
    assert "BONITO_SOURCE" not in env  # no nightly sweep
    assert env["BONITO_ALLOWED_SOURCES"] == f"s3://mine/,{SAMPLE_DOCS}"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(tmp_path / "pw.json")
    assert env[MARKER] and env["AIRFLOW__API_AUTH__JWT_SECRET"] != ui.ui_env(
        tmp_path, tmp_path, 8123, tmp_path / "pw.json", base={})["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_a_new_password_on_every_start_readable_only_by_its_owner(tmp_path):
    path = tmp_path / "passwords.json"
    first = ui.write_password(path)
    assert json.loads(path.read_text()) == {"admin": first}
    assert path.stat().st_mode & 0o777 == 0o600
    assert ui.write_password(path) != first


@pytest.fixture
def taken_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_taken_port(taken_port, monkeypatch):
    with pytest.raises(ui.Refused, match=rf"port {taken_port} on 127.0.0.1 is taken.*`make ui PORT=\d+`"):
        ui.choose_port(taken_port)
    monkeypatch.setattr(ui, "DEFAULT_PORT", taken_port)  # the default is taken: another one, said so
    port, note = ui.choose_port(None)
    assert port != taken_port and f"port {taken_port} is taken; using {port}" in note


def test_one_local_airflow_per_home(tmp_path):
    home = tmp_path / "airflow"
    held = lock_home(home, "make ui")
    record_in_lock(held, url="http://127.0.0.1:8123")
    with pytest.raises(HomeBusy, match=rf"`make ui` is running on {home} \(pid {os.getpid()}, http://127.0.0.1:8123\)"):
        lock_home(home, "make demo")
    held.close()  # the holder ended
    lock_home(home, "make demo").close()


def test_processes_an_earlier_holder_left_behind_block_the_home(tmp_path):
    home = tmp_path / "airflow"
    held = lock_home(home, "make ui")
    record_in_lock(held, marker="m-left-behind")
    held.close()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={MARKER: "m-left-behind"})
    try:
        with pytest.raises(HomeBusy, match=rf"still running \(pids {orphan.pid}\).*kill {orphan.pid}"):
            lock_home(home, "make ui")
    finally:
        orphan.kill()
        orphan.wait()
    lock_home(home, "make ui").close()
