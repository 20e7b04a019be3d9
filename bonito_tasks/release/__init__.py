"""Releases: every publish is a release, compared with the last one and pinned by a tag.

The compare stage (`Compare`, between validate and publish) builds tonight's scorecard from the
run's aggregates (scorecard.py), reads the scorecard of the last release published to the same
target (`read_baseline`: `.bonito/scorecard.json` of the Hub repo's main, or of the S3 export's
current snapshot; publish writes it there with every release), and runs the drift checks
(drift.py). Beyond a failure threshold the run fails with each failing check's expectation,
baseline value, tonight's value and threshold (`DriftFailed`), unless the approval gate is on:
then it commits with verdict "review" and the approver sees the comparison. A first release (no
baseline) says so and passes. Publish tags its Hub commit `tag_name(run)`; `bonito_dev.rollback`
restores a tag's tree in a new commit. docs/releases.md is the reference.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import (
    SCORECARD_VERSION,
    CompareMetrics,
    Manifest,
    RunRef,
    Scorecard,
    StageName,
    canonical_json,
    sha256_hex,
)
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.release.drift import drift_checks, verdict
from bonito_tasks.release.scorecard import build_scorecard, comparison_plot
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore, safe_segment

log = logging.getLogger(__name__)

SCORECARD_FILE = "scorecard.json"
PLOT_FILE = "drift.svg"
HIDDEN = ".bonito"  # publish/history.HIDDEN_DIR (not imported: the compare stage's code stays its own)
LATEST_SCORECARD = f"{HIDDEN}/scorecard.json"  # the last release's, in the published dataset


def tag_name(run_id: str) -> str:
    """The Hub tag of a run's release: `release-<run folder segment>` (a valid git ref name)."""
    return f"release-{safe_segment(run_id).replace('..', '_')}".removesuffix(".lock")


def release_scorecard_path(tag: str) -> str:
    """Where a release keeps its own scorecard in the dataset (next to the latest one)."""
    return f"{HIDDEN}/scorecards/{tag}.json"


class DriftFailed(PermanentFailure):
    """Tonight drifted from the last release beyond a failure threshold; the same data drifts the same way."""


@dataclass(frozen=True)
class Baseline:
    scorecard: Scorecard | None
    source: str | None  # where it was read (None: no target to read)
    note: str  # first release, unreadable, older version...
    raw_sha256: str = ""


def read_baseline(config: RunConfig, token: str | None, *, endpoint: str | None = None,
                  s3_client_kwargs: Mapping[str, Any] | None = None) -> Baseline:
    """The scorecard of the last release published to the run's target; never raises."""
    if config.hub_repo_id:
        source = f"hf://datasets/{config.hub_repo_id}@main/{LATEST_SCORECARD}"
        try:
            data = _hub_file(config.hub_repo_id, LATEST_SCORECARD, token, endpoint)
        except Exception as err:  # unreadable: said in the report, the checks not computed
            return Baseline(None, source, f"the baseline could not be read: {type(err).__name__}: "
                                          f"{_redact(str(err), token)[:300]}")
    elif config.export_s3_uri:
        from bonito_tasks.publish.export import ExportFiles
        from bonito_tasks.store import open_store

        source = f"{config.export_s3_uri.rstrip('/')}/<current snapshot>/{LATEST_SCORECARD}"
        try:
            files = ExportFiles(open_store(config.export_s3_uri, **dict(s3_client_kwargs or {})))
            data = files.read(LATEST_SCORECARD) if LATEST_SCORECARD in files.paths else None
        except Exception as err:
            return Baseline(None, source, f"the baseline could not be read: {type(err).__name__}: {err}"[:400])
    else:
        return Baseline(None, None, "no Hub repo or export target: no earlier release to compare with")
    if data is None:
        return Baseline(None, source, "first release to this target: no baseline, nothing to compare")
    try:
        scorecard = Scorecard.model_validate(json.loads(data))
    except Exception as err:
        return Baseline(None, source, f"the baseline is not a scorecard: {type(err).__name__}: {err}"[:400])
    note = "" if scorecard.version == SCORECARD_VERSION else (
        f"the baseline is scorecard version {scorecard.version} (this code writes {SCORECARD_VERSION}): "
        "what both hold is compared")
    return Baseline(scorecard, source, note, sha256_hex(data))


