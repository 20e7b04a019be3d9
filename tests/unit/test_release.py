"""Releases (#24): the scorecard from a run's aggregates, the baseline from the published dataset,
the drift checks (GX KL divergence, rate changes) and their gate."""

from __future__ import annotations

import pytest

from bonito_tasks.compare import Compare, DriftFailed
from bonito_tasks.contracts import (
    CompareMetrics,
    Manifest,
    QualitySummary,
    RunRef,
    Scorecard,
    StageName,
    SuiteRef,
    ValidateMetrics,
)
from bonito_tasks.release import LATEST_SCORECARD, tag_name
from bonito_tasks.release.scorecard import build_scorecard
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from tests.conftest import make_config

REPO = "bonito-team/releases"


def quality(yes: int, no: int, lengths: dict[int, tuple[int, int]] | None = None, dup: float = 0.0) -> QualitySummary:
    """A validate quality summary of a yes/no task and an extractive QA task (counts only)."""
    lengths = lengths or {10: (40, 2), 12: (50, 3), 20: (10, 0)}
    ynq = {1: (yes + no, 0)}
    rows = sum(a + b for a, b in lengths.values()) + yes + no
    passed = sum(a for a, _ in lengths.values()) + yes + no
    return QualitySummary(rows=rows, passed=passed, quarantined=rows - passed, pass_rate=round(passed / rows, 6),
                          duplicate_rate=dup, failed_expectations={"output_min_tokens": rows - passed},
                          labels={"ynqa": {k: v for k, v in (("yes", yes), ("no", no)) if v}},
                          output_length_counts={"exqa": lengths, "ynqa": ynq},
                          input_length_counts={"exqa": {128: 60, 144: 45}, "ynqa": {96: yes + no}},
                          verbatim={"exqa": (100, 105)}, scripts={"Latin": rows},
                          distinct_bigrams={"exqa": 0.8, "ynqa": 0.5}, top_sources={"doc-a": 90, "doc-b": 60})


def commit_validate(store, run: RunRef, summary: QualitySummary) -> Manifest:
    writer = StageWriter(store, run, StageName.VALIDATE)
    metrics = ValidateMetrics(examples_in=summary.rows, passed=summary.passed, quarantined=summary.quarantined,
                              suite=SuiteRef(name="s", dataset_suite="d", version="4"), quality=summary)
    return writer.commit(metrics)


def compare(store, tmp_path, hub, run_id: str, summary: QualitySummary, gated: bool = False, **overrides):
    run = RunRef(dag_id="bonito_dataset", run_id=run_id)
    config = make_config(tmp_path, hub_repo_id=REPO, **overrides)
    return Compare(store, run, config, commit_validate(store, run, summary), hub.token, endpoint=hub.url,
                   gated=gated).execute()


def release(hub, scorecard: Scorecard) -> None:
    """What publish leaves in the dataset: the release's scorecard under .bonito/."""
    hub.seed(REPO, {LATEST_SCORECARD: scorecard.model_dump_json().encode(), "data/x.parquet": b"x"})


def test_scorecard_from_aggregates():
    store_run = RunRef(dag_id="d", run_id="manual__2026-12-04T02:00:00+00:00")
    metrics = ValidateMetrics(suite=SuiteRef(name="s", dataset_suite="d", version="4"), quality=quality(30, 20))
    manifest = Manifest(stage="validate", dag_id="d", run_id=store_run.run_id, uri="mem://m", config_sha256="",
                        code_version="", metrics=metrics)
    card = build_scorecard(store_run, manifest, None, tag_name(store_run.run_id))
    assert card.release_tag == "release-manual__2026-12-04T02_00_00_00_00"
    exqa, ynqa = card.task_types["exqa"], card.task_types["ynqa"]
    assert (exqa.rows, exqa.passed, exqa.pass_rate) == (105, 100, round(100 / 105, 6))
    assert exqa.output_lengths == {10: 40, 12: 50, 20: 10}
    assert exqa.output_tokens is not None and exqa.output_tokens.median == 12 and exqa.output_tokens.max == 20
    assert ynqa.labels == {"yes": 30, "no": 20} and ynqa.share == pytest.approx(50 / 150, abs=1e-5)
    assert card.quarantine_reasons == {"output_min_tokens": 5}
    assert exqa.input_lengths == {128: 60, 144: 45} and exqa.verbatim_share == round(100 / 105, 6)
    assert ynqa.verbatim_share is None and (exqa.distinct_bigrams, ynqa.distinct_bigrams) == (0.8, 0.5)
    assert card.scripts == {"Latin": 155} and card.top_sources == {"doc-a": 90, "doc-b": 60}


