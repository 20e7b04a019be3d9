"""GX Data Docs render with no network (bonito_tasks/checks/data_docs.py): no page loads anything from
another host, the index's tables are plain HTML, and a failed check's count says what it is a share of.
A validate stage that quarantined rows builds the site; chromium with every request off the local
file system blocked then finds the validation results on the page."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_validate import DEFECTS, RUN, chunk_stage, clean_row, clean_rows, commit_generate_shard, context, run_config

from bonito_tasks.checks.data_docs import REMOTE_ASSET
from bonito_tasks.store import LocalStore
from bonito_tasks.validate import validate

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """The Data Docs folder of a committed validate stage with one quarantined row per defect."""
    from test_validate import commit_chunks

    tmp = tmp_path_factory.mktemp("docs")
    store = LocalStore(tmp / "store")
    commit_chunks(store, 200)
    rows = clean_rows(60)
    for k, (_, task_type, changes) in enumerate(DEFECTS):
        row = clean_row(100 + k, task_type)
        row.update({key: value.replace("{ctx}", context(100 + k)) if isinstance(value, str) else value
                    for key, value in changes.items()})
        rows.append(row)
    manifest = validate(store, RUN, run_config(tmp, min_pass_rate=0.5), [commit_generate_shard(store, rows)],
                        chunk_stage(store))
    return Path(manifest.metrics.quality.data_docs_uri).parent


def pages(docs: Path) -> list[Path]:
    return sorted(docs.rglob("*.html"))


def test_no_page_loads_anything_from_another_host(docs):
    assert len(pages(docs)) == 5  # index, two suites, two validation results
    for page in pages(docs):
        text = page.read_text(encoding="utf-8")
        assert not REMOTE_ASSET.search(text), f"{page.relative_to(docs)}: {REMOTE_ASSET.search(text).group(0)}"
        assert "<script" not in text and "<style>" in text
    for css in docs.rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", css.read_text(encoding="utf-8")), css.name


def test_the_index_lists_every_validation_in_plain_html(docs):
    index = (docs / "index.html").read_text(encoding="utf-8")
    validations = sorted(p.relative_to(docs).as_posix() for p in (docs / "validations").rglob("*.html"))
    assert len(validations) == 2
    for link in validations:
        assert f'href="{link}"' in index
    assert 'href="expectations/bonito_examples.html"' in index
    failed_row = r'<span class="ge-failed">Failed</span></a></td><td>[^<]+</td><td>[^<]*</td><td>example_rows'
    assert re.search(failed_row, index)
    assert '<span class="ge-passed">Success</span>' in index  # the dataset suite held at min_pass_rate 0.5


def test_a_validation_page_shows_each_check_and_what_its_count_is_of(docs):
    [rows_page] = (docs / "validations").rglob("bonito-example_rows.html")
    text = rows_page.read_text(encoding="utf-8")
    # one failed check per defect, and the page's overall status
    assert text.count('<span class="ge-failed">failed</span>') == len(DEFECTS) + 1
    assert "ynqa_label" in text or "label__ynqa" in text
    # 76 rows, 7 of them ynqa: the label check's 1 in 7 is not "14.29% of 76 total rows".
    assert "total rows" not in text
    assert ("1 unexpected value found: ≈14.29% of the 7 rows this check applies to "
            "(it does not apply to the other 69 of the 76 rows).") in text
    assert "1 unexpected value found: ≈1.316% of all 76 rows." in text


def test_chromium_shows_the_results_with_the_network_blocked(docs):
    if not CHROMIUM.exists():
        if os.environ.get("BONITO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    blocked = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(offline=True).new_page()
        page.route(re.compile(r"^(?!file:).*"), lambda route: (blocked.append(route.request.url), route.abort()))
        page.goto((docs / "index.html").as_uri())
        table = page.locator("table.ge-static-table").first
        assert table.is_visible()
        assert "example_rows" in table.inner_text() and "Failed" in table.inner_text()
        page.get_by_role("link", name="Failed").click()
        page.wait_for_load_state()
        body = page.locator("body").inner_text()
        browser.close()
    assert "failed" in body and "rows this check applies to" in body
    assert blocked == []
