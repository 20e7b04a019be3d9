"""bonito_dataset driven through the Airflow 3 UI in a real browser (Debian's chromium, run by
Playwright), against the deployment of conftest.py, in one run: alice (role user) signs in, opens
the DAG, fills its trigger form (rendered from the DAG's params) with require_approval on and
triggers; the run waits in `approve`; the reviewer (admin, in a browser session of his own) writes a
note and presses Approve in its Required Actions; the run publishes, with the decision and the
reviewer in the publish manifest (the view's summary.json) and on the view; the run summary is in
the summarize task's log and XCom, and the publish task's extra link "Dataset on Hugging Face" opens
the Hub's commit. A screenshot of every step goes to the artifacts folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from deployment.conftest import DAG_ID, TRIGGERER
from deployment.stack import wait_until

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(1800)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HUB_REPO = "bonito-test/ui"
# The trigger form's fields are named element_<param>. The source and model keep their defaults
# (BONITO_SOURCE's one document, BONITO_MODEL); the tiny model knows nothing, so the quality gates open.
FORM = {"task_types": "exqa", "hub_repo_id": HUB_REPO, "min_pass_rate": "0", "max_duplicate_rate": "1",
        "max_label_share": "1"}
NOTE = "spot-checked the exqa samples"


def chromium_page():
    """A page in Debian's headless chromium (driven by Playwright, no browser download); skipped
    without chromium unless BONITO_REQUIRE_BROWSER=1 (CI), where that fails."""
    if not CHROMIUM.exists():
        if os.environ.get("BONITO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


@pytest.fixture
def page(deployment):
    yield from chromium_page()


class Shots:
    """Numbered screenshots; on a failure, the page's URL, HTML and frames' HTML too."""

    def __init__(self, browser, folder):
        self.page, self.folder, self.n = browser, folder, 0

    def __call__(self, name: str, page=None) -> None:
        self.n += 1
        (page or self.page).screenshot(path=self.folder / f"{self.n:02d}-{name}.png", full_page=True)

    def __enter__(self) -> Shots:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is not None:
            self("failure")
            frames = "\n\n".join(f"<!-- frame {f.url} -->\n{f.content()}" for f in self.page.frames)
            (self.folder / "failure.html").write_text(f"<!-- {self.page.url} -->\n{frames}")


def sign_in(browser, deployment, username: str | None = None, shot=None) -> None:
    """Sign in from a fresh browser session (the UI sends it to the login page first)."""
    username = username or deployment.username
    browser.goto(f"{deployment.url}/dags/{DAG_ID}")
    browser.wait_for_url("**/auth/login**")
    browser.get_by_label("Username").fill(username)
    browser.get_by_label("Password").fill(deployment.passwords[username])
    if shot:
        shot("login", browser)
    browser.get_by_role("button", name="Sign in").click()
    browser.wait_for_url(f"**/dags/{DAG_ID}**")


def test_trigger_from_the_ui_approve_and_open_the_published_dataset(deployment, page, artifacts):
    reviewer = page.context.browser.new_page(viewport={"width": 1400, "height": 900})  # a session of its own
    reviewer.set_default_timeout(60_000)
    with Shots(page, artifacts) as shot:
        try:
            run_id = _trigger_as_alice(deployment, page, shot)
            _approve(deployment, reviewer, run_id, shot)
        finally:
            deployment.api.set_paused(DAG_ID, True)
        _published(deployment, reviewer, run_id, shot)


def _trigger_as_alice(deployment, page, shot) -> str:
    """alice triggers from the form; returns the run id once the run waits in `approve`."""
    sign_in(page, deployment, TRIGGERER, shot)
    page.get_by_role("heading", name=DAG_ID).wait_for()
    shot("dag")
    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    for name, value in FORM.items():
        form.locator(f'[name="element_{name}"]').fill(value)
    for switch in ("full_refresh", "require_approval"):  # the ledger may know the document; a reviewer approves
        form.locator(f'[id="switch:element_{switch}"]').click()
        assert form.locator(f'[name="element_{switch}"]').is_checked()
    assert form.get_by_label(f"Unpause {DAG_ID} on trigger").is_checked()
    shot("trigger-form")
    form.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
    run_id = unquote(page.url.rsplit("/runs/", 1)[1])
    shot("run-triggered")

    def approve_waiting():
        states = {ti["task_id"]: ti["state"] for ti in deployment.api.task_instances(DAG_ID, run_id)}
        assert states.get("validate") not in ("failed", "upstream_failed"), states
        return states.get("approve") in ("awaiting_input", "deferred")

    wait_until(approve_waiting, 900, "the approve task to wait for a decision", interval=5,
               details=lambda: deployment.api.failure_report(DAG_ID, run_id) + deployment.details())
    run = deployment.api.run(DAG_ID, run_id)
    assert run["triggering_user_name"] == TRIGGERER
    assert run["conf"]["hub_repo_id"] == HUB_REPO and run["conf"]["full_refresh"] is True
    assert run["conf"]["require_approval"] is True
    return run_id


def _approve(deployment, page, run_id, shot) -> None:
    """The reviewer approves in the run's Required Actions, with a note; the run then publishes."""
    sign_in(page, deployment)
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/approve/required_actions")
    page.get_by_text(re.compile(r"Publish \d+ examples of run")).first.wait_for()
    assert page.get_by_text(re.compile(r"pass rate")).first.is_visible()
    assert page.get_by_role("link", name="Dataset view").first.get_attribute("href").endswith("#samples")
    shot("required-action", page)
    page.locator('[name="element_note"]').fill(NOTE)
    page.get_by_test_id("hitl-option-Approve").click()
    page.get_by_text(re.compile("response successful|Response received", re.I)).first.wait_for()
    shot("approved", page)
    deployment.api.wait_for_run(DAG_ID, run_id, timeout=900, details=deployment.details)


