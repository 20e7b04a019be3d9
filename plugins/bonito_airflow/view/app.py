"""The Dataset view's FastAPI app, mounted on the api-server at URL_PREFIX by the plugin.

Routes (all GET, HTML unless noted; every one requires a signed-in Airflow user allowed to read the
DAG's runs, else 401/403):

- `/dags/{dag_id}/runs/{run_id}`: the run's page: the cause of a failure, the summary, the quality
  report with its plots, samples per task type (answer span marked), quarantined rows, dropped
  generations, rejects, and links to the Data Docs, the report and the published dataset.
- `/dags/{dag_id}/runs/{run_id}/tasks/{task_id}`: the same page at the task's section (the
  task-instance tab).
- `/dags/{dag_id}/runs/{run_id}/rows/{table}?offset=&limit=&value=`: one page of a table.
- `/dags/{dag_id}/runs/{run_id}/files/{path}`: a file of the run's folder (Data Docs, plots, the
  report); a path outside the run's folder is refused.
- `/dags/{dag_id}/runs/{run_id}/summary.json` (JSON): the run summary.
- `/dags/{dag_id}/tasks/{task_id}/runbook`: the task's runbook (doc_md), rendered.

Reads are paged (bonito_tasks.browse): a page never loads a whole table.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import posixpath
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bonito_airflow.view.data import RunInfo, ViewProblem, load_run, open_run_store, task_runbook, unreachable
from bonito_airflow.view.urls import URL_PREFIX, run_path

log = logging.getLogger(__name__)



def visible(value: Any) -> Any:
    """What a page shows of a value: a string's control characters as visible symbols (U+0001 as
    '␁', DEL as '␡', C1 controls as '⟨U+0085⟩'), and the characters that reorder or hide text
    (bidirectional overrides, embeddings and isolates, marks, zero-width characters) as
    '⟨U+202E⟩', so a cell shows what it holds; tabs and line breaks stay. Applied to every
    `{{ ... }}` of the templates, before escaping; markup the view built itself is left alone."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return value.translate(_VISIBLE)
    return value


_HIDDEN = [0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2060, 0x2065),
           *range(0x2066, 0x206A), 0xFEFF]
_VISIBLE = ({c: chr(0x2400 + c) for c in range(32) if c not in (9, 10, 13)} | {0x7F: "\u2421"}
            | {c: f"⟨U+{c:04X}⟩" for c in (*range(0x80, 0xA0), *_HIDDEN)})

TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(default=True, default_for_string=True), finalize=visible)
TASK_SECTIONS = {"extract": "rejects", "chunk": "summary", "generate": "dropped", "validate_shard": "quarantine",
                 "validate": "quality", "compare": "drift",
                 "publish": "published", "update_ledger": "published", "summarize": "summary"}
SAMPLES_PER_TASK_TYPE = 3
PREVIEW_ROWS = 5
# What the files route serves, by suffix: reports, Data Docs and plots; not the data itself (Parquet).
SERVED_SUFFIXES = {".html", ".css", ".js", ".json", ".svg", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".md",
                   ".txt", ".woff", ".woff2", ".ttf", ".eot", ".ico"}
# Files from the store are data, not this app: in a sandbox (an opaque origin), so a script in them
# cannot act as the signed-in user.
FILE_HEADERS = {"Content-Security-Policy": "sandbox allow-scripts allow-popups; frame-ancestors 'self'",
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN"}
# The view's own pages run no script at all; their one stylesheet carries the response's nonce; only
# the Airflow UI (same origin: its Dataset tab) may frame them.
PAGE_CSP = ("default-src 'none'; script-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'self'")
PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "X-Frame-Options": "SAMEORIGIN",
                "Referrer-Policy": "same-origin"}


