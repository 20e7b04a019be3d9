"""Publish stage against a loopback stand-in for the Hugging Face Hub (tests/hub_server.py): overwrite,
append and pull-request modes, retries and atomicity under injected faults."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import traceback

import pytest

from bonito_tasks.errors import PermanentFailure
from bonito_tasks.publish import PublishError, PublishRejected, publish
from bonito_tasks.retry import RetryPolicy
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from tests.unit.test_publish import RUN, front_matter, make_config, make_inputs

REPO = "bonito-team/contracts-qa"
FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5)


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
    dataset_key = store.key(manifest.metrics.dataset_uri)
    assert commit.files == {".gitattributes": commit.files[".gitattributes"]} | {
        path: store.read_bytes(f"{dataset_key}/{path}") for path in manifest.metrics.files
    }
    assert manifest.metrics.hub_url == f"{hub.url}/datasets/{REPO}"
    assert manifest.metrics.hub_commit_sha == commit.oid and manifest.metrics.hub_new_commit is True
    assert RUN.run_url in commit.description
    assert not any(hub.token.encode() in data for data in commit.files.values())  # no secret in any file


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
    assert again.metrics.hub_commit_sha == first.metrics.hub_commit_sha
    assert again.metrics.hub_new_commit is False


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
    assert manifest.metrics.hub_commit_sha == commit.oid


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
    with pytest.raises(PublishError, match="failed") as raised:
        run_publish(hub, store, config, inputs)
    assert not isinstance(raised.value, PermanentFailure)  # transient: Airflow may retry the task later
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
    with pytest.raises(PublishRejected, match=f"lacks write access to dataset repo {REPO}") as raised:
        run_publish(hub, store, config, inputs, token=token)
    assert isinstance(raised.value, PermanentFailure)  # Airflow fails the task without retries
    sent = hub.requests[requests_before:]
    assert len(sent) == len(set(sent))  # nothing retried
    shown = "".join(traceback.format_exception(raised.value)) + caplog.text
    assert token not in shown


# Append: nightly runs add their rows.


def nightly(hub, tmp_path, name: str, rows, id_salt: str = "", retry=FAST):
    """One nightly append run with its own store: (validated rows, publish manifest, (store, run, config, inputs))."""
    run = RUN.model_copy(update={"run_id": f"scheduled__{name}"})
    store = LocalStore(tmp_path / name)
    config = make_config(tmp_path, hub_repo_id=REPO, publish_mode="append")
    inputs = make_inputs(store, run=run, rows=rows, id_salt=id_salt)
    manifest = publish(store, run, config, *inputs, token=hub.token, endpoint=hub.url, retry=retry)
    return inputs[0].rows_of("examples"), manifest, (store, run, config, inputs)


def main_rows(hub) -> dict[str, int]:
    """Rows per task type in the parquet shards on main, read back from the server."""
    import pyarrow.parquet as pq

    files = hub.repo(REPO).resolve("main").files
    counts: dict[str, int] = {}
    for path, data in files.items():
        if path.startswith("data/") and path.endswith(".parquet"):  # not the index under .bonito/
            for task_type in pq.read_table(io.BytesIO(data)).column("task_type").to_pylist():
                counts[task_type] = counts.get(task_type, 0) + 1
    return counts


def card_counts(card: bytes) -> dict[str, int]:
    meta = front_matter(card.decode())
    return {info["config_name"]: info["splits"][0]["num_examples"] for info in meta["dataset_info"]}


def load_rows(hub, tmp_path, revision: str = "main") -> int:
    """Rows of the repo's default config as `datasets.load_dataset` sees them, in a fresh interpreter."""
    script = f"import datasets; print(datasets.load_dataset({REPO!r}, split='train', revision={revision!r}).num_rows)"
    env = os.environ | {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0",
                        "HF_HOME": str(tmp_path / f"hf-{len(hub.requests)}")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.splitlines()[-1])