def _published(deployment, page, run_id, shot) -> None:
    """The decision in the manifest and on the view, the run summary, and the link to the Hub."""
    api, run = deployment.api, quote(run_id, safe="")
    decision = api.xcom(DAG_ID, run_id, "approve")
    assert decision["decision"] == "approved" and decision["reviewer"] == deployment.username
    assert decision["note"] == NOTE
    summary = api.http.get(f"/bonito/dags/{DAG_ID}/runs/{run}/summary.json").json()
    assert summary["published"]["approval"]["reviewer"] == deployment.username
    page.goto(f"{deployment.url}/bonito/dags/{DAG_ID}/runs/{run}#published")
    page.get_by_text(NOTE).wait_for()
    shot("published-with-approval", page)

    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run}")
    page.get_by_text("Success").first.wait_for()
    shot("run-succeeded", page)
    # The run summary, readable in the UI: the summarize task's log (and its XCom `summary`).
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run}/tasks/summarize")
    page.get_by_text(re.compile(r"gpu_hours=")).first.wait_for()
    shot("run-summary-log", page)
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run}/tasks/summarize/xcom")
    page.get_by_text("summary", exact=True).first.wait_for()
    shot("run-summary-xcom", page)

    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run}/tasks/publish/details")
    link = page.get_by_role("link", name="Dataset on Hugging Face")
    link.wait_for()
    shot("publish-details", page)
    sha = deployment.hub.repo(HUB_REPO).resolve("main").oid
    expected = f"{deployment.hub.url}/datasets/{HUB_REPO}/tree/{sha}"
    assert link.get_attribute("href") == expected
    # The link opens the Hub's page of the commit. tests/hub_server.py speaks only the Hub's API,
    # so the page itself is its 404: the test checks where the browser went.
    with page.context.expect_page() as opened:
        link.click()
    hub_page = opened.value
    hub_page.wait_for_load_state()
    assert hub_page.url == expected
    shot("hub-link", hub_page)