def _hub_file(repo_id: str, path: str, token: str | None, endpoint: str | None) -> bytes | None:
    """A file of the dataset repo's main; None when the repo, the branch or the file does not exist."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from bonito_tasks.compat import hf_request_timeout

    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token or None,
                library_name="bonito-etl")
    with hf_request_timeout(60), tempfile.TemporaryDirectory(prefix="bonito-baseline-") as cache:
        try:
            local = api.hf_hub_download(repo_id, path, repo_type="dataset", revision="main", cache_dir=cache)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        with open(local, "rb") as f:
            return f.read()


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class Compare(Stage):
    """Tonight's scorecard and its drift checks against the last release (see the module).

    `validated` is the validate stage's manifest; the chunk stage's is read from the run's folder.
    `gated`: a person approves publishing (the approval gate): drift beyond a failure threshold
    then commits with verdict "review" for the approver instead of failing the run.
    """

    name = StageName.COMPARE
    reads = (StageName.VALIDATE, StageName.CHUNK)
    config_fields = frozenset({"drift_kl_warning", "drift_kl_failure", "drift_rate_warning", "drift_rate_failure",
                               "hub_repo_id", "export_s3_uri"})

    def __init__(self, store: ArtifactStore, run: RunRef, config: RunConfig, validated: Manifest,
                 token: str | None = None, *, endpoint: str | None = None, gated: bool = False,
                 s3_client_kwargs: Mapping[str, Any] | None = None):
        chunks = StageWriter(store, run, StageName.CHUNK).committed()
        super().__init__(store, run, config, [validated, *([chunks] if chunks else [])])
        self.validated, self.chunks, self.gated = validated, chunks, gated
        self.baseline = read_baseline(config, token, endpoint=endpoint, s3_client_kwargs=s3_client_kwargs)

    def key_extra(self) -> dict[str, Any]:
        return {"baseline": self.baseline.raw_sha256 or self.baseline.note, "gated": self.gated}

    def work(self, writer: StageWriter) -> CompareMetrics:
        config, baseline = self.config, self.baseline
        scorecard = build_scorecard(self.run, self.validated, self.chunks, tag_name(self.run.run_id))
        metrics = CompareMetrics(scorecard=scorecard, baseline=baseline.scorecard,
                                 baseline_source=baseline.source, baseline_note=baseline.note)
        if baseline.scorecard is None:
            metrics.verdict = "warning" if "could not" in baseline.note or "not a scorecard" in baseline.note \
                else "first_release"
        else:
            metrics.baseline_run, metrics.baseline_tag = baseline.scorecard.run_id, baseline.scorecard.release_tag
            metrics.checks = drift_checks(scorecard, baseline.scorecard, kl_warning=config.drift_kl_warning,
                                          kl_failure=config.drift_kl_failure, rate_warning=config.drift_rate_warning,
                                          rate_failure=config.drift_rate_failure)
            metrics.verdict = verdict(metrics.checks)  # type: ignore[assignment]
            if metrics.verdict == "failure" and self.gated:
                metrics.verdict = "review"
        metrics.failures = sum(c.severity == "failure" for c in metrics.checks)
        metrics.warnings = sum(c.severity in ("warning", "not_computed") for c in metrics.checks)
        store = self.store
        key = f"{writer.prefix}/{SCORECARD_FILE}"
        store.write_bytes(key, scorecard.model_dump_json(indent=2).encode())
        metrics.scorecard_uri = store.uri(key)
        plot = f"{writer.prefix}/{PLOT_FILE}"
        store.write_bytes(plot, comparison_plot(scorecard, baseline.scorecard))
        metrics.plots = {PLOT_FILE: store.uri(plot)}
        store.write_bytes(f"{writer.prefix}/drift.json", metrics.model_dump_json(indent=2).encode())
        for line in report_lines(metrics):
            (log.warning if line.startswith(("FAILURE", "WARNING", "NOT_COMPUTED")) else log.info)("%s", line)
        if metrics.verdict == "failure":
            raise DriftFailed(failure_message(metrics))
        return metrics


def report_lines(metrics: CompareMetrics) -> list[str]:
    """The comparison as log lines: the baseline, then each check that is not ok (failures first)."""
    head = (f"compared with the release of run {metrics.baseline_run} ({metrics.baseline_source})"
            if metrics.baseline_run else f"no baseline: {metrics.baseline_note}")
    lines = [f"drift verdict: {metrics.verdict}; {head}"]
    if metrics.baseline_run and metrics.baseline_note:
        lines.append(metrics.baseline_note)
    order = {"failure": 0, "warning": 1, "not_computed": 2, "ok": 3}
    lines += [c.line() for c in sorted(metrics.checks, key=lambda c: order[c.severity]) if c.severity != "ok"]
    return lines


def failure_message(metrics: CompareMetrics) -> str:
    failed = [c for c in metrics.checks if c.severity == "failure"]
    return (f"tonight drifted from the last release (run {metrics.baseline_run}, tag {metrics.baseline_tag}) "
            f"beyond {len(failed)} failure threshold(s); nothing is published:\n"
            + "\n".join(f"- {c.line()}" for c in failed)
            + "\nIf the change is intended, raise the drift_* thresholds for this run (or turn on "
              "require_approval to review it); see dags/runbooks/compare.md.")


def compare_markdown(metrics: CompareMetrics) -> str:
    """The comparison for a person (the approval's body): the verdict and the checks that are not ok."""
    lines = report_lines(metrics)
    return "\n".join([f"**Drift since the last release**: {lines[0]}", "", *[f"- {line}" for line in lines[1:]]])


def scorecard_files(metrics: CompareMetrics | None) -> dict[str, bytes]:
    """The files a release adds to the dataset's `.bonito/`: the latest scorecard and its own copy."""
    if metrics is None:
        return {}
    data = metrics.scorecard.model_dump_json(indent=2).encode()
    return {LATEST_SCORECARD: data, release_scorecard_path(metrics.scorecard.release_tag): data}


def scorecard_digest(scorecard: Scorecard) -> str:
    return sha256_hex(canonical_json(scorecard.model_dump(exclude={"created_at"})))
