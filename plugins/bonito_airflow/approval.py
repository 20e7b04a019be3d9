"""The approval gate before publish: Airflow's human-in-the-loop ApprovalOperator (standard
provider), asking a person to approve the validated examples in the UI (the task's "Required
Actions"), with the pass rate, the counts and a link to the run's Dataset view.

Whether a run needs approval is the deployment's decision (`BONITO_REQUIRE_APPROVAL`, see
`approval_required`); a run's `require_approval` param can only add it. Who approves is the
deployment's too: `BONITO_APPROVERS` (user ids as the auth manager names them) become the HITL
task's `assigned_users`, less the user who triggered the run; and whoever answers, a decision by
the user who triggered the run fails the task (a separate duty: nothing is published).

- No approval needed: the task succeeds at once with decision `not_required` and
  publish runs. It does not skip: a skipped upstream would skip publish (its trigger rule is
  all_success), and loosening that would let publish run after a skipped validate.
- Approve: the task returns the decision, the reviewer and their note; publish writes them into its
  manifest (`PublishMetrics.approval`) and the dataset card.
- Reject: the task fails (no retries) with the reviewer's note, so the run fails and nothing is
  published. No decision within `approval_timeout_minutes`: the same, naming the timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param, XComArg
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowFailException

from bonito_tasks.config import ConfigRejected, RunConfig
from bonito_tasks.contracts import Approval
from bonito_tasks.errors import PermanentFailure

if TYPE_CHECKING:
    from airflow.sdk.execution_time.hitl import HITLUser

NOTE_PARAM = "note"
POLICY_VAR = "BONITO_REQUIRE_APPROVAL"
APPROVERS_VAR = "BONITO_APPROVERS"
# always: every run; hub: runs that publish to a Hub repo; scheduled-hub (the default): scheduled
# runs that publish to a Hub repo; never: only runs whose require_approval param asks for it.
POLICIES = ("always", "hub", "scheduled-hub", "never")
DEFAULT_POLICY = "scheduled-hub"


def run_config(context) -> RunConfig:
    """The run's config: the task's params (the DAG's, plus this task's own form field), with a
    scheduled run's own settings laid over them, as every other task sees them."""
    from bonito_airflow.schedule import run_values

    return RunConfig(**{k: v for k, v in run_values(context).items() if k in RunConfig.model_fields})


def approval_policy(environ: Mapping[str, str] | None = None) -> str:
    """$BONITO_REQUIRE_APPROVAL (default scheduled-hub); ConfigRejected names a value not in POLICIES."""
    environ = os.environ if environ is None else environ
    policy = (environ.get(POLICY_VAR) or DEFAULT_POLICY).strip().lower()
    if policy not in POLICIES:
        raise ConfigRejected(f"{POLICY_VAR}={environ.get(POLICY_VAR)!r}: must be one of {', '.join(POLICIES)}")
    return policy


def approval_required(config: RunConfig, scheduled: bool, policy: str) -> str | None:
    """Why this run needs approval (None: it does not). The run's param can only turn it on."""
    if config.require_approval:
        return "the run's require_approval param"
    if policy == "always":
        return f"{POLICY_VAR}=always"
    if config.hub_repo_id and (policy == "hub" or (policy == "scheduled-hub" and scheduled)):
        return f"{POLICY_VAR}={policy}: {'a scheduled run' if scheduled else 'a run'} publishing to the Hub"
    return None


def approvers(environ: Mapping[str, str] | None = None) -> list[str]:
    """The user ids of $BONITO_APPROVERS (comma-separated); empty: the auth manager decides who may
    answer (whoever may edit the DAG's HITL details)."""
    from bonito_tasks.access import split_list

    return list(split_list((os.environ if environ is None else environ).get(APPROVERS_VAR)))


