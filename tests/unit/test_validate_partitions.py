"""A partitioned validate (one ValidateShard per generate shard, then the reduce) passes and
quarantines the same rows, and reaches the same dataset-level verdict, as the whole-run check over
the same data in memory (`check_examples`): on demo-like data spread over shards, and on a run with
(input, output) pairs planted across shards. Windows and key buckets are made tiny, so a shard is
checked in several windows and the reduce reads the keys in several buckets."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_validate import DEFECTS, RUN, TASKS, clean_row, clean_rows, commit_generate_shard, context, run_config

from bonito_tasks.browse import table_parts
from bonito_tasks.contracts import CHUNKS, ChunkMetrics, Manifest
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from bonito_tasks.validate import ValidationFailed, check_examples, validate
from bonito_tasks.validate import run as validate_run
from bonito_tasks.validate import shard as validate_shard
from bonito_tasks.validate.report import quality_report
from bonito_tasks.validate.suites import label_tasks


@pytest.fixture(autouse=True)
def tiny_windows(monkeypatch):
    monkeypatch.setattr(validate_shard, "WINDOW_ROWS", 16)  # several windows a shard, few GX runs
    monkeypatch.setattr(validate_run, "KEY_BUCKET_ROWS", 16)


def commit_sharded_chunks(store, n: int, shards: int) -> Manifest:
    """A chunk stage of n chunks in one part per generate shard (as plan_shards lays them out)."""
    writer = StageWriter(store, RUN, "chunk")
    writer.begin()
    size = -(-n // shards)
    for first in range(0, n, size):
        rows = [{"chunk_id": f"chunk-{i}", "doc_id": "doc-0", "chunk_index": i, "char_start": 200 * i,
                 "char_end": 200 * i + len(context(i)), "n_tokens": 30, "text": context(i), "also_in": []}
                for i in range(first, min(n, first + size))]
        writer.add("chunks", pa.Table.from_pylist(rows, CHUNKS))
    return writer.commit(metrics=ChunkMetrics(chunks=n, shards=shards, shard_size=size,
                                              shard_parts=list(range(shards))))


def defective(k: int, name_kind_changes) -> tuple[dict, str]:
    name, task_type, changes = name_kind_changes
    row = clean_row(100 + k, task_type)
    row.update({key: value.replace("{ctx}", context(100 + k)) if isinstance(value, str) else value
                for key, value in changes.items()})
    return row, name


def whole_run(store, shards: list[Manifest], chunks: Manifest, config):
    examples = pa.concat_tables([store.read_table(m, "examples") for m in shards])
    check = check_examples(examples, store.read_table(chunks, "chunks", columns=["chunk_id", "text"]), config)
    passed = check.passed
    quarantine = examples.filter(pa.array(~passed)).append_column(
        "failed_expectations", pa.array([check.failed_by_row[i] for i in sorted(check.failed_by_row)]))
    quality, _ = quality_report(check.profile, passed, check.failed_by_row, shards, label_tasks(config),
                                examples=examples)
    return examples.filter(pa.array(passed)), quarantine, check, quality


def verdict(expectations) -> list[tuple]:
    return [(e["name"], e["success"], e.get("observed_value")) for e in expectations]


def by_id(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda row: row["example_id"])


def assert_same_as_whole_run(store, manifest: Manifest, shards, chunks, config) -> None:
    passed, quarantine, check, quality = whole_run(store, shards, chunks, config)
    assert check.success
    assert store.read_table(manifest, "examples").equals(passed)  # same rows, same order
    assert by_id(store.read_table(manifest, "quarantine")) == by_id(quarantine)
    dataset = [e.model_dump() for e in manifest.metrics.expectations if e.level == "dataset"]
    assert verdict(dataset) == verdict(check.dataset.expectations)
    rows = {e.name: e.unexpected_count for e in manifest.metrics.expectations if e.level == "row"}
    assert rows == {e["name"]: e.get("unexpected_count") for e in check.rows.expectations if e["level"] == "row"}
    mine = manifest.metrics.quality.model_dump(exclude={"data_docs_uri", "report_uri", "summary_uri", "plots"})
    assert mine == quality.model_dump(exclude={"data_docs_uri", "report_uri", "summary_uri", "plots"})


def test_demo_like_data_over_shards_gives_the_whole_run_outcome(tmp_path):
    """60 clean rows over every task type and one row per defect, over three shards of unequal size;
    a row naming another shard's chunk is still found (its text is read from that shard's part)."""
    store = LocalStore(tmp_path / "store")
    chunks = commit_sharded_chunks(store, 240, shards=3)  # chunk parts of 80: chunk-100.. live in part 1
    rows = clean_rows(60)
    for k, defect in enumerate(DEFECTS):
        rows.insert(4 * k + 1, defective(k, defect)[0])
    rows.append(dict(clean_row(150, "summarization"), input=rows[9]["input"], output=rows[9]["output"]))
    config = run_config(tmp_path, min_pass_rate=0.5)
    shards = [commit_generate_shard(store, part, shard=i) for i, part in enumerate((rows[:11], rows[11:50],
                                                                                      rows[50:]))]

    manifest = validate(store, RUN, config, shards, chunks)

    assert manifest.counts["quarantine"] == len(DEFECTS) + 1
    assert_same_as_whole_run(store, manifest, shards, chunks, config)
    assert {p.stage for p in map(store.read_manifest, [StageWriter(store, RUN, "validate", partition=i).manifest_key
                                                         for i in range(3)])} == {"validate"}


def planted_run(store, tmp_path, **overrides):
    """Three shards of ynqa/nli/te/summarization rows; pairs of shard 0 planted again in shards 1
    and 2 (one of them in both, one twice in shard 2), and one in shard 2 whose copy is also
    defective (quarantined for its label before the repeat is known)."""
    chunks = commit_sharded_chunks(store, 300, shards=3)
    tasks = ["ynqa", "nli", "te", "summarization"]
    shard0, shard1, shard2 = (clean_rows(40, first=first, tasks=tasks) for first in (0, 100, 200))
    other = {"ynqa": "No.", "nli": "True", "te": "yes"}
    for i, row in enumerate(shard0 + shard1 + shard2):  # half the answers differ: no label dominates
        if i % 8 < 4 and row["task_type"] in other:
            row["output"] = other[row["task_type"]]

    def plant(target: list[dict], at: int, source: dict) -> None:
        target[at] = dict(target[at], **{k: source[k] for k in ("task_type", "input", "output", "chunk_id")})

    plant(shard1, 3, shard0[0])  # passed in shard 1: moves to the quarantine
    plant(shard1, 20, shard0[5])
    plant(shard2, 7, shard0[5])  # the same pair in a third shard
    plant(shard2, 8, shard0[6])
    plant(shard2, 30, shard0[6])  # and twice in shard 2 (the second one shard 2 itself quarantines)
    shard0[10]["output"] = "perhaps"  # not a te label: quarantined in shard 0...
    plant(shard2, 11, shard0[10])  # ...and its copy in shard 2 fails the label check and repeats
    config = run_config(tmp_path, task_types=tasks, min_pass_rate=0.5, **overrides)
    shards = [commit_generate_shard(store, rows, shard=i) for i, rows in enumerate((shard0, shard1, shard2))]
    return config, shards, chunks


def test_pairs_planted_across_shards_are_quarantined_as_the_whole_run_does(tmp_path):
    store = LocalStore(tmp_path / "store")
    config, shards, chunks = planted_run(store, tmp_path)

    manifest = validate(store, RUN, config, shards, chunks)

    quarantine = {r["example_id"]: r["failed_expectations"]
                  for r in store.read_table(manifest, "quarantine").to_pylist()}
    assert quarantine == {"ex-10": ["te_label"], "ex-103": ["unique_input_output"],
                          "ex-120": ["unique_input_output"], "ex-207": ["unique_input_output"],
                          "ex-208": ["unique_input_output"], "ex-230": ["unique_input_output"],
                          "ex-211": ["unique_input_output", "te_label"]}
    assert_same_as_whole_run(store, manifest, shards, chunks, config)
    quality = manifest.metrics.quality
    assert quality.duplicate_rate == round(6 / 120, 6) and quality.failed_expectations["unique_input_output"] == 6
    # Only the partitions holding a repeat were written again by the reduce.
    assert [ref.path for ref in manifest.shards if ref.table == "quarantine"] == [
        "shard-00000/part-00000.quarantine.parquet", "replaced-shard-00001/part-00000.quarantine.parquet",
        "replaced-shard-00002/part-00000.quarantine.parquet"]
    replaced = [ref.path for ref in manifest.shards if ref.path.startswith("replaced-")]
    assert all(".examples." not in path or path.startswith(("replaced-shard-00001", "replaced-shard-00002"))
               for path in replaced) and len(replaced) < manifest.rows_of("examples")


def test_a_duplicate_rate_over_its_threshold_fails_both_ways_alike(tmp_path):
    store = LocalStore(tmp_path / "store")
    config, shards, chunks = planted_run(store, tmp_path, max_duplicate_rate=0.02)
    examples = pa.concat_tables([store.read_table(m, "examples") for m in shards])
    check = check_examples(examples, store.read_table(chunks, "chunks", columns=["chunk_id", "text"]), config)

    with pytest.raises(ValidationFailed) as caught:
        validate(store, RUN, config, shards, chunks)

    assert not check.success
    assert verdict(caught.value.findings.failed) == verdict(check.failed) == [("max_duplicate_rate", False, 0.05)]
    assert StageWriter(store, RUN, "validate").committed() is None
    # The quarantine stays written, each row once: the rewritten parts in place of their partition's.
    stage, keys = table_parts(store, RUN, "quarantine")
    rows = pa.concat_tables([pq.read_table(io.BytesIO(store.read_bytes(key))) for key in keys])
    assert stage == "validate" and sorted(rows["example_id"].to_pylist()) == sorted(
        examples.filter(pa.array(~check.passed))["example_id"].to_pylist())
    assert table_parts(store, RUN, "examples")[0] == "generate"  # not validated: the verdict failed


def test_the_reduce_keeps_the_partitions_when_only_a_threshold_changes(tmp_path):
    store = LocalStore(tmp_path / "store")
    config, shards, chunks = planted_run(store, tmp_path)
    validate(store, RUN, config, shards, chunks)
    partitions = [StageWriter(store, RUN, "validate", partition=i).committed() for i in range(3)]

    lowered = config.model_copy(update={"min_pass_rate": 0.4})
    again = validate(store, RUN, lowered, shards, chunks)

    assert [StageWriter(store, RUN, "validate", partition=i).committed() for i in range(3)] == partitions
    bound = {e.name: e.bound for e in again.metrics.expectations}["min_pass_rate"]
    assert bound["min_value"] == 0.4


def test_every_task_type_in_one_shard_matches_too(tmp_path):
    """The whole DEFECTS table in one shard, checked in windows of 7 rows."""
    store = LocalStore(tmp_path / "store")
    chunks = commit_sharded_chunks(store, 200, shards=1)
    rows = clean_rows(30, tasks=TASKS) + [defective(k, d)[0] for k, d in enumerate(DEFECTS)]
    config = run_config(tmp_path, min_pass_rate=0.5)
    shards = [commit_generate_shard(store, rows)]
    assert_same_as_whole_run(store, validate(store, RUN, config, shards, chunks), shards, chunks, config)


def test_a_shard_holds_a_window_of_rows_and_the_texts_of_its_own_chunks(tmp_path, monkeypatch):
    """What bounds a validate_shard task's memory: the row checks see at most WINDOW_ROWS rows at a
    time, and the shard reads the texts of its own chunk part only (never the run's)."""
    class CountingStore(LocalStore):
        text_reads: list[int] = []

        def read_shard(self, manifest, table, index, columns=None):
            if table == "chunks" and (columns is None or "text" in columns):
                self.text_reads.append(index)
            return super().read_shard(manifest, table, index, columns)

    store = CountingStore(tmp_path / "store")
    chunks = commit_sharded_chunks(store, 300, shards=3)
    shards = [commit_generate_shard(store, clean_rows(40, first=100 * i), shard=i) for i in range(3)]
    profiled: list[int] = []
    real_profile = validate_shard.row_profile
    monkeypatch.setattr(validate_shard, "row_profile", lambda examples, *args, **kwargs: (
        profiled.append(examples.num_rows), real_profile(examples, *args, **kwargs))[1])

    validate(store, RUN, run_config(tmp_path), shards, chunks)

    assert sorted(CountingStore.text_reads) == [0, 1, 2]  # each shard its own part, once
    assert max(profiled) == 16 and sum(profiled) == 120
