"""`make run SOURCE=...` (bonito_dev/run.py): the conf it gives dag.test(), and its check before starting."""

import pytest

from bonito_dev.run import OUTPUT_DIR, TINY, build_conf, rejection
from conftest import SAMPLE_DOCS

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
