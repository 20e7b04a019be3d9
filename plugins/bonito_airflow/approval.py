"""The optional approval gate before publish: Airflow's human-in-the-loop ApprovalOperator (standard
provider), asking a person to approve the validated examples in the UI (the task's "Required
Actions"), with the pass rate, the counts and a link to the run's Dataset view.

- `require_approval` off (the default): the task succeeds at once with decision `not_required` and
  publish runs. It does not skip: a skipped upstream would skip publish (its trigger rule is
  all_success), and loosening that would let publish run after a skipped validate.
- Approve: the task returns the decision, the reviewer and their note; publish writes them into its
  manifest (`PublishMetrics.approval`) and the dataset card.
- Reject: the task fails (no retries) with the reviewer's note, so the run fails and nothing is
  published. No decision within `approval_timeout_minutes`: the same, naming the timeout.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowFailException

from bonito_tasks.config import RunConfig
from bonito_tasks.contracts import Approval

NOTE_PARAM = "note"


def run_config(context) -> RunConfig:
    """The run's config: the task's params (the DAG's, plus this task's own form field), with a
    scheduled run's own settings laid over them, as every other task sees them."""
    from bonito_airflow.schedule import run_values

    return RunConfig(**{k: v for k, v in run_values(context).items() if k in RunConfig.model_fields})


def review_body(examples: dict[str, Any], view_url: str) -> str:
    """What the reviewer reads (Markdown): pass rate, counts, and where to look at the rows."""
    counts = examples.get("counts", {}) if isinstance(examples, dict) else {}
    passed, quarantined = counts.get("passed", counts.get("examples", 0)), counts.get("quarantined", 0)
    rows = counts.get("examples_in") or passed + quarantined
    rate = f"{passed / rows:.1%}" if rows else "n/a"
    return (f"Validation passed **{passed}** of **{rows}** generated examples (pass rate **{rate}**); "
            f"**{quarantined}** were quarantined.\n\n"
            f"Look at the samples per task type, the quarantined rows and the quality report in the run's "
            f"[Dataset view]({view_url}) before deciding.\n\n"
            "**Approve** publishes the dataset. **Reject** fails the run with your note; nothing is published.")


class BonitoApprovalOperator(ApprovalOperator):
    """Waits for a person to approve publishing the validated `examples` (the validate task's output)
    when the run's `require_approval` is on; returns the decision as an `Approval` dict."""

    template_fields = (*ApprovalOperator.template_fields, "examples")
    ui_color = "#fce4ec"

    def __init__(self, *, examples: dict[str, Any], **kwargs: Any):
        # In a DAG, `params` arrive merged with the DAG's (source "dag"); the form shows this task's own.
        params = ParamsDict(kwargs.pop("params", None) or {})
        params[NOTE_PARAM] = Param(None, type=["null", "string"], title="Note", source="task",
                                   description="Why you approve or reject (kept in the manifest and the card).")
        super().__init__(subject="Publish this run's dataset?", params=params, **kwargs)
        self.examples = examples

    def execute(self, context) -> Any:
        from bonito_airflow.runtime import run_folder
        from bonito_airflow.view.links import api_base_url
        from bonito_airflow.view.urls import run_url

        config = run_config(context)
        self.log.info("run folder: %s", run_folder(config, context["dag_run"].dag_id, context["dag_run"].run_id))
        if not config.require_approval:
            self.log.info("require_approval is off: the dataset is published without review")
            return Approval(decision="not_required").model_dump()
        dag_run = context["dag_run"]
        view = run_url(api_base_url(), dag_run.dag_id, dag_run.run_id, "samples")
        counts = self.examples.get("counts", {}) if isinstance(self.examples, dict) else {}
        self.subject = f"Publish {counts.get('passed', counts.get('examples', 0))} examples of run {dag_run.run_id}?"
        self.body = review_body(self.examples, view)
        self.response_timeout = timedelta(minutes=config.approval_timeout_minutes)
        self.log.info("waiting up to %g min for a decision; review the rows at %s", config.approval_timeout_minutes,
                      view)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if "error" in event:
            minutes = run_config(context).approval_timeout_minutes
            if event.get("error_type") == "timeout":
                raise AirflowFailException(f"no decision on publishing within {minutes:g} min "
                                           "(approval_timeout_minutes): the run fails and nothing is published")
            raise AirflowFailException(f"the approval could not complete: {event.get('error')}")
        result = HITLOperator.execute_complete(self, context, event)
        user = result.get("responded_by_user") or {}
        reviewer = user.get("name") or user.get("id") or "unknown"
        note = ((result.get("params_input") or {}).get(NOTE_PARAM) or "").strip() or None
        if result["chosen_options"][0] == self.REJECT:
            raise AirflowFailException(f"publishing rejected by {reviewer}: {note or '(no note)'}")
        decided = result.get("responded_at")
        self.log.info("publishing approved by %s%s", reviewer, f": {note}" if note else "")
        return Approval(decision="approved", reviewer=reviewer, note=note,
                        decided_at=decided.isoformat() if isinstance(decided, datetime) else decided).model_dump()
