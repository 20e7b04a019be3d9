"""A stage that fails leaves its cause (`_failure.json`) and the run summary names it: the failed
stage, its message and findings (rejects by reason here; failed expectations with observed value and
threshold in tests/unit/test_view.py, from a real failed validate). A later commit clears it."""

import json

import pyarrow as pa
import pytest

from bonito_tasks.contracts import REJECTS, ExtractMetrics, RunRef
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.failures import failure_cause
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import open_store, run_prefix
from bonito_tasks.summary import format_summary, run_summary
from conftest import make_config, work_stage

RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2026-11-25T00:00:00+00:00")


class NothingUsable(PermanentFailure):
    pass


def _rejecting_work(writer: StageWriter) -> ExtractMetrics:
    writer.add("rejects", pa.Table.from_pylist(
        [{"source_uri": f"/docs/{i}.pdf", "stage": "extract", "reason": reason, "detail": "d", "size_bytes": 1}
         for i, reason in enumerate(["corrupt_pdf", "corrupt_pdf", "empty_file"])], REJECTS))
    raise NothingUsable("no document could be extracted from '/docs' (3 file(s) rejected)")


def test_a_failed_stage_names_its_cause_in_the_summary(tmp_path):
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(NothingUsable):
        work_stage("extract", _rejecting_work)(store, RUN, make_config(tmp_path)).execute()

    failure = StageWriter(store, RUN, "extract").failure()
    assert (failure.error, failure.permanent) == ("NothingUsable", True)
    summary = run_summary(store, RUN, make_config(tmp_path))
    assert summary.failed_stage == "extract" and summary.stages["extract"] == "failed (NothingUsable)"
    assert summary.cause.rejects_by_reason == {"corrupt_pdf": 2, "empty_file": 1}
    assert summary.cause.message.startswith("no document could be extracted")
    text = format_summary(summary)
    assert "FAILED at extract: no document could be extracted" in text
    assert "rejects by reason: corrupt_pdf=2, empty_file=1" in text
    written = json.loads(store.read_bytes(f"{run_prefix(RUN)}/summary.json"))
    assert written["cause"]["rejects_by_reason"] == {"corrupt_pdf": 2, "empty_file": 1}


def test_a_commit_clears_the_failure(tmp_path):
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(NothingUsable):
        work_stage("extract", _rejecting_work)(store, RUN, make_config(tmp_path)).execute()
    work_stage("extract", lambda writer: ExtractMetrics(documents=1))(store, RUN, make_config(tmp_path)).execute()
    assert StageWriter(store, RUN, "extract").failure() is None and failure_cause(store, RUN) is None


def test_a_failed_partition_is_named_with_its_number(tmp_path):
    store = open_store(str(tmp_path / "store"))

    def crash(writer):
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError):
        work_stage("generate", crash, resumable=True)(store, RUN, make_config(tmp_path), partition=3).execute()
    cause = failure_cause(store, RUN)
    assert (cause.stage, cause.partition, cause.error, cause.message) == ("generate", 3, "RuntimeError", "engine died")
