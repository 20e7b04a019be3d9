"""bonito_dataset driven through the Airflow 3 UI in a real browser (Debian's chromium, run by
Playwright), against the deployment of conftest.py: sign in, open the DAG, fill its trigger form
(rendered from the DAG's params), trigger, and follow the publish task's extra link
"Dataset on Hugging Face". A screenshot of every step goes to the artifacts folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from deployment.conftest import DAG_ID

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(1200)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HUB_REPO = "bonito-test/ui"
# The trigger form's fields are named element_<param>. The source and model keep their defaults
# (BONITO_SOURCE's one document, BONITO_MODEL); the tiny model knows nothing, so the quality gates open.
FORM = {"task_types": "exqa", "hub_repo_id": HUB_REPO, "min_pass_rate": "0", "max_duplicate_rate": "1",
        "max_label_share": "1"}


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


def test_trigger_from_the_ui_and_open_the_published_dataset(deployment, page, artifacts):
    shots = iter(range(1, 100))

    def screenshot(name: str) -> None:
        page.screenshot(path=artifacts / f"{next(shots):02d}-{name}.png", full_page=True)

    page.goto(f"{deployment.url}/dags/{DAG_ID}")
    page.wait_for_url("**/auth/login**")  # auth is on: the UI sends us to sign in first
    page.get_by_label("Username").fill(deployment.username)
    page.get_by_label("Password").fill(deployment.password)
    screenshot("login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/dags/{DAG_ID}")
    page.get_by_role("heading", name=DAG_ID).wait_for()
    screenshot("dag")

    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    for name, value in FORM.items():
        form.locator(f'[name="element_{name}"]').fill(value)
    form.locator('[id="switch:element_full_refresh"]').click()  # the ledger may know the document
    assert form.locator('[name="element_full_refresh"]').is_checked()
    assert form.get_by_label(f"Unpause {DAG_ID} on trigger").is_checked()
    screenshot("trigger-form")
    form.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
    run_id = page.url.rsplit("/runs/", 1)[1]
    screenshot("run-triggered")
    try:
        run = deployment.api.wait_for_run(DAG_ID, unquote(run_id), timeout=900, details=deployment.details)
    finally:
        deployment.api.set_paused(DAG_ID, True)
    assert run["conf"]["hub_repo_id"] == HUB_REPO and run["conf"]["full_refresh"] is True
    page.reload()
    page.get_by_text("Success").first.wait_for()
    screenshot("run-succeeded")

    # The run summary, readable in the UI: the summarize task's log (and its XCom `summary`).
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run_id}/tasks/summarize")
    page.get_by_text(re.compile(r"gpu_hours=")).first.wait_for()
    screenshot("run-summary-log")
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run_id}/tasks/summarize/xcom")
    page.get_by_text("summary", exact=True).first.wait_for()
    screenshot("run-summary-xcom")

    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run_id}/tasks/publish/details")
    link = page.get_by_role("link", name="Dataset on Hugging Face")
    link.wait_for()
    screenshot("publish-details")
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
    hub_page.screenshot(path=artifacts / f"{next(shots):02d}-hub-link.png")