def assigned_users(approver_ids: list[str], triggered_by: str | None) -> list[HITLUser] | None:
    """The HITL task's assigned_users: the approvers less the user who triggered the run; None when
    no approvers are set. A PermanentFailure when the triggering user is the only one."""
    if not approver_ids:
        return None
    users: list[HITLUser] = [{"id": a, "name": a} for a in approver_ids if a != triggered_by]
    if not users:
        raise PermanentFailure(f"{APPROVERS_VAR} names only {triggered_by!r}, who triggered this run and cannot "
                               "approve it: add another approver")
    return users


def _same_user(user: Mapping[str, Any], triggered_by: str | None) -> bool:
    return bool(triggered_by) and triggered_by in (str(user.get("id") or ""), str(user.get("name") or ""))


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
    when the deployment's policy or the run's `require_approval` asks for it; returns the decision
    as an `Approval` dict."""

    template_fields = (*ApprovalOperator.template_fields, "examples", "comparison")
    ui_color = "#fce4ec"

    def __init__(self, *, examples: dict[str, Any] | XComArg, comparison: dict[str, Any] | XComArg | None = None,
                 **kwargs: Any):
        # In a DAG, `params` arrive merged with the DAG's (source "dag"); the form shows this task's own.
        params = ParamsDict(kwargs.pop("params", None) or {})
        params[NOTE_PARAM] = Param(None, type=["null", "string"], title="Note", source="task",
                                   description="Why you approve or reject (kept in the manifest and the card).")
        super().__init__(subject="Publish this run's dataset?", params=params, **kwargs)
        self.examples = examples
        self.comparison = comparison  # the compare task's output: its drift review (#24, docs/releases.md)

    def execute(self, context) -> Any:
        from bonito_airflow.runtime import checked_config, run_folder
        from bonito_airflow.schedule import is_scheduled
        from bonito_airflow.view.links import api_base_url
        from bonito_airflow.view.urls import run_url

        dag_run = context["dag_run"]
        try:
            config = checked_config(context)  # where it reads and writes, checked again
            self.log.info("run folder: %s", run_folder(config, dag_run.dag_id, dag_run.run_id))
            reason = approval_required(config, is_scheduled(context), approval_policy())
            triggered_by = getattr(dag_run, "triggering_user_name", None)
            if reason:
                self.assigned_users = assigned_users(approvers(), triggered_by)
        except PermanentFailure as failure:
            raise AirflowFailException(str(failure)) from failure
        if not reason:
            self.log.info("no approval needed (%s=%s, require_approval off): the dataset is published without "
                          "review", POLICY_VAR, approval_policy())
            return Approval(decision="not_required").model_dump()
        self.log.info("approval needed: %s; approvers: %s; the user who triggered the run (%s) cannot approve it",
                      reason, ", ".join(u["id"] for u in self.assigned_users or []) or
                      "whoever the auth manager lets answer", triggered_by or "none: scheduled")
        view = run_url(api_base_url(), dag_run.dag_id, dag_run.run_id, "samples")
        examples = self.examples if isinstance(self.examples, dict) else {}
        counts = examples.get("counts", {})
        self.subject = f"Publish {counts.get('passed', counts.get('examples', 0))} examples of run {dag_run.run_id}?"
        self.body = review_body(examples, view)
        if isinstance(self.comparison, dict) and self.comparison.get("review"):
            self.body += "\n\n" + str(self.comparison["review"])
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
        triggered_by = getattr(context["dag_run"], "triggering_user_name", None)
        if _same_user(user, triggered_by):
            raise AirflowFailException(f"{reviewer} triggered this run and cannot also approve or reject it (a "
                                       "separate duty): nothing is published; trigger a new run for another "
                                       "approver to review")
        if result["chosen_options"][0] == self.REJECT:
            raise AirflowFailException(f"publishing rejected by {reviewer}: {note or '(no note)'}")
        decided = result.get("responded_at")
        self.log.info("publishing approved by %s%s", reviewer, f": {note}" if note else "")
        return Approval(decision="approved", reviewer=reviewer, note=note,
                        decided_at=decided.isoformat() if isinstance(decided, datetime) else decided).model_dump()