async def authorized_reader(request: Request) -> Any:
    """A FastAPI dependency: the signed-in Airflow user (JWT from the Authorization header or the UI's
    cookie, checked by the auth manager: 401 without one, 403 for an invalid one), allowed to read the
    runs of the DAG in the path (403 otherwise)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    user = await get_user(request, None, await bearer_scheme(request))
    dag_id = request.path_params.get("dag_id")
    allowed = await run_in_threadpool(  # an auth manager may ask its database
        get_auth_manager().is_authorized_dag, method="GET", access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=dag_id), user=user)
    if not allowed:
        raise StarletteHTTPException(403, f"You may not read the runs of DAG {dag_id!r}.")
    return user


def create_app() -> FastAPI:
    app = FastAPI(title="Bonito Dataset view", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {401: "Sign in first", 403: "Not allowed", 404: "Not found"}
        detail = str(exc.detail)
        if exc.status_code == 401:
            detail = (f"{detail}. Sign in to Airflow (the view uses the UI's session), then open this page "
                      "again.")
        return _page("error.html", exc.status_code, title=titles.get(exc.status_code, "Error"), detail=detail,
                     login=exc.status_code == 401)

    @app.exception_handler(ViewProblem)
    async def problem(request: Request, exc: ViewProblem) -> Response:
        return _page("error.html", exc.status, title=exc.title, detail=exc.detail)

    reader = [Depends(authorized_reader)]

    @app.get("/dags/{dag_id}/runs/{run_id}", dependencies=reader, response_class=HTMLResponse)
    def run_page(dag_id: str, run_id: str) -> Response:
        info = load_run(dag_id, run_id)
        store = open_run_store(info)
        started = time.perf_counter()
        context = _guarded(info, lambda: run_context(store, info))
        context["elapsed_ms"] = round((time.perf_counter() - started) * 1000)
        return _page("run.html", 200, **context)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", dependencies=reader)
    def task_page(dag_id: str, run_id: str, task_id: str) -> Response:
        section = TASK_SECTIONS.get(task_id, "summary")
        return RedirectResponse(f"{_root()}{run_path(dag_id, run_id)}#{section}", status_code=307)

    @app.get("/dags/{dag_id}/runs/{run_id}/rows/{table}", dependencies=reader, response_class=HTMLResponse)
    def rows_page(dag_id: str, run_id: str, table: str, offset: int = 0, limit: int = 20,
                  value: str | None = None) -> Response:
        from bonito_tasks import browse

        if table not in browse.TABLE_STAGES:
            raise ViewProblem(404, "No such table", f"Tables: {', '.join(browse.TABLE_STAGES)}.")
        info = load_run(dag_id, run_id)
        store = open_run_store(info)
        page = _guarded(info, lambda: browse.read_page(
            store, info.run, table, offset=offset, limit=limit, value=value or None,
            known_counts=_recorded_counts(_written_summary(store, info), table)))
        return _page("rows.html", 200, info=info, page=page, rows=[_display(table, r) for r in page.rows],
                     base=_base(info))

    @app.get("/dags/{dag_id}/runs/{run_id}/summary.json", dependencies=reader)
    def summary_json(dag_id: str, run_id: str) -> Response:
        info = load_run(dag_id, run_id)
        store = open_run_store(info)
        summary = _guarded(info, lambda: _summary(store, info))
        return JSONResponse(summary.model_dump(mode="json"),
                            headers=PAGE_HEADERS | {"Content-Security-Policy": "default-src 'none'; "
                                                                               "frame-ancestors 'self'"})

    @app.get("/dags/{dag_id}/runs/{run_id}/files/{path:path}", dependencies=reader)
    def run_file(dag_id: str, run_id: str, path: str) -> Response:
        from bonito_tasks.store import run_prefix

        relative = safe_relative_path(path)
        info = load_run(dag_id, run_id)
        store = open_run_store(info)
        key = f"{run_prefix(info.run)}/{relative}"
        _inside_run_folder(store, info, key)
        try:
            if not store.exists(key):
                raise ViewProblem(404, "No such file", f"The run's folder holds no {relative}.")
            data = store.read_bytes(key)
        except ViewProblem:
            raise
        except Exception as err:
            raise unreachable(info.store_uri, err) from err
        media_type = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/json", "image/svg+xml"):
            media_type += "; charset=utf-8"
        return Response(data, media_type=media_type, headers=FILE_HEADERS)

    @app.get("/dags/{dag_id}/tasks/{task_id}/runbook", dependencies=reader, response_class=HTMLResponse)
    def runbook(dag_id: str, task_id: str) -> Response:
        doc = task_runbook(dag_id, task_id)
        return _page("runbook.html", 200, dag_id=dag_id, task_id=task_id, html=_markdown(doc))

    return app


def _root() -> str:
    """The api-server's base path ("" at the root): the UI, and so this app, may live under a sub-path."""
    from airflow.configuration import conf

    from bonito_airflow.view.urls import base_path

    return base_path(conf.get("api", "base_url", fallback=""))


