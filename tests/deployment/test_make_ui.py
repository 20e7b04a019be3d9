"""`make ui` on the real processes, as a new user goes through it: `make demo`, then `make ui`.

The test runs the same entry points as the Makefile (`python -m bonito_dev.demo` and
`python -m bonito_dev.ui`, with `--output` a temporary folder instead of demo-output/): one demo
run with dag.test() on the SQLite database, then the local Airflow (api-server, scheduler with the
LocalExecutor, dag-processor, triggerer) on that database, on a free port. In chromium (Playwright)
it signs in with the credentials `make ui` printed, opens the demo's run and its Dataset tab,
triggers a run from the form with only `source` set to the sample documents, waits for it to
succeed and opens its Dataset tab. A second `make ui` and a `make demo` on the same database are
refused while it runs; Ctrl-C (SIGINT) stops it, and no process it started is left.

Needs no PostgreSQL or Redis (unlike the rest of tests/deployment), only chromium.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from bonito_dev.processes import free_port, marked_processes, port_free
from conftest import REPO, SAMPLE_DOCS
from deployment.stack import AirflowApi, wait_until
from deployment.test_ui import chromium_page

# Its own xdist group (tests/conftest.py): it shares nothing with the stack of conftest.py, so under
# `make test` it runs on the other worker while the stack's tests run.
pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("make_ui"), pytest.mark.timeout(2400)]

DAG_ID = "bonito_dataset"
ENV = dict(os.environ) | {"PYTHONPATH": os.pathsep.join(["plugins", "dags", "."])}  # as the Makefile runs them


def entry_point(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class UiProcess:
    """`python -m bonito_dev.ui` in its own session, its output collected line by line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(entry_point("bonito_dev.ui", *args), cwd=REPO, env=ENV, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        def found():
            assert self.proc.poll() is None, f"make ui exited {self.proc.returncode}:\n{self.output}"
            return re.search(pattern, self.output)

        return wait_until(found, timeout, f"make ui to print {pattern!r}", interval=1, details=lambda: self.output)


@pytest.fixture
def browser_page():
    yield from chromium_page()


def open_dataset_tab(page, url: str, run_id: str):
    """The run's page, then a click on its Dataset tab: the view's frame."""
    page.goto(f"{url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    tab = page.get_by_role("link", name="Dataset", exact=True).or_(page.get_by_role("tab", name="Dataset", exact=True))
    tab.first.click()
    return page.frame_locator("iframe")


def published_folder(view) -> str:
    """What the view's "Where the dataset went" says: the dataset folder."""
    section = view.locator("#published").locator("xpath=following-sibling::table[1]")
    section.wait_for(timeout=60_000)
    return section.locator("tr", has_text="dataset folder").locator("td").inner_text()


def test_make_demo_then_make_ui_trigger_from_the_form_and_stop(tmp_path, browser_page, artifacts):
    page = browser_page
    output = tmp_path / "demo-output"
    started = time.monotonic()

    # 1. make demo: one dag.test() run on the SQLite database.
    demo = subprocess.run(entry_point("bonito_dev.demo", "--output", str(output)), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stderr[-5000:]
    demo_run = json.loads((output / "last_run.json").read_text())["run_id"]
    demo_s = time.monotonic() - started

    # 2. make ui on a port given (the default 8080 may be taken here), as `make ui PORT=...` does.
    port = free_port()
    ui = UiProcess("--output", str(output), "--port", str(port))
    marker = None
    try:
        login = ui.wait_for(r"Sign in as:\s+(\S+)\s+/\s+(\S+)", timeout=600)
        username, password = login.groups()
        url = ui.wait_for(r"Airflow UI:\s+(http://\S+)/dags/", timeout=5).group(1)
        assert url == f"http://127.0.0.1:{port}"
        ui_s = time.monotonic() - started - demo_s
        lock = json.loads((output / "airflow" / "bonito.lock").read_text())
        marker = lock["marker"]
        assert lock["pid"] == ui.proc.pid and lock["url"] == url
        started_pids = marked_processes(marker)
        assert len(started_pids) >= 4, started_pids  # api-server, scheduler, dag-processor, triggerer (and theirs)
        assert password not in (output / "airflow" / "ui-logs" / "api-server.log").read_text()
        assert re.search(r"Runs so far: 1 ", ui.output), ui.output

        # Bad input while it runs: a second make ui, a make demo, a taken port.
        again = subprocess.run(entry_point("bonito_dev.ui", "--output", str(output)), cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and f"`make ui` is running on {output / 'airflow'} (pid {ui.proc.pid}, {url})" \
            in again.stderr, again.stderr + again.stdout
        demo_again = subprocess.run(entry_point("bonito_dev.demo", "--output", str(output)), cwd=REPO, env=ENV,
                                    capture_output=True, text=True, timeout=120)
        assert demo_again.returncode == 2 and "`make ui` is running on" in demo_again.stderr, demo_again.stderr
        taken = subprocess.run(entry_point("bonito_dev.ui", "--output", str(tmp_path / "other"), "--port", str(port)),
                               cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert taken.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in taken.stderr, taken.stderr
        assert "make ui PORT=" in taken.stderr

        _in_the_browser(page, url, username, password, demo_run, output, artifacts)
        browser_s = time.monotonic() - started - demo_s - ui_s
    except BaseException:
        (artifacts / "make-ui-output.txt").write_text(ui.output)
        raise
    finally:
        # 3. Ctrl-C: SIGINT to make ui alone (its own session; the terminal would send it to make too).
        stop_started = time.monotonic()
        if ui.proc.poll() is None:
            ui.proc.send_signal(signal.SIGINT)
        try:
            code = ui.proc.wait(timeout=120)
        finally:
            if ui.proc.poll() is None:
                os.killpg(ui.proc.pid, signal.SIGKILL)
            left = marked_processes(marker) if marker else []
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        stop_s = time.monotonic() - stop_started
    ui.reader.join(10)
    assert code == 0, ui.output
    assert not left, f"processes make ui started are still alive after it stopped: {left}\n{ui.output}"
    assert not [pid for pid in started_pids if Path(f"/proc/{pid}").exists()
                and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()]
    assert "stopped every process `make ui` started" in ui.output
    assert port_free(port) and not (output / "airflow" / "simple_auth_manager_passwords.json").exists()
    print(f"\nmake demo {demo_s:.0f} s, make ui ready {ui_s:.0f} s, browser and run {browser_s:.0f} s, "
          f"stop {stop_s:.0f} s")


def _in_the_browser(page, url, username, password, demo_run, output, artifacts):
    shots = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=artifacts / f"{next(shots):02d}-{name}.png", full_page=True)

    page.goto(f"{url}/dags/{DAG_ID}")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/dags/{DAG_ID}**")
    page.get_by_role("heading", name=DAG_ID).wait_for()
    shot("dag")

    # The demo's run, made by dag.test(), and its Dataset tab.
    view = open_dataset_tab(page, url, demo_run)
    assert published_folder(view).startswith(str(output / "store" / DAG_ID))
    shot("demo-run-dataset")

    # A run from the trigger form with only `source` set.
    page.goto(f"{url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    form.locator('[name="element_source"]').fill(str(SAMPLE_DOCS))
    assert form.get_by_label(f"Unpause {DAG_ID} on trigger").is_checked()
    shot("trigger-form")
    form.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
    run_id = unquote(page.url.rsplit("/runs/", 1)[1])
    assert run_id != demo_run

    api = AirflowApi(url, username, password)
    api.login()
    run = api.wait_for_run(DAG_ID, run_id, timeout=1200)  # fails with the failed tasks' logs
    assert run["conf"]["source"] == str(SAMPLE_DOCS)

    view = open_dataset_tab(page, url, run_id)
    folder = published_folder(view)
    shot("triggered-run-dataset")
    assert folder.startswith(str(output / "store" / DAG_ID))  # published into the local store
    assert Path(folder, "README.md").is_file() and Path(folder, "data").is_dir()  # the card and the splits
