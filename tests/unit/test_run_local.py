"""`make run SOURCE=...` (bonito_dev/run.py): the conf it gives dag.test(), and its check before starting."""

import subprocess
from pathlib import Path

import pytest

from bonito_dev.run import OUTPUT_DIR, TINY, build_conf, lowered_gates, main, rejection
from conftest import REPO, SAMPLE_DOCS

pytestmark = pytest.mark.airflow


def test_conf_is_the_source_the_local_store_then_the_given_params(tmp_path):
    assert build_conf(str(SAMPLE_DOCS)) == {"source": str(SAMPLE_DOCS), "store": str(OUTPUT_DIR / "store")}
    conf = build_conf(str(SAMPLE_DOCS), '{"task_types": ["ynqa"], "store": "s3://bucket/store"}', tiny=True,
                      output_dir=tmp_path)
    assert conf == {"source": str(SAMPLE_DOCS), "store": "s3://bucket/store", **TINY, "task_types": ["ynqa"]}
    with pytest.raises(ValueError, match="JSON object"):
        build_conf(".", '["exqa"]')


def test_bad_params_are_refused_before_anything_starts(tmp_path):
    assert rejection(build_conf(str(SAMPLE_DOCS), tiny=True), tmp_path) is None
    problem = rejection(build_conf(str(SAMPLE_DOCS), '{"max_tokens": 1000}'), tmp_path)
    assert "params in conflict: max_tokens=1000, max_model_len=2048" in problem


def test_an_s3_source_is_passed_on_as_it_is():
    assert build_conf("s3://bucket/prefix/")["source"] == "s3://bucket/prefix/"
    assert build_conf("~")["source"] == str(Path.home())


@pytest.mark.parametrize("source", ["", "  "])
def test_no_source_stops_with_a_message_before_anything_starts(source, capsys):
    with pytest.raises(ValueError, match="no source"):
        build_conf(source)
    assert main([source]) == 2
    assert "make run SOURCE=~/my-documents" in capsys.readouterr().err


def test_tiny_says_which_quality_gates_it_lowers():
    assert lowered_gates(build_conf(str(SAMPLE_DOCS))) == []
    assert lowered_gates(build_conf(str(SAMPLE_DOCS), tiny=True)) == [
        "min_pass_rate: 0.9 -> 0.0", "max_duplicate_rate: 0.1 -> 1.0", "max_label_share: 0.9 -> 1.0"]
    kept = build_conf(str(SAMPLE_DOCS), '{"min_pass_rate": 0.9}', tiny=True)
    assert lowered_gates(kept) == ["max_duplicate_rate: 0.1 -> 1.0", "max_label_share: 0.9 -> 1.0"]


def test_make_run_without_source_reaches_the_message():
    dry = subprocess.run(["make", "-n", "-o", ".venv/bin/.installed", "run"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    [line] = [line for line in dry.splitlines() if "bonito_dev.run" in line]
    assert line.split("bonito_dev.run", 1)[1].split()[0] == '""'