def test_first_release_says_so_and_passes(tmp_path, hub):
    store = LocalStore(tmp_path / "store")
    manifest = compare(store, tmp_path, hub, "run-1", quality(30, 20))
    metrics = manifest.metrics_as(CompareMetrics)
    assert metrics.verdict == "first_release" and "first release" in metrics.baseline_note
    assert metrics.checks == [] and metrics.scorecard.passed == 150
    assert store.exists("bonito_dataset/run-1/compare/scorecard.json")
    assert store.read_bytes("bonito_dataset/run-1/compare/drift.svg").startswith(b"<?xml")


def test_planted_drift_fails_naming_the_cause(tmp_path, hub, caplog):
    store = LocalStore(tmp_path / "store")
    baseline = compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics).scorecard
    release(hub, baseline)
    with pytest.raises(DriftFailed) as failed:  # a model that answers "yes" to every yes/no question
        compare(store, tmp_path, hub, "run-2", quality(50, 0))
    message = str(failed.value)
    assert "run-1" in message and "labels of ynqa" in message
    assert "expect_column_kl_divergence_to_be_less_than" in message
    assert "KL divergence" in message and "threshold 0.5" in message and "tonight {yes: 1}" in message
    failure = StageWriter(store, RunRef(dag_id="bonito_dataset", run_id="run-2"), StageName.COMPARE).failure()
    assert failure is not None and failure.permanent and "labels of ynqa" in failure.message
    from bonito_tasks.failures import failure_cause

    cause = failure_cause(store, RunRef(dag_id="bonito_dataset", run_id="run-2"))  # the run summary's cause
    assert cause is not None and cause.stage == "compare" and cause.message.startswith("tonight drifted")
    assert store.exists("bonito_dataset/run-2/compare/scorecard.json")  # the comparison stays to look at


def test_same_night_passes_and_a_small_change_warns(tmp_path, hub):
    store = LocalStore(tmp_path / "store")
    release(hub, compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics).scorecard)
    same = compare(store, tmp_path, hub, "run-2", quality(30, 20)).metrics_as(CompareMetrics)
    assert same.verdict == "pass" and same.baseline_run == "run-1"
    assert {c.severity for c in same.checks} == {"ok"} and len(same.checks) >= 6
    shifted = compare(store, tmp_path, hub, "run-3", quality(30, 20, dup=0.08)).metrics_as(CompareMetrics)
    assert shifted.verdict == "warning" and shifted.failures == 0
    (dup,) = [c for c in shifted.checks if c.name == "duplicate rate"]
    assert dup.severity == "warning" and dup.value == pytest.approx(0.08)


def test_drift_with_the_approval_gate_waits_for_review(tmp_path, hub):
    store = LocalStore(tmp_path / "store")
    release(hub, compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics).scorecard)
    metrics = compare(store, tmp_path, hub, "run-2", quality(50, 0), gated=True).metrics_as(CompareMetrics)
    assert metrics.verdict == "review" and metrics.failures >= 1


def test_unreadable_baseline_is_reported_not_passed(tmp_path, hub):
    store = LocalStore(tmp_path / "store")
    hub.seed(REPO, {LATEST_SCORECARD: b"{not json"})
    metrics = compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics)
    assert metrics.verdict == "warning" and "not a scorecard" in metrics.baseline_note


