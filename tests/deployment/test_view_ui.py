"""The Dataset view in the real UI (Debian's chromium driven by Playwright, the deployment of
conftest.py), as the on-call uses it: a run whose validate fails (every output is over
`max_output_tokens=1`, so the pass rate falls under the 0.9 threshold). From the DAG's Grid view:
click the run, click its "Dataset" tab; the failed expectation with observed value and threshold
and an example quarantined row are on screen. The test counts those clicks (target: at most 3).
(The reviewer's path, approving in the UI, is test_ui.py's run.)

A screenshot of every step goes to the artifacts folder.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from deployment.conftest import DAG_ID
from deployment.test_ui import Shots, page, sign_in  # noqa: F401 - page: the browser fixture

pytestmark = [pytest.mark.deployment, pytest.mark.timeout(1800)]

MAX_CLICKS = 3


def run_to_end(deployment, conf: dict, expect: str) -> str:
    """Trigger a run through the REST API with the DAG unpaused; pause it again once the run ended."""
    deployment.api.set_paused(DAG_ID, False)
    try:
        run_id = deployment.api.trigger(DAG_ID, conf)
        deployment.api.wait_for_run(DAG_ID, run_id, timeout=900, details=deployment.details, expect=expect)
    finally:
        deployment.api.set_paused(DAG_ID, True)
    return run_id


def test_failed_validate_leads_to_the_failed_expectation_and_a_quarantined_row(deployment, page, artifacts):  # noqa: F811
    run_id = run_to_end(deployment, {"task_types": ["exqa"], "full_refresh": True, "max_output_tokens": 1},
                        expect="failed")
    states = {ti["task_id"]: ti["state"] for ti in deployment.api.task_instances(DAG_ID, run_id)}
    assert states["validate"] == "failed" and states["publish"] == "upstream_failed", states
    with Shots(page, artifacts) as shot:
        _find_the_cause(deployment, page, run_id, shot)


def _find_the_cause(deployment, page, run_id, shot):  # noqa: F811
    sign_in(page, deployment)
    page.goto(f"{deployment.url}/dags/{DAG_ID}")  # the DAG's page opens on its Grid view
    page.get_by_text(DAG_ID).first.wait_for()
    shot("grid")
    clicks = 0
    # Click 1: the failed run in the grid (its bar links to the run's page).
    page.locator(f'a[href$="/runs/{run_id}/"], a[href$="/runs/{quote(run_id, safe="")}/"]').first.click()
    clicks += 1
    page.wait_for_url(re.compile(r"/runs/[^/]+/?$"))
    tab = page.get_by_role("link", name="Dataset", exact=True).or_(page.get_by_role("tab", name="Dataset", exact=True))
    tab.first.wait_for()
    shot("run-page")
    # Click 2: the run's "Dataset" tab (the plugin's external view).
    tab.first.click()
    clicks += 1
    view = page.frame_locator("iframe")
    cause = view.locator("#cause").locator("xpath=following-sibling::div[1]")
    cause.get_by_text("validate failed: ValidationFailed").wait_for(timeout=60_000)
    expectation = cause.locator("tr", has_text="min_pass_rate")
    assert "min_value=0.9" in expectation.inner_text()
    observed = float(expectation.locator("td").nth(2).inner_text())
    assert observed < 0.9
    quarantined = cause.locator("table").nth(1)
    assert "output_length" in quarantined.inner_text()
    shot("dataset-view-cause")
    for plot in view.locator(".plots img").all():  # validate's quality plots (matplotlib SVG) load
        plot.scroll_into_view_if_needed()
        expect(plot).not_to_have_js_property("naturalWidth", 0)
    assert view.locator(".plots img").count() == 3
    assert clicks <= MAX_CLICKS, f"{clicks} clicks from the Grid view to the failed expectation"

    # The quarantined rows, paged, with the expectations each failed; and validate's extra links.
    view.get_by_role("link", name="All quarantined rows").click()
    view.get_by_text(re.compile(r"Rows 1–\d+ of \d+")).wait_for()
    shot("quarantine-rows")
    page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/validate/details")
    link = page.get_by_role("link", name="Quality report")
    link.wait_for()
    assert "/bonito/dags/bonito_dataset/runs/" in link.get_attribute("href")
    assert page.get_by_role("link", name="Data Docs").get_attribute("href").endswith(
        "/files/validate/data_docs/index.html")
    shot("validate-extra-links")
    docs = page.context.request.get(page.get_by_role("link", name="Data Docs").get_attribute("href"))
    assert docs.status == 200 and "html" in docs.headers["content-type"]

    # The alert of the failure links to the runbook and the view.
    alert = next(a for a in deployment.alerts.alerts("task_failed") if a["run_id"] == run_id)
    assert alert["task_id"] == "validate" and alert["runbook_url"].endswith("/tasks/validate/runbook")
    runbook = page.context.request.get(alert["runbook_url"])
    assert runbook.status == 200 and "Safe to clear" in runbook.text()
