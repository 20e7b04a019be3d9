"""Why a run failed, read back from the store: the `_failure.json` a stage leaves when its work
raised (stage.py writes it, a later commit removes it), turned into the cause the on-call needs
first: the failed stage, its message, the failed expectations with observed value and threshold,
the quarantine counts, the rejects or dropped generations by reason.

The run summary and the Dataset view both read it; a failure record of an older shape is reported
by its message alone.
"""

from __future__ import annotations

import io
import logging
from collections import Counter

from pydantic import ValidationError

from bonito_tasks.contracts import (
    FAILURE_NAME,
    MANIFEST_NAME,
    ExpectationOutcome,
    FailureCause,
    GenerateMetrics,
    Manifest,
    RunRef,
    StageFailure,
    StageName,
)
from bonito_tasks.store import ArtifactStore, run_prefix

log = logging.getLogger(__name__)

STAGES = (StageName.EXTRACT, StageName.CHUNK, StageName.GENERATE, StageName.VALIDATE, StageName.COMPARE,
          StageName.PUBLISH)
_OUTCOME_FIELDS = set(ExpectationOutcome.model_fields)


def stage_failures(store: ArtifactStore, run: RunRef, stage: str) -> list[StageFailure]:
    """The failure records of a stage and of its partitions (each one's last attempt that failed and
    was not followed by a commit), in folder order."""
    prefix = f"{run_prefix(run)}/{stage}"
    failures = []
    for key in store.list(prefix):
        if key.rsplit("/", 1)[-1] != FAILURE_NAME:
            continue
        try:
            failures.append(StageFailure.model_validate_json(store.read_bytes(key)))
        except (ValidationError, ValueError) as err:  # written by another version: keep what can be read
            log.warning("unreadable failure record %s: %s", key, err)
            failures.append(StageFailure(stage=stage, error="unknown", message=f"unreadable failure record {key}",
                                         permanent=False))
    return failures


def failure_cause(store: ArtifactStore, run: RunRef) -> FailureCause | None:
    """The cause of the first stage (in pipeline order) that left a failure record; None when none did."""
    for stage in STAGES:
        failures = stage_failures(store, run, stage)
        if failures:
            return _cause(store, run, failures[0])
    return None


def _generated(store: ArtifactStore, run: RunRef) -> list[Manifest]:
    """The committed generate partitions' manifests (an unreadable one is left out)."""
    manifests = []
    for key in store.list(f"{run_prefix(run)}/generate"):
        if key.endswith(f"/{MANIFEST_NAME}") and "/shard-" in key:
            try:
                manifests.append(store.read_manifest(key))
            except (ValidationError, ValueError):
                log.warning("unreadable manifest %s", key)
    return manifests


def _cause(store: ArtifactStore, run: RunRef, failure: StageFailure) -> FailureCause:
    details = failure.details
    cause = FailureCause(stage=failure.stage, partition=failure.partition, error=failure.error,
                         message=failure.message)
    cause.failed_expectations = [
        ExpectationOutcome(**{k: v for k, v in e.items() if k in _OUTCOME_FIELDS})
        for e in details.failed if {"name", "level", "expectation", "success"} <= e.keys()
    ]
    cause.quarantined = dict(details.quarantined)
    if failure.stage == StageName.EXTRACT:
        cause.rejects_by_reason = _reasons(store, f"{run_prefix(run)}/{StageName.EXTRACT}", "rejects")
    if failure.stage in (StageName.GENERATE, StageName.VALIDATE):
        dropped: Counter = Counter()
        for manifest in _generated(store, run):
            if isinstance(manifest.metrics, GenerateMetrics):
                dropped.update(manifest.metrics.dropped_by_reason)
        cause.dropped_by_reason = {k: v for k, v in dropped.most_common() if v}
    return cause


def _reasons(store: ArtifactStore, prefix: str, table: str) -> dict[str, int]:
    """Rows per `reason` of the parts of `table` under prefix (rejects are a few rows per file)."""
    import pyarrow.parquet as pq

    counts: Counter = Counter()
    for key in store.list(prefix):
        if key.endswith(f".{table}.parquet"):
            counts.update(pq.read_table(io.BytesIO(store.read_bytes(key)), columns=["reason"])["reason"].to_pylist())
    return dict(sorted(counts.items()))


def format_cause(cause: FailureCause) -> list[str]:
    """The cause as log lines: stage and first line of the message, then the findings."""
    where = cause.stage + (f" partition {cause.partition}" if cause.partition is not None else "")
    first = cause.message.strip().splitlines()[0] if cause.message.strip() else cause.error
    lines = [f"  FAILED at {where}: {first}"]
    for e in cause.failed_expectations:
        bound = ", ".join(f"{k}={v}" for k, v in e.bound.items())
        observed = (f"{e.unexpected_count} unexpected rows" if e.unexpected_count is not None
                    else f"observed {e.observed_value!r}")
        lines.append(f"    expectation {e.name}: {observed} against {bound or 'its bound'}")
    if cause.quarantined:
        lines.append("    quarantined by expectation: " + ", ".join(f"{k}={v}" for k, v in cause.quarantined.items()))
    if cause.rejects_by_reason:
        lines.append("    rejects by reason: " + ", ".join(f"{k}={v}" for k, v in cause.rejects_by_reason.items()))
    if cause.dropped_by_reason:
        lines.append("    dropped generations by reason: "
                     + ", ".join(f"{k}={v}" for k, v in cause.dropped_by_reason.items()))
    return lines
