"""Issue #24's "Done when", through the stages (no Airflow, no vLLM: an engine that answers in Bonito's
format): two nightly runs in a row on changed inputs publish to the local Hub stand-in; on the second,
the model answers "yes" to every yes/no question, and compare fails the run with the cause in the first
lines of its log and in the run summary, nothing published. The on-call publishes it anyway (drift
thresholds off), then rolls back: main holds the first release byte for byte, in one new commit, and
the ledger has the bad night's documents processed again."""

from __future__ import annotations

import hashlib
import logging
import shutil

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.format import CONTEXT_MARKER, CONTEXT_PLACEHOLDER, PIPE_MARKER, TASK_MARKER, TASKTYPE_MARKER
from bonito_tasks.generate.engine import Completion
from bonito_tasks.release import tag_name
from bonito_tasks.store import LocalStore, run_prefix
from bonito_tasks.task_types import TASK_TYPES
from tests.conftest import SAMPLE_DOCS, make_config

REPO = "bonito-team/nightly"
DAG = "bonito_dataset"


class Bonito:
    """Answers each prompt as Bonito would: exqa with the passage's opening words, ynqa "yes" and "no"
    in turn, or (`yes_only`) "yes" to every yes/no question."""

    def __init__(self, yes_only: bool = False):
        self.yes_only, self.questions = yes_only, 0

    def prompt_tokens(self, prompts):
        return [len(p) // 4 for p in prompts]

    def stream(self, prompts, sampling_params, flush_every):
        names = {name: short for short, name in TASK_TYPES.items()}
        answers = []
        for i, prompt in prompts.items():
            task = names[prompt.split(TASKTYPE_MARKER)[1].split(CONTEXT_MARKER)[0].strip()]
            context = prompt.split(CONTEXT_MARKER)[1].split(TASK_MARKER)[0].strip()
            if task == "exqa":
                text = f"{CONTEXT_PLACEHOLDER}\nHow does the passage begin?{PIPE_MARKER}{' '.join(context.split()[:4])}"
            else:
                self.questions += 1
                label = "Yes" if self.yes_only or self.questions % 2 else "No"
                text = f"{CONTEXT_PLACEHOLDER}\nIs the passage about {context.split()[-1]}?{PIPE_MARKER}{label}"
            answers.append((i, [Completion(text, 12)]))
        yield answers


def nightly(store, config, token: str, endpoint: str, n: int, engine: Bonito):
    """One scheduled run through the stages, as the DAG chains them; returns (run, documents)."""
    from bonito_tasks.chunk import chunk
    from bonito_tasks.compare import Compare
    from bonito_tasks.contracts import ChunkMetrics
    from bonito_tasks.extract import extract
    from bonito_tasks.generate.run import generate_shard
    from bonito_tasks.ledger import update_ledger
    from bonito_tasks.publish import publish
    from bonito_tasks.validate import validate
    from tests.integration.test_publish_hub import FAST

    run = RunRef(dag_id=DAG, run_id=f"scheduled__2026-12-0{n}T02:00:00+00:00")
    documents = extract(store, run, config)
    chunks = chunk(store, run, config, documents)
    generated = [generate_shard(store, run, config, chunks, i, engine=engine)
                 for i in range(chunks.metrics_as(ChunkMetrics).shards)]
    validated = validate(store, run, config, generated, chunks)
    Compare(store, run, config, validated, token, endpoint=endpoint).execute()
    publish(store, run, config, validated, documents, token=token, endpoint=endpoint, retry=FAST)
    update_ledger(store, run, documents, config)
    return run, documents


pytestmark = pytest.mark.usefixtures("hub_env")  # HF_TOKEN and HF_ENDPOINT set, as the CLI reads them


def test_a_drifted_night_fails_and_a_rollback_restores_the_last_good_release(tmp_path, hub, caplog, capsys):
    from bonito_dev.rollback import main as rollback
    from bonito_tasks.compare import DriftFailed
    from bonito_tasks.ledger import load_ledger
    from bonito_tasks.summary import format_summary, run_summary

    src = tmp_path / "src"
    src.mkdir()
    for name in ("apache-2.0.txt", "mpl-2.0.md"):
        shutil.copy(SAMPLE_DOCS / name, src / name)
    store = LocalStore(tmp_path / "store")
    # The label share gate of validate is off: the drift against the last release is what this is about.
    config = make_config(tmp_path, source=str(src), hub_repo_id=REPO, publish_mode="append",
                         task_types=["exqa", "ynqa"], quality_filters=False, max_label_share=1.0,
                         chunk_max_tokens=64)
    first, _ = nightly(store, config, hub.token, hub.url, 1, Bonito())
    repo = hub.repo(REPO)
    released = dict(repo.resolve(tag_name(first.run_id)).files)
    assert "assets/drift.svg" in released and ".bonito/scorecard.json" in released

    # The next night: a new document, and a model that answers "yes" to every yes/no question.
    shutil.copy(SAMPLE_DOCS / "cc0-1.0.html", src / "cc0-1.0.html")
    commits = len(repo.history())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bonito_tasks.compare"), pytest.raises(DriftFailed):
        nightly(store, config, hub.token, hub.url, 2, Bonito(yes_only=True))
    log = [r.getMessage() for r in caplog.records if r.name == "bonito_tasks.compare"]
    assert log[0].startswith("drift verdict: failure; compared with the release of run " + first.run_id)
    assert log[1].startswith("FAILURE: labels of ynqa (expect_column_kl_divergence_to_be_less_than)")
    assert "tonight {yes: 1}" in log[1] and "threshold 0.5" in log[1]
    assert len(repo.history()) == commits  # nothing published
    second = RunRef(dag_id=DAG, run_id="scheduled__2026-12-02T02:00:00+00:00")
    assert store.exists(f"{run_prefix(second)}/compare/report.html")  # the comparison, to look at

    summary = run_summary(store, second, config)
    assert summary.failed_stage == "compare" and summary.cause is not None
    check = summary.cause.failed_expectations[0]  # the answers' lengths drift too: "yes" is longer than "no"
    assert check.name == "labels of ynqa" and check.bound == {"threshold": 0.5} and check.observed_value > 0.5
    assert "tonight {yes: 1}" in (check.expected or "")
    cause = format_summary(summary).split("FAILED at compare: ", 1)[1].splitlines()
    assert "(labels of ynqa" in cause[0]
    assert cause[1].strip().startswith("expectation labels of ynqa: observed")

    # Published anyway (say an approver let it through), then rolled back: one commit, the first release's
    # files byte for byte, and the bad night's documents processed again on the next night.
    forced = config.model_copy(update={"drift_kl_failure": None, "drift_rate_failure": None})
    bad, documents = nightly(store, forced, hub.token, hub.url, 3, Bonito(yes_only=True))
    card = repo.resolve("main").files["README.md"].decode()
    assert "## Changes since the last release" in card and "(assets/drift.svg)" in card
    new = store.read_table(documents, "documents")["doc_id"].to_pylist()
    assert new and all(doc in load_ledger(store, DAG, config) for doc in new)
    commits = len(repo.history())
    assert rollback([REPO, "--to", tag_name(first.run_id), "--reason", "every ynqa answer is yes",
                     "--who", "oncall", "--store", str(store.root)]) == 0
    assert f"rolled back: {tag_name(bad.run_id)}: revoked" in capsys.readouterr().out
    assert len(repo.history()) == commits + 1
    head = repo.resolve("main")
    assert "Rolled back by oncall: every ynqa answer is yes" in head.description
    assert {p: hashlib.sha256(d).hexdigest() for p, d in head.files.items()} == \
        {p: hashlib.sha256(d).hexdigest() for p, d in released.items()}
    assert not any(doc in load_ledger(store, DAG, config) for doc in new)
