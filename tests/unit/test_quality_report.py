"""The quality report's output-length histogram (validate/report.py): integer token ranges with no
duplicate labels, the passed and the quarantined rows apart, lengths in tokens of the run's model
tokenizer (bonito_tasks/tokens.py) or, where the worker lacks it, an estimate that says so. The
numbers under the plot are tested, not the SVG."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_validate import RUN, chunk_stage, clean_rows, commit_chunks, commit_generate_shard, run_config

from bonito_tasks.store import LocalStore
from bonito_tasks.tokens import count_tokens, load_tokenizer, tokenizer_name
from bonito_tasks.validate import validate
from bonito_tasks.validate.report import HIST_BINS, output_length_histograms
from conftest import TINY_MODEL


def test_ranges_are_whole_tokens_of_one_width_and_rows_are_split_by_outcome():
    tokens = np.array([3, 3, 4, 10, 29, 30, 5, 5])
    task = np.array(["exqa"] * 6 + ["ynqa"] * 2)
    passed = np.array([True, False, True, True, True, False, True, True])

    histograms = output_length_histograms(tokens, task, passed)

    exqa = histograms["exqa"]
    assert len(exqa) <= HIST_BINS and len({label for label, _, _ in exqa}) == len(exqa)
    # 3..30 is 28 lengths: ranges of 3 tokens (ceil(28 / 12)), the first "3-5", the last "30"
    assert [label for label, _, _ in exqa][:2] == ["3-5", "6-8"] and exqa[-1][0] == "30"
    assert exqa[0] == ("3-5", 2, 1) and exqa[2] == ("9-11", 1, 0) and exqa[-1] == ("30", 0, 1)
    assert sum(p for _, p, _ in exqa) == 4 and sum(q for _, _, q in exqa) == 2
    assert histograms["ynqa"] == [("5", 2, 0)]  # one length: one range of width 1


def test_the_stage_reports_lengths_in_the_models_tokens(tmp_path):
    store = LocalStore(tmp_path / "store")
    commit_chunks(store, 200)
    rows = clean_rows(30)
    rows[0]["output"] = ""  # quarantined (output_length)
    config = run_config(tmp_path, model_id=str(TINY_MODEL), dtype="float32", min_pass_rate=0.5)

    quality = validate(store, RUN, config, [commit_generate_shard(store, rows)], chunk_stage(store)).metrics.quality

    tokenizer = load_tokenizer(config)
    by_task: dict[str, list[int]] = {}
    for row in rows:
        by_task.setdefault(row["task_type"], []).append(len(tokenizer(row["output"], add_special_tokens=False)
                                                            ["input_ids"]))
    for task, lengths in by_task.items():
        stats = quality.output_tokens[task]
        assert (stats.rows, stats.max, stats.median) == (len(lengths), max(lengths), float(np.median(lengths)))
    svg = (tmp_path / "store").rglob("output_tokens.svg").__next__().read_text()
    assert "tokens of tiny-bonito" in svg and str(tmp_path) not in svg  # the tokenizer named, never its path


def test_without_the_tokenizer_the_lengths_are_an_estimate_and_say_so(tmp_path):
    config = run_config(tmp_path, model_id=str(tmp_path / "no-such-model"))
    assert count_tokens(config, pa.array(["a b c"])) is None
    assert tokenizer_name(run_config(tmp_path, model_id=str(TINY_MODEL))) == "tiny-bonito"


@pytest.mark.parametrize("texts", [["", "The tenant pays rent.", None]])
def test_count_tokens_counts_without_special_tokens(tmp_path, texts):
    config = run_config(tmp_path, model_id=str(TINY_MODEL))
    tokenizer = load_tokenizer(config)
    expected = [len(tokenizer(t or "", add_special_tokens=False)["input_ids"]) for t in texts]
    assert count_tokens(config, pa.array(texts)).tolist() == expected
