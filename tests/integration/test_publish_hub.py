"""Publish stage against a loopback stand-in for the Hugging Face Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import traceback

import pytest

from bonito_tasks.publish import PublishError, RetryPolicy, publish
from bonito_tasks.store import LocalStore, StageWriter
from tests.hub_server import HubServer
from tests.unit.test_publish import RUN, make_config, make_inputs

REPO = "bonito-team/contracts-qa"
FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5)


@pytest.fixture
def hub(monkeypatch):
    # tests/conftest.py sets HF_HUB_OFFLINE=1, which huggingface_hub read at import: go online, to loopback only.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with HubServer() as server:
        yield server


@pytest.fixture
def setup(tmp_path):
    store = LocalStore(tmp_path / "store")
    return store, make_config(tmp_path, hub_repo_id=REPO), make_inputs(store)


def run_publish(hub, store, config, inputs, token=None, retry=FAST):
    return publish(store, RUN, config, *inputs, token=token or hub.token, endpoint=hub.url, retry=retry)


def publish_commits(hub) -> list:
    """Commits on main after the repo's initial one, newest first."""
    return hub.repo(REPO).history()[:-1]


def test_upload_creates_private_repo_with_one_commit_of_all_files(hub, setup):
    store, config, inputs = setup
    manifest = run_publish(hub, store, config, inputs)

    repo = hub.repo(REPO)
    assert repo.private
    [commit] = publish_commits(hub)
    dataset_key = store.key(manifest.metrics["dataset_uri"])
    assert commit.files == {".gitattributes": commit.files[".gitattributes"]} | {
        path: store.read_bytes(f"{dataset_key}/{path}") for path in manifest.metrics["files"]
    }
    assert manifest.metrics["hub_url"] == f"{hub.url}/datasets/{REPO}"
    assert manifest.metrics["hub_commit_sha"] == commit.oid and manifest.metrics["hub_new_commit"] is True
    assert RUN.run_url in commit.description


def test_endpoint_comes_from_hf_endpoint(hub, setup, monkeypatch):
    store, config, inputs = setup
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    publish(store, RUN, config, *inputs, token=hub.token, retry=FAST)
    assert len(publish_commits(hub)) == 1


def test_published_repo_loads_with_datasets(hub, setup, tmp_path):
    store, config, inputs = setup
    run_publish(hub, store, config, inputs)
    # A fresh interpreter: HF_ENDPOINT must be set before huggingface_hub/datasets are imported.
    script = textwrap.dedent(
        f"""
        import json, datasets
        every = datasets.load_dataset({REPO!r}, split="train")
        qa = datasets.load_dataset({REPO!r}, name="qa", split="train")
        print(json.dumps({{"all": every.num_rows, "qa": sorted(set(qa["task_type"])), "qa_rows": qa.num_rows}}))
        """
    )
    env = os.environ | {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"all": 6, "qa": ["qa"], "qa_rows": 3}


def test_republish_makes_no_new_commit(hub, setup):
    store, config, inputs = setup
    first = run_publish(hub, store, config, inputs)

    requests_before = len(hub.requests)
    assert run_publish(hub, store, config, inputs) == first  # committed stage: reused, Hub untouched
    assert len(hub.requests) == requests_before

    store.delete_prefix(store.key(first.uri).rsplit("/", 1)[0])  # lost manifest: the stage is redone
    again = run_publish(hub, store, config, inputs)
    assert len(publish_commits(hub)) == 1
    assert again.metrics["hub_commit_sha"] == first.metrics["hub_commit_sha"]
    assert again.metrics["hub_new_commit"] is False


def test_stale_shards_of_an_earlier_publish_are_removed(hub, setup, tmp_path):
    store, config, inputs = setup
    run_publish(hub, store, config, inputs)
    other_store = LocalStore(tmp_path / "other")
    run_publish(hub, other_store, config, make_inputs(other_store, task_types=("exqa",)))
    [newest, _] = publish_commits(hub)
    assert sorted(p for p in newest.files if p.startswith("data/")) == ["data/exqa/train-00000-of-00001.parquet"]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_commit_failures_are_retried(hub, setup, status):
    store, config, inputs = setup
    hub.fail("POST", r"/commit/", status=status, times=2)
    manifest = run_publish(hub, store, config, inputs)
    assert hub.count("POST", r"/commit/") == 3
    [commit] = publish_commits(hub)
    assert manifest.metrics["hub_commit_sha"] == commit.oid


def test_timed_out_commit_is_retried_without_a_duplicate(hub, setup):
    store, config, inputs = setup
    hub.stall("POST", r"/commit/", seconds=1.0)  # the server applies it after the client gave up
    run_publish(hub, store, config, inputs, retry=RetryPolicy(attempts=3, base_delay_s=0.01, timeout_s=0.3))
    hub.wait_idle()
    assert hub.count("POST", r"/commit/") == 2
    assert len(publish_commits(hub)) == 1  # the stalled commit lost the race on its parent commit


def test_persistent_failure_leaves_repo_and_store_without_the_run(hub, setup):
    store, config, inputs = setup
    hub.fail("POST", r"/commit/", status=500, times=100)
    with pytest.raises(PublishError, match="failed"):
        run_publish(hub, store, config, inputs)
    assert hub.count("POST", r"/commit/") == FAST.attempts
    assert publish_commits(hub) == []
    assert list(hub.repo(REPO).resolve("main").files) == [".gitattributes"]
    assert StageWriter(store, RUN, "publish").committed() is None


@pytest.mark.parametrize("kind", ["invalid", "read-only"])
def test_token_without_write_access_fails_at_once_without_leaking(hub, setup, caplog, tmp_path, kind):
    store, config, inputs = setup
    if kind == "read-only":  # the repo exists with other content: the commit is what gets refused
        first = LocalStore(tmp_path / "first")
        run_publish(hub, first, config, make_inputs(first, task_types=("exqa",)))
    token = "hf_SECRETsecret123" if kind == "invalid" else hub.read_token
    requests_before = len(hub.requests)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PublishError, match=f"lacks write access to dataset repo {REPO}") as raised:
        run_publish(hub, store, config, inputs, token=token)
    sent = hub.requests[requests_before:]
    assert len(sent) == len(set(sent))  # nothing retried
    shown = "".join(traceback.format_exception(raised.value)) + caplog.text
    assert token not in shown