def safe_relative_path(path: str) -> str:
    """`path` as a key relative to the run's folder; 403 for anything that could leave it (absolute,
    `..`, backslashes, control characters) or that the view does not serve."""
    if (not path or path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path)
            or any(part in ("", ".", "..") for part in path.split("/"))):
        raise ViewProblem(403, "Path refused", f"{path!r} is not a path inside the run's folder.")
    normal = posixpath.normpath(path)
    if normal != path or normal.startswith(".."):
        raise ViewProblem(403, "Path refused", f"{path!r} is not a path inside the run's folder.")
    if posixpath.splitext(normal)[1].lower() not in SERVED_SUFFIXES:
        raise ViewProblem(403, "File type refused",
                          f"The view serves reports, Data Docs and plots, not {posixpath.basename(normal)!r}.")
    return normal


def _inside_run_folder(store, info: RunInfo, key: str) -> None:
    """A local store's links are followed: the real file must be inside the real run folder too."""
    from bonito_tasks.store import LocalStore, run_prefix

    if isinstance(store, LocalStore):
        folder = (store.root / run_prefix(info.run)).resolve()
        target = (store.root / key).resolve()
        if folder not in target.parents:
            raise ViewProblem(403, "Path refused", "That file is outside the run's folder.")


def _guarded(info: RunInfo, read):
    """Run a read of the store; an older manifest or an unreachable store becomes a readable page."""
    from bonito_tasks.store import StoreError

    try:
        return read()
    except ViewProblem:
        raise
    except ValidationError as err:
        raise ViewProblem(409, "Written by another version",
                          f"A file of this run does not match this version's contracts ({err.error_count()} "
                          "field error(s)); it was written by an older or newer bonito-etl. The run page lists "
                          "what can still be read.") from err
    except (OSError, StoreError) as err:
        raise unreachable(info.store_uri, err) from err
    except Exception as err:
        if type(err).__module__.startswith(("botocore", "boto3", "urllib3")):
            raise unreachable(info.store_uri, err) from err
        raise


def _written_summary(store, info: RunInfo):
    """The summary the summarize task wrote once the run ended (one read); None for a run in
    progress, or a summary this version cannot read."""
    from bonito_tasks.contracts import RunSummary
    from bonito_tasks.store import run_prefix
    from bonito_tasks.summary import SUMMARY_FILE

    key = f"{run_prefix(info.run)}/{SUMMARY_FILE}"
    if not (info.finished and store.exists(key)):
        return None
    try:
        return RunSummary.model_validate_json(store.read_bytes(key))
    except ValidationError:
        log.info("summary.json of %s is from another version; building the summary", info.run.run_id)
        return None


def _summary(store, info: RunInfo):
    """The run summary: the one the summarize task wrote once the run ended (one read), else built
    from the manifests now (a run in progress, or a summary this version cannot read)."""
    from bonito_tasks.config import RunConfig
    from bonito_tasks.summary import run_summary

    if (written := _written_summary(store, info)) is not None:
        return written
    try:
        config = RunConfig(**info.params)
    except (ValidationError, TypeError):  # params of an older DAG version: the summary needs two fields
        config = RunConfig.model_construct(**{k: v for k, v in info.params.items() if k in RunConfig.model_fields})
    return run_summary(store, info.run, config, write=False)


