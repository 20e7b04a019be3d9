"""The compare stage: tonight's scorecard and its drift checks against the last release published
to the same target (bonito_tasks.release has the scorecard, the baseline and the checks)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import CheckFindings, CompareMetrics, ExpectationOutcome, Manifest, RunRef, StageName
from bonito_tasks.errors import PermanentFailure
from bonito_tasks.release import DRIFT_FILE, PLOT_FILE, REPORT_FILE, SCORECARD_FILE, read_baseline, tag_name
from bonito_tasks.release.drift import drift_checks, verdict
from bonito_tasks.release.scorecard import build_scorecard, comparison_plot
from bonito_tasks.stage import Stage, StageWriter
from bonito_tasks.store import ArtifactStore

log = logging.getLogger(__name__)


class DriftFailed(PermanentFailure):
    """Tonight drifted from the last release beyond a failure threshold; the same data drifts the same way.
    `findings`: the failing checks as expectation outcomes (the run summary's cause and the Dataset view
    show them with observed value and threshold)."""

    def __init__(self, message: str, findings: CheckFindings):
        super().__init__(message)
        self.findings = findings

    def __reduce__(self):
        return type(self), (str(self), self.findings)


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
        elif baseline.scorecard.run_id == self.run.run_id and baseline.scorecard.dag_id == self.run.dag_id:
            # compare cleared after this run published: the baseline is this run's own release
            metrics.verdict = "pass"
            metrics.baseline_note = "the last release is this run's own (already published): nothing to compare"
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
        store.write_bytes(f"{writer.prefix}/{DRIFT_FILE}", metrics.model_dump_json(indent=2).encode())
        store.write_bytes(f"{writer.prefix}/{REPORT_FILE}", report_page(metrics).encode())
        for line in report_lines(metrics):
            (log.warning if line.startswith(("FAILURE", "WARNING", "NOT_COMPUTED")) else log.info)("%s", line)
        if metrics.verdict == "failure":
            raise DriftFailed(failure_message(metrics), findings(self.run, metrics))
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


def report_page(metrics: CompareMetrics) -> str:
    """The comparison as a page beside the plot (compare/report.html): the verdict, the baseline and
    every check with its expectation, baseline value, tonight's value and thresholds."""
    import html

    def cell(value: object) -> str:
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    lines = report_lines(metrics)
    rows = "".join("<tr>" + "".join(cell(v) for v in (c.severity, c.name, c.expectation, c.value, c.baseline,
                                                      c.tonight, c.warning, c.failure, c.note)) + "</tr>"
                   for c in metrics.checks)
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in lines[1:] if not line.startswith(
        ("FAILURE", "WARNING", "NOT_COMPUTED")))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Bonito drift report</title></head>"
            "<body style='font-family:sans-serif'><h1>Drift since the last release</h1>"
            f"<p>{html.escape(lines[0])}</p>{notes}"
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>severity</th><th>check</th>"
            "<th>expectation</th><th>value</th><th>baseline</th><th>tonight</th><th>warning at</th>"
            f"<th>failure at</th><th>note</th></tr>{rows}</table>"
            f"<h2>Tonight beside the baseline</h2><img src='{PLOT_FILE}' alt='tonight vs the baseline'></body></html>")


def findings(run: RunRef, metrics: CompareMetrics) -> CheckFindings:
    """The failing checks as expectation outcomes: observed value and threshold, baseline and tonight."""
    failed = [ExpectationOutcome(name=c.name, level="release", expectation=c.expectation, success=False,
                                 observed_value=c.value, bound={"threshold": c.failure},
                                 expected=c.line().split("; ", 1)[-1]).model_dump()
              for c in metrics.checks if c.severity == "failure"]
    return CheckFindings(dag_id=run.dag_id, run_id=run.run_id, failed=failed)


def failure_message(metrics: CompareMetrics) -> str:
    failed = [c for c in metrics.checks if c.severity == "failure"]
    return (f"tonight drifted from the last release (run {metrics.baseline_run}, tag {metrics.baseline_tag}) "
            f"beyond {len(failed)} failure threshold(s) ({', '.join(c.name for c in failed)}); nothing is published:\n"
            + "\n".join(f"- {c.line()}" for c in failed)
            + "\nIf the change is intended, raise the drift_* thresholds for this run (or turn on "
              "require_approval to review it); see dags/runbooks/compare.md.")


def compare_markdown(metrics: CompareMetrics) -> str:
    """The comparison for a person (the approval's body): the verdict and the checks that are not ok."""
    lines = report_lines(metrics)
    return "\n".join([f"**Drift since the last release**: {lines[0]}", "", *[f"- {line}" for line in lines[1:]]])
