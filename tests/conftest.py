"""Shared fixtures. Heavy ones (vLLM engine, S3 server, Airflow DB) are session-scoped."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"
SAMPLE_DOCS = ASSETS / "sample_docs"
TINY_MODEL = Path(os.environ.get("BONITO_TEST_MODEL", ASSETS / "tiny-bonito"))

sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "dags")]
# Airflow reads its configuration at import time: point it at a throwaway home before any test imports it.
from bonito_dev.local import configure  # noqa: E402

AIRFLOW_HOME = Path(os.environ.get("BONITO_TEST_AIRFLOW_HOME", f"/tmp/bonito-etl-tests-{os.getpid()}"))
configure(AIRFLOW_HOME)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto in server mode) on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; yields (bucket name, boto3 client kwargs)."""
    import boto3

    kwargs = {"endpoint_url": s3_endpoint, "region_name": "us-east-1",
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    name = f"bucket-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", **kwargs).create_bucket(Bucket=name)
    return name, kwargs


@pytest.fixture
def hub(monkeypatch):
    """The Hub stand-in on loopback (tests/hub_server.py). HF_HUB_OFFLINE=1 (set above) was read by
    huggingface_hub at import: it goes online, to loopback only."""
    from tests.hub_server import HubServer

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_env(hub, monkeypatch):
    """The Hub stand-in, with HF_TOKEN and HF_ENDPOINT set as an on-call's shell has them."""
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """The same tests on both stores: a local folder and S3 (moto in server mode on loopback)."""
    from bonito_tasks.store import LocalStore, open_store

    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket, kwargs = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/artifacts", **kwargs)


def make_config(tmp_path: Path, **overrides):
    from bonito_tasks.config import RunConfig

    values = dict(source=str(SAMPLE_DOCS), store=str(tmp_path / "store"), model_id=str(TINY_MODEL),
                  dtype="float32", task_types=["exqa"])
    values.update(overrides)
    return RunConfig(**values)


def work_stage(name: str, work, *, reads: tuple[str, ...] = (), fields: frozenset[str] = frozenset(),
               resumable: bool = False, check=None):
    """A Stage subclass doing `work(writer)` (and `check(writer)`), for tests of the harness."""
    from bonito_tasks.contracts import StageName
    from bonito_tasks.stage import Stage

    return type(f"{name.title()}Work", (Stage,), {
        "name": StageName(name), "reads": tuple(StageName(r) for r in reads), "config_fields": frozenset(fields),
        "resumable": resumable, "work": lambda self, writer: work(writer),
        "check": (lambda self, writer: check(writer)) if check else Stage.check,
    })


@pytest.fixture(scope="session")
def vllm_engine():
    """One real vLLM engine on the tiny model, shared by every test that generates (start: ~20 s)."""
    from bonito_tasks.config import RunConfig
    from bonito_tasks.generate.engine import VllmEngine

    config = RunConfig(source=str(SAMPLE_DOCS), store="/unused", model_id=str(TINY_MODEL), dtype="float32")
    engine = VllmEngine(config).load()
    yield engine
    engine.unload()


def commit_chunks(store, run, rows: list[dict]):
    """A committed chunk stage holding `rows` (optional CHUNKS fields default to empty)."""
    import pyarrow as pa

    from bonito_tasks.contracts import CHUNKS, ChunkMetrics
    from bonito_tasks.stage import StageWriter

    defaults = {"page": None, "also_in": []}
    writer = StageWriter(store, run, "chunk")
    writer.begin()
    writer.add("chunks", pa.Table.from_pylist([{**defaults, **row} for row in rows], CHUNKS))
    return writer.commit(metrics=ChunkMetrics(chunks=len(rows)))


def paragraph_chunks(store, run, n: int):
    """A chunk stage of the first n long paragraphs of the bundled Apache-2.0 text; returns
    (manifest, rows)."""
    from bonito_tasks.contracts import sha256_hex

    text = (SAMPLE_DOCS / "apache-2.0.txt").read_text()
    paragraphs = [p for p in text.split("\n\n") if len(p.split()) > 20][:n]
    rows = []
    for i, p in enumerate(paragraphs):
        start = text.index(p)
        rows.append({"chunk_id": sha256_hex(f"doc:{start}"), "doc_id": "doc", "chunk_index": i, "char_start": start,
                     "char_end": start + len(p), "n_tokens": 1, "text": p})
    return commit_chunks(store, run, rows), rows


@pytest.fixture(autouse=True)
def allow_any_location(monkeypatch):
    """Tests run their stages on folders of their own: the deployment's allowed locations
    (bonito_airflow.access) are `*` here; tests of those settings set their own."""
    for name in ("BONITO_ALLOWED_SOURCES", "BONITO_ALLOWED_STORES", "BONITO_ALLOWED_EXPORTS"):
        monkeypatch.setenv(name, "*")
    monkeypatch.delenv("AIRFLOW_VAR_BONITO_ALLOWED_LOCATIONS", raising=False)


@pytest.fixture
def alert_webhook(monkeypatch):
    """A loopback webhook receiver, configured as connection `bonito_alerts`."""
    import json

    from tests.webhook_server import WebhookReceiver

    with WebhookReceiver() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_BONITO_ALERTS", json.dumps({"conn_type": "http", "host": receiver.url}))
        yield receiver


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which tags node ids with their group
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`: -n 3 --dist loadgroup), the tests that share an expensive
    fixture run on one worker: every vLLM test shares one engine (and two engines never compile at
    once), the deployment tests share one Airflow stack. A test that names its own xdist_group keeps
    it (test_make_ui.py: its own local Airflow, beside the stack). The rest spread over the workers."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("deployment"):
            item.add_marker(pytest.mark.xdist_group("deployment"))
        elif item.get_closest_marker("vllm"):
            item.add_marker(pytest.mark.xdist_group("vllm"))
