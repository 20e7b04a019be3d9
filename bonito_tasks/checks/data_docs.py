"""Great Expectations Data Docs that render with no network, and say what their counts are of.

GX writes pages that load Bootstrap, jQuery, bootstrap-table, vega and Font Awesome from CDNs, and
fills the index's tables with jQuery: behind a firewall the index shows nothing. `make_offline`
rewrites every page of a built site in place:

- every `<script>` goes (the pages need none once the tables are static) and every stylesheet,
  image or CSS `url()` on another host goes; a small stylesheet is inlined instead;
- the tables the index built with bootstrap-table are written out as plain HTML tables, each row
  linking its validation result or suite page;
- Font Awesome's status icons become the words "passed" / "failed";
- GX's "N unexpected values found. ≈P% of T total rows." is rewritten where P is not a share of T:
  a conditional check (a label check applies to its task type's rows only) counts its percentage
  over the rows it applies to, so the sentence names those rows.
"""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path
from typing import Any

STYLE = """<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1em 2em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.text-danger, .ge-failed { color: #b00020; }
.text-success, .ge-passed { color: #1b7a2f; }
.badge { display: inline-block; padding: 0 .4em; border-radius: .3em; background: #eee; }
.alert { padding: .5em 1em; background: #f3f3f3; border: 1px solid #ddd; margin: .5em 0; }
.card { border: 1px solid #ddd; border-radius: .3em; padding: .5em 1em; margin: .5em 0; }
.cooltip .top { display: none; }
nav, .navbar { margin-bottom: 1em; }
</style>"""

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S | re.I)
_BUTTON = re.compile(r"<button\b[^>]*\bonclick=.*?</button>", re.S | re.I)  # script-driven filters
_REMOTE_LINK = re.compile(r"<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>", re.I)
_REMOTE_IMG = re.compile(r"<img\b[^>]*\bsrc=[\"']?(?:https?:)?//[^>]*?(?:\balt=\"([^\"]*)\")?[^>]*/?>", re.S | re.I)
_REMOTE_CSS_URL = re.compile(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)", re.I)
_ICONS = {
    re.compile(r"<i\b[^>]*\bfa-check-circle\b[^>]*>\s*</i>"): '<span class="ge-passed">passed</span>',
    re.compile(r"<i\b[^>]*\bfa-times\b[^>]*>\s*</i>"): '<span class="ge-failed">failed</span>',
}
_TABLE_SCRIPT = re.compile(
    r"\$\('#(?P<id>[\w-]+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*columns:\s*(?P<columns>\[.*?\]),"
    r"\s*data:\s*(?P<data>\[.*?\]),\s*(?:toolbar|\})",
    re.S,
)
_UNEXPECTED = re.compile(
    r"(?P<count>[\d,]+) unexpected values found\. ≈(?P<percent>[\d.e+-]+)% of (?P<total>[\d,]+) total rows\.")
# Where an asset of a page may name another host: what the test asserts is gone.
REMOTE_ASSET = re.compile(r"""(?:\bsrc=|<link\b[^>]*\bhref=|url\()\s*['"]?(?:https?:)?//""", re.I)


def make_offline(docs_dir: Path, results: list[dict[str, Any] | None]) -> None:
    """Rewrite the Data Docs site under `docs_dir` in place to render with no network. `results`
    are the GX validation results (JSON dicts) the site shows: they give the rows each check applied to."""
    checked = _rows_checked(results)
    for css in docs_dir.rglob("*.css"):
        css.write_text(_REMOTE_CSS_URL.sub("none", css.read_text(encoding="utf-8")), encoding="utf-8")
    for page in docs_dir.rglob("*.html"):
        page.write_text(offline_page(page.read_text(encoding="utf-8"), checked), encoding="utf-8")


def offline_page(text: str, checked: dict[tuple[str, str, str], int] | None = None) -> str:
    """One page made self-contained (see the module docstring)."""
    tables = {m["id"]: _static_table(ast.literal_eval(m["columns"]), ast.literal_eval(m["data"]))
              for m in _TABLE_SCRIPT.finditer(text)}
    for table_id, table in tables.items():
        empty = re.compile(rf"<table\b[^>]*\bid=\"{re.escape(table_id)}\"[^>]*>\s*</table>")
        text = empty.sub(table.replace("\\", "\\\\"), text, count=1)
    text = _SCRIPT.sub("", text)
    text = _BUTTON.sub("", text)
    text = _REMOTE_LINK.sub("", text)
    text = _REMOTE_IMG.sub(lambda m: html.escape(m.group(1) or ""), text)
    text = _REMOTE_CSS_URL.sub("none", text)
    for icon, words in _ICONS.items():
        text = icon.sub(words, text)
    text = _UNEXPECTED.sub(lambda m: _unexpected_sentence(m, checked or {}), text)
    return text.replace("</head>", STYLE + "\n</head>", 1)


def _static_table(columns: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The table bootstrap-table would have drawn, as HTML: one column per GX column, the first
    cell of each row a link to the row's page."""
    head = "".join(f"<th>{html.escape(str(c.get('title', c['field'])))}</th>" for c in columns)
    body = []
    for row in rows:
        link = row.get("_table_row_link_path")
        cells = []
        for i, column in enumerate(columns):
            field = column["field"]
            value = str(row.get(field, ""))
            if field == "validation_success":
                status = row.get("_validation_success_text", "")
                kind = "ge-passed" if status == "Success" else "ge-failed"
                cell = f'<span class="{kind}">{html.escape(status)}</span>'
            elif "<a " in value:
                cell = value  # GX's own link (to the suite's page)
            elif "<" in value:
                cell = html.escape(str(row.get(f"_{field}_sort", "")))
            else:
                cell = html.escape(value)
            if i == 0 and link and "<a " not in cell:
                cell = f'<a href="{html.escape(link)}">{cell}</a>'
            cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="ge-static-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _rows_checked(results: list[dict[str, Any] | None]) -> dict[tuple[str, str, str], int]:
    """(count, percent, total) as GX prints them -> rows the check applied to, for every check
    whose percentage is not of all rows (it skips nulls: rows outside its task type)."""
    from great_expectations.render.util import num_to_str

    checked = {}
    for suite_result in results:
        for result in (suite_result or {}).get("results", []):
            observed = result.get("result") or {}
            if not observed.get("unexpected_count") or not observed.get("missing_count"):
                continue
            key = (num_to_str(observed["unexpected_count"], use_locale=True, precision=20),
                   num_to_str(observed["unexpected_percent"], precision=4).lstrip("≈"),
                   num_to_str(observed["element_count"], use_locale=True, precision=20))
            checked[key] = observed["element_count"] - observed["missing_count"]
    return checked


def _unexpected_sentence(match: re.Match, checked: dict[tuple[str, str, str], int]) -> str:
    count, percent, total = match["count"], match["percent"], match["total"]
    values = "value" if count == "1" else "values"
    applied = checked.get((count, percent, total))
    if applied is None:  # the percentage is of every row
        return f"{count} unexpected {values} found: ≈{percent}% of all {total} rows."
    return (f"{count} unexpected {values} found: ≈{percent}% of the {applied:,} rows this check applies to "
            f"(it does not apply to the other {int(total.replace(',', '')) - applied:,} of the {total} rows).")