def test_publish_tags_its_release_and_a_rollback_restores_a_tag_in_one_new_commit(tmp_path, hub):
    import hashlib

    from bonito_dev.rollback import rollback
    from bonito_tasks.contracts import PublishMetrics
    from bonito_tasks.publish import publish
    from bonito_tasks.release.tags import RollbackRefused, release_tags
    from tests.integration.test_publish_hub import FAST
    from tests.unit.test_publish import RUN, make_inputs

    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, hub_repo_id=REPO)
    validated, documents = make_inputs(store)
    Compare(store, RUN, config, validated, hub.token, endpoint=hub.url).execute()  # the first release's scorecard
    first = publish(store, RUN, config, validated, documents, token=hub.token, endpoint=hub.url, retry=FAST)
    metrics = first.metrics_as(PublishMetrics)
    tag = tag_name(RUN.run_id)
    assert metrics.hub_tag == tag and release_tags(REPO, hub.token, hub.url) == {tag: metrics.hub_commit_sha}
    repo = hub.repo(REPO)
    released = dict(repo.resolve(tag).files)
    assert LATEST_SCORECARD in released and f".bonito/scorecards/{tag}.json" in released
    card = released["README.md"].decode()
    assert "## Changes since the last release" in card and f'revision="{tag}"' in card
    assert "assets/drift.svg" in released and "(assets/drift.svg)" in card  # tonight vs the last release

    bad = {**released, "data/bad/extra.parquet": b"bad night", "README.md": b"a bad card"}
    hub._commit(repo, "a bad night", "", bad, parent=repo.refs["main"])
    commits = len(repo.history())
    with pytest.raises(RollbackRefused, match="no tag 'release-nope'"):
        rollback(REPO, "release-nope", hub.token, reason="test", who="oncall", endpoint=hub.url)
    assert len(repo.history()) == commits  # refused before any change
    hub.lose_answer("POST", r"/commit/main")  # the rollback's commit is applied, its answer lost
    sent = hub.count("POST", r"/commit/main")
    sha, created = rollback(REPO, tag, hub.token, reason="bad labels", who="oncall", endpoint=hub.url)
    assert hub.count("POST", r"/commit/main") == sent + 1  # the retry found its commit: none sent again
    assert created and len(repo.history()) == commits + 1  # exactly one new commit, history kept
    head = repo.resolve("main")
    assert head.oid == sha and "Rolled back by oncall: bad labels" in head.description
    digest = {p: hashlib.sha256(d).hexdigest() for p, d in head.files.items()}
    assert digest == {p: hashlib.sha256(d).hexdigest() for p, d in released.items()}  # byte for byte


@pytest.mark.airflow
def test_the_lineage_run_event_carries_the_scorecard(tmp_path, hub):
    from openlineage.client.serde import Serde

    from bonito_airflow.lineage import stage_lineage

    store = LocalStore(tmp_path / "store")
    release(hub, compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics).scorecard)
    manifest = compare(store, tmp_path, hub, "run-2", quality(30, 20, dup=0.08))

    class Runtime:
        config = make_config(tmp_path, hub_repo_id=REPO)

    Runtime.store = store

    class Operator:
        lineage_run = (Runtime, manifest)

    lineage = stage_lineage(Operator())
    facet = lineage.run_facets["bonito_scorecard"]
    assert facet.verdict == "warning" and facet.baseline_run == "run-1"
    assert facet.scorecard["task_types"]["ynqa"]["labels"] == {"yes": 30, "no": 20}
    assert [c["name"] for c in facet.checks] == ["duplicate rate"]
    assert '"verdict": "warning"' in Serde.to_json(facet)  # serializable as a run facet