def run_context(store, info: RunInfo) -> dict[str, Any]:
    """Everything run.html shows."""
    from bonito_tasks import browse
    from bonito_tasks.contracts import QualitySummary
    from bonito_tasks.store import run_prefix

    summary, problems = None, []
    try:
        summary = _summary(store, info)
    except ValidationError:
        problems = browse.manifest_problems(store, info.run)
    prefix = run_prefix(info.run)
    quality = None
    quality_key = f"{prefix}/validate/report/summary.json"
    if store.exists(quality_key):
        try:
            quality = QualitySummary.model_validate_json(store.read_bytes(quality_key))
        except ValidationError:
            quality = None
    validated = summary.validated if summary else None
    expectations = list(validated.expectations) if validated else []
    if summary and summary.cause and summary.cause.stage == "validate":
        expectations = summary.cause.failed_expectations
    files = {name: f"validate/{name}" for name in ("data_docs/index.html", "report/quality.html")
             if store.exists(f"{prefix}/validate/{name}")}
    plots = [f"validate/report/{name}" for name in ("output_tokens.svg", "labels.svg", "failures.svg")
             if store.exists(f"{prefix}/validate/report/{name}")]
    samples = browse.facet_samples(store, info.run, "examples", SAMPLES_PER_TASK_TYPE)
    quarantine = browse.read_page(store, info.run, "quarantine", limit=PREVIEW_ROWS)
    dropped = browse.read_page(store, info.run, "dropped_generations", limit=PREVIEW_ROWS,
                               known_counts=_recorded_counts(summary, "dropped_generations"))
    rejects = browse.read_page(store, info.run, "rejects", limit=PREVIEW_ROWS,
                               known_counts=_recorded_counts(summary, "rejects"))
    return {
        "info": info,
        "base": _base(info),
        "summary": summary,
        "problems": problems,
        "quality": quality,
        "expectations": expectations,
        "files": files,
        "plots": plots,
        "drift": browse.drift(store, info.run),
        "samples": {value: (count, [_display("examples", r) for r in rows])
                    for value, (count, rows) in samples.rows.items()},
        "samples_stage": samples.stage,
        "quarantine": quarantine,
        "quarantine_rows": [_display("quarantine", r) for r in quarantine.rows],
        "dropped": dropped,
        "dropped_rows": [_display("dropped_generations", r) for r in dropped.rows],
        "rejects": rejects,
        "rejects_rows": [_display("rejects", r) for r in rejects.rows],
        "runbook_base": f"{_root()}{URL_PREFIX}/dags/{quote(info.run.dag_id, safe='')}/tasks",
    }


def _recorded_counts(summary, table: str) -> dict[str, int] | None:
    """Rows of `table` by reason as the committed stage recorded them (a preview then reads only the
    first parts, not every generate shard); None where they may not cover every part in the folder
    (a stage not committed in full, or metrics of an older version that did not record them)."""
    if summary is None:
        return None
    if table == "dropped_generations" and (g := summary.generated) and g.shards_committed == g.shards:
        counts, rows = g.dropped_by_reason, g.dropped_generations
    elif table == "rejects" and (e := summary.extracted):
        counts, rows = e.rejects_by_reason, e.rejects
    else:
        return None
    return counts if sum(counts.values()) == rows else None


def _display(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row as the templates show it: the input split around the answer span, lists joined."""
    from bonito_tasks import browse

    shown = dict(row)
    if table in ("examples", "quarantine") and "input" in row:
        span = browse.answer_span(row.get("task_type", ""), row["input"], row.get("output", ""))
        shown["input_parts"] = ((row["input"][:span[0]], row["input"][span[0]:span[1]], row["input"][span[1]:])
                                if span else (row["input"], "", ""))
    return shown


def _base(info: RunInfo) -> str:
    return _root() + run_path(info.run.dag_id, info.run.run_id)


def _markdown(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # markdown-it-py comes with Airflow (rich); a plain page otherwise
        import html

        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _page(template: str, status: int, **context: Any) -> HTMLResponse:
    context.setdefault("json", json)
    nonce = secrets.token_urlsafe(16)
    headers = PAGE_HEADERS | {"Content-Security-Policy": PAGE_CSP.format(nonce=nonce)}
    return HTMLResponse(TEMPLATES.get_template(template).render(csp_nonce=nonce, **context), status_code=status,
                        headers=headers)


app = create_app()