def test_two_appended_nightly_runs_hold_the_sum_of_their_rows(hub, tmp_path):
    first_rows, first, _ = nightly(hub, tmp_path, "night1", rows=range(0, 3))
    second_rows, second, (store, run, config, inputs) = nightly(hub, tmp_path, "night2", rows=range(3, 5))

    assert (first_rows, second_rows) == (6, 4)
    assert sum(main_rows(hub).values()) == first_rows + second_rows == second.metrics.examples
    assert second.metrics.examples_added == 4 and second.metrics.duplicates_skipped == 0
    files = hub.repo(REPO).resolve("main").files
    assert sorted(p for p in files if p.startswith("data/exqa/")) == [
        "data/exqa/train-scheduled__night1-00000-of-00001.parquet",
        "data/exqa/train-scheduled__night2-00000-of-00001.parquet",
    ]
    assert card_counts(files["README.md"]) == {"default": 10, "exqa": 5, "qa": 5}
    assert b"latest of 2 runs" in files["README.md"]
    assert len(publish_commits(hub)) == 2
    assert load_rows(hub, tmp_path) == 10

    # Re-running publish is a no-op: the committed stage is reused, and with its manifest lost the
    # rebuilt files equal what the repo holds.
    requests_before = len(hub.requests)
    assert publish(store, run, config, *inputs, token=hub.token, endpoint=hub.url, retry=FAST) == second
    assert len(hub.requests) == requests_before
    store.delete_prefix(store.key(second.uri).rsplit("/", 1)[0])
    again = publish(store, run, config, *inputs, token=hub.token, endpoint=hub.url, retry=FAST)
    assert again.metrics.hub_new_commit is False and len(publish_commits(hub)) == 2
    assert again.metrics.hub_commit_sha == second.metrics.hub_commit_sha


def test_append_never_adds_a_row_twice(hub, tmp_path):
    nightly(hub, tmp_path, "night1", rows=range(0, 3))
    _, overlap, _ = nightly(hub, tmp_path, "night2", rows=range(1, 5))  # rows 1, 2 again: same example_id
    assert overlap.metrics.duplicates_skipped == 4 and overlap.metrics.examples_added == 4
    assert main_rows(hub) == {"exqa": 5, "qa": 5}

    # Same (input, output) under new example ids: nothing to add, so no commit at all.
    _, same_text, _ = nightly(hub, tmp_path, "night3", rows=range(0, 5), id_salt="other-lineage")
    assert same_text.metrics.duplicates_skipped == 10 and same_text.metrics.hub_new_commit is False
    assert len(publish_commits(hub)) == 2 and main_rows(hub) == {"exqa": 5, "qa": 5}
    assert card_counts(hub.repo(REPO).resolve("main").files["README.md"])["default"] == 10


def test_append_retried_through_faults_adds_its_rows_once(hub, tmp_path):
    nightly(hub, tmp_path, "night1", rows=range(0, 3))
    hub.fail("POST", r"/commit/", status=503)
    hub.fail("GET", r"/tree/", status=429)
    hub.stall("POST", r"/commit/", seconds=1.0)  # applied after the client gave up
    rows, manifest, _ = nightly(hub, tmp_path, "night2", rows=range(3, 6),
                                retry=RetryPolicy(attempts=5, base_delay_s=0.01, max_delay_s=0.05, timeout_s=0.3))
    hub.wait_idle()
    assert sum(main_rows(hub).values()) == 6 + rows == manifest.metrics.examples == 12
    assert len(publish_commits(hub)) == 2


# Pull requests: "pr" proposes the snapshot for review.


def test_pr_mode_opens_one_pull_request_and_leaves_main_alone(hub, setup, tmp_path):
    store, config, inputs = setup
    config = config.model_copy(update={"publish_mode": "pr"})
    manifest = run_publish(hub, store, config, inputs)

    repo = hub.repo(REPO)
    assert list(repo.resolve("main").files) == [".gitattributes"]
    [pr] = repo.open_pull_requests()
    assert manifest.metrics.hub_pr_url == f"{hub.url}/datasets/{REPO}/discussions/{pr.num}"
    assert manifest.metrics.hub_commit_sha == repo.refs[f"refs/pr/{pr.num}"]
    assert sorted(repo.resolve(f"refs/pr/{pr.num}").files) == [".gitattributes", *manifest.metrics.files]
    assert load_rows(hub, tmp_path, revision=f"refs/pr/{pr.num}") == 6

    store.delete_prefix(store.key(manifest.uri).rsplit("/", 1)[0])  # lost manifest: the open PR is reused
    again = run_publish(hub, store, config, inputs)
    assert len(repo.discussions) == 1 and again.metrics.hub_new_commit is False
    assert again.metrics.hub_pr_url == manifest.metrics.hub_pr_url

    hub.merge(REPO, pr.num)  # a reviewer merges it: main now holds the dataset, publishing again changes nothing
    store.delete_prefix(store.key(manifest.uri).rsplit("/", 1)[0])
    merged = run_publish(hub, store, config, inputs)
    assert len(repo.discussions) == 1 and merged.metrics.hub_commit_sha == repo.refs["main"]
    assert merged.metrics.hub_pr_url is None