def mix_rows(n: int, offset: int = 0):
    """(examples, profile) of n rows: inputs in four writing systems, exqa answers found or not."""
    import pyarrow as pa

    scripts = ["The contract ends in May.", "Договор заканчивается в мае.", "合同五月结束。", "12 34 56"]
    inputs = [scripts[i % 4] * (1 + i % 7) for i in range(offset, offset + n)]
    outputs = [f"answer {i % 13} word {i % 5}" for i in range(offset, offset + n)]
    tasks = ["exqa" if i % 2 else "ynqa" for i in range(offset, offset + n)]
    docs = [f"doc-{i % 3}" for i in range(offset, offset + n)]
    examples = pa.table({"input": inputs, "output": outputs, "doc_id": docs})
    profile = pa.table({"task_type": tasks, "input_tokens": [len(t.encode()) // 4 for t in inputs],
                        "answer_in_context": [bool(i % 3) if t == "exqa" else None
                                              for i, t in zip(range(offset, offset + n), tasks)]})
    return examples, profile


def test_the_mix_of_partitions_adds_up_to_the_mix_of_the_whole():
    import pyarrow as pa

    from bonito_tasks.contracts import ValidateAggregate
    from bonito_tasks.validate.mix import add_mix, distinct_share, text_mix

    a, b = mix_rows(40), mix_rows(60, offset=40)
    total = ValidateAggregate()
    add_mix(total, text_mix(*a))
    add_mix(total, text_mix(*b))
    whole = text_mix(pa.concat_tables([a[0], b[0]]), pa.concat_tables([a[1], b[1]]))
    assert total == whole
    assert whole.scripts == {"Latin": 25, "Cyrillic": 25, "Han": 25, "none": 25}
    assert whole.verbatim["exqa"] == (sum(1 for i in range(100) if i % 2 and i % 3), 50)
    assert "ynqa" not in whole.verbatim and whole.sources == {"doc-0": 34, "doc-1": 33, "doc-2": 33}
    assert sum(whole.input_lengths["exqa"].values()) == 50
    # 13 x 5 distinct outputs of four words: "answer k", "k word", "word m" bigrams, 3 per row
    assert distinct_share(whole.bigrams["exqa"]) == pytest.approx(round(len(
        {("answer", i % 13) for i in range(1, 100, 2)} | {(i % 13, "word") for i in range(1, 100, 2)}
        | {("word", i % 5) for i in range(1, 100, 2)}) / 150, 4))


def test_the_bigram_sketch_estimates_many_distinct_bigrams_within_a_few_percent():
    from bonito_tasks.validate.mix import SKETCH_SIZE, bigram_sketch, distinct_share, merge_sketches

    texts = [f"w{i} x{i * 7 % 1000} w{i % 97}" for i in range(30_000)]  # 3 bigrams a text, most distinct
    exact = len({(t.split()[0], t.split()[1]) for t in texts} | {(t.split()[1], t.split()[2]) for t in texts})
    sketch = merge_sketches(bigram_sketch(texts[:10_000]), bigram_sketch(texts[10_000:]))
    assert len(sketch.smallest) == SKETCH_SIZE and sketch.bigrams == 60_000
    assert distinct_share(sketch) == pytest.approx(exact / 60_000, rel=0.1)


def test_an_input_length_shift_fails_and_an_older_baseline_compares_what_it_has(tmp_path, hub):
    store = LocalStore(tmp_path / "store")
    base = compare(store, tmp_path, hub, "run-1", quality(30, 20)).metrics_as(CompareMetrics).scorecard
    release(hub, base)
    longer = quality(30, 20)
    longer.input_length_counts["exqa"] = {512: 60, 528: 45}
    with pytest.raises(DriftFailed, match="input length of exqa"):
        compare(store, tmp_path, hub, "run-2", longer)
    old = Scorecard.model_validate(base.model_dump(exclude={"scripts", "top_sources"}) | {"version": 1})
    for score in old.task_types.values():
        score.input_lengths, score.verbatim_share, score.distinct_bigrams = {}, None, None
    release(hub, old)
    metrics = compare(store, tmp_path, hub, "run-3", quality(30, 20)).metrics_as(CompareMetrics)
    assert "version 1" in metrics.baseline_note and metrics.verdict == "warning"
    not_computed = {c.name for c in metrics.checks if c.severity == "not_computed"}
    assert {"writing systems", "input length of exqa", "verbatim answers of exqa"} <= not_computed
    assert {c.name for c in metrics.checks if c.severity == "ok"} >= {"pass rate", "labels of ynqa"}