def test_timed_out_pr_commit_opens_a_single_pull_request(hub, setup):
    store, config, inputs = setup
    hub.stall("POST", r"/commit/", seconds=1.0)
    run_publish(hub, store, config.model_copy(update={"publish_mode": "pr"}), inputs,
                retry=RetryPolicy(attempts=3, base_delay_s=0.01, timeout_s=0.3))
    hub.wait_idle()
    assert hub.count("POST", r"/commit/") == 2
    [pr] = hub.repo(REPO).open_pull_requests()  # the retry found the PR by its title
    assert len(hub.repo(REPO).history(f"refs/pr/{pr.num}")) == 2  # main's initial commit + one: the stalled one lost


# Honest metrics: what this publish did, also when an answer was lost.


def test_lost_answer_to_the_commit_is_reported_as_this_runs_commit(hub, setup):
    """The Hub applies the commit but the client sees a 502: the retry finds the files on main and
    reports that commit as this run's (it is), not as 'no new commit'."""
    store, config, inputs = setup
    hub.lose_answer("POST", r"/commit/")
    manifest = run_publish(hub, store, config, inputs)
    [commit] = publish_commits(hub)
    assert hub.count("POST", r"/commit/") == 1  # the retry made no second commit
    assert manifest.metrics.hub_commit_sha == commit.oid
    assert manifest.metrics.hub_new_commit is True
    assert manifest.metrics.examples_added == manifest.metrics.examples == 6


def test_lost_answer_to_an_append_commit_counts_the_rows_it_added(hub, tmp_path):
    nightly(hub, tmp_path, "night1", rows=range(0, 3))
    hub.lose_answer("POST", r"/commit/")
    rows, manifest, _ = nightly(hub, tmp_path, "night2", rows=range(3, 5))
    assert len(publish_commits(hub)) == 2 and manifest.metrics.hub_commit_sha == hub.repo(REPO).refs["main"]
    assert manifest.metrics.hub_new_commit is True
    assert manifest.metrics.examples_added == rows == 4 and manifest.metrics.duplicates_skipped == 0
    assert manifest.metrics.examples == 10


def test_lost_answer_to_a_pr_commit_is_reported_as_this_runs_commit(hub, setup):
    store, config, inputs = setup
    hub.lose_answer("POST", r"/commit/")
    manifest = run_publish(hub, store, config.model_copy(update={"publish_mode": "pr"}), inputs)
    [pr] = hub.repo(REPO).open_pull_requests()
    assert manifest.metrics.hub_commit_sha == hub.repo(REPO).refs[f"refs/pr/{pr.num}"]
    assert manifest.metrics.hub_new_commit is True and manifest.metrics.examples_added == 6


def test_identical_files_committed_by_someone_else_are_not_claimed(hub, setup, monkeypatch):
    """This run's commit fails (not applied); before the retry looks, someone else commits the very
    same files under another title. The retry makes no commit and does not claim theirs."""
    from bonito_tasks.publish import hub as hub_module

    store, config, inputs = setup
    first = run_publish(hub, store, config, inputs)
    repo = hub.repo(REPO)
    files = dict(repo.resolve("main").files)
    hub._commit(repo, "revert", "", {".gitattributes": files[".gitattributes"]}, repo.refs["main"])
    store.delete_prefix(store.key(first.uri).rsplit("/", 1)[0])

    hub.fail("POST", r"/commit/", status=502)
    real_head, calls = hub_module._head_creating_repo, []

    def head(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the retry: someone else's upload of the same files got there first
            hub._commit(repo, "manual upload", "", dict(files), repo.refs["main"])
        return real_head(*args, **kwargs)

    monkeypatch.setattr(hub_module, "_head_creating_repo", head)
    manifest = run_publish(hub, store, config, inputs)
    assert repo.history()[0].title == "manual upload" and manifest.metrics.hub_commit_sha == repo.refs["main"]
    assert manifest.metrics.hub_new_commit is False and manifest.metrics.examples_added == 0


def test_republish_of_files_the_repo_holds_adds_nothing(hub, setup):
    store, config, inputs = setup
    first = run_publish(hub, store, config, inputs)
    store.delete_prefix(store.key(first.uri).rsplit("/", 1)[0])  # lost manifest: the stage is redone
    again = run_publish(hub, store, config, inputs)
    assert again.metrics.hub_new_commit is False and again.metrics.examples_added == 0
    assert again.metrics.examples == 6


# Append against the dataset's index (bonito_tasks/publish/history.py).

DATA_DOWNLOADS = r"/resolve/[^/]+/data/"


def test_an_append_reads_the_index_not_the_data_and_commits_only_its_files(hub, tmp_path):
    nightly(hub, tmp_path, "night1", rows=range(0, 3))
    before = dict(hub.repo(REPO).resolve("main").files)
    downloads = hub.count("GET", DATA_DOWNLOADS)
    _, second, _ = nightly(hub, tmp_path, "night2", rows=range(2, 5))  # row 2 again: skipped by its keys

    assert hub.count("GET", DATA_DOWNLOADS) == downloads  # no data shard was read
    after = hub.repo(REPO).resolve("main").files
    assert {p for p in after if after[p] != before.get(p)} == {
        "data/exqa/train-scheduled__night2-00000-of-00001.parquet",
        "data/qa/train-scheduled__night2-00000-of-00001.parquet",
        ".bonito/index/part-scheduled__night2.parquet", ".bonito/stats.json", "README.md"}
    assert second.metrics.duplicates_skipped == 2 and second.metrics.examples_added == 4
    assert second.metrics.examples == 10 and card_counts(after["README.md"]) == {"default": 10, "exqa": 5, "qa": 5}
    stats = json.loads(after[".bonito/stats.json"])
    assert list(stats["runs"]) == ["scheduled__night1", "scheduled__night2"]
    assert load_rows(hub, tmp_path) == 10  # the configs load data/ only, not the index


def test_a_dataset_published_without_an_index_is_indexed_once(hub, tmp_path, caplog):
    store = LocalStore(tmp_path / "first")
    run_publish(hub, store, make_config(tmp_path, hub_repo_id=REPO), make_inputs(store, rows=range(0, 3)))
    assert not any(p.startswith(".bonito/") for p in hub.repo(REPO).resolve("main").files)  # a snapshot publish

    caplog.set_level(logging.INFO, logger="bonito_tasks.publish.layout")
    _, first_append, _ = nightly(hub, tmp_path, "night1", rows=range(2, 4))
    assert "indexing the published dataset once" in caplog.text
    assert first_append.metrics.examples_added == 2 and first_append.metrics.examples == 8
    caplog.clear()
    downloads = hub.count("GET", DATA_DOWNLOADS)
    _, second_append, _ = nightly(hub, tmp_path, "night2", rows=range(0, 5))
    assert "indexing" not in caplog.text and hub.count("GET", DATA_DOWNLOADS) == downloads
    assert second_append.metrics.examples_added == 2 and main_rows(hub) == {"exqa": 5, "qa": 5}

    # A snapshot publish replaces the dataset and its index together: no stale index is left behind.
    run_publish(hub, store, make_config(tmp_path, hub_repo_id=REPO, license="mit"), make_inputs(store, rows=range(1)))
    assert not any(p.startswith(".bonito/") for p in hub.repo(REPO).resolve("main").files)


def test_two_runs_appending_at_once_both_land_each_row_once(hub, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    nightly(hub, tmp_path, "night0", rows=range(0, 2))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: nightly(hub, tmp_path, *args, retry=RetryPolicy(
            attempts=6, base_delay_s=0.01, max_delay_s=0.1, timeout_s=5)), [("nightA", range(1, 4)),
                                                                              ("nightB", range(3, 6))]))
    added = sum(manifest.metrics.examples_added for _, manifest, _ in results)
    assert main_rows(hub) == {"exqa": 6, "qa": 6} and added == 8  # rows 0-5 once each, whichever won
    stats = json.loads(hub.repo(REPO).resolve("main").files[".bonito/stats.json"])
    assert set(stats["runs"]) == {"scheduled__night0", "scheduled__nightA", "scheduled__nightB"}
    assert len(publish_commits(hub)) == 3
