"""The approval gate before publish (Airflow's HITL ApprovalOperator): off, it passes at once; on, it
asks with the pass rate, counts and a link to the Dataset view and waits; approve returns the
reviewer and note, reject and timeout fail without retries. Publish writes the decision into its
manifest and the card. The wait itself (the UI's Required Actions) runs in tests/deployment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from test_publish import RUN, make_config, make_inputs

from bonito_tasks.contracts import Approval
from bonito_tasks.publish import publish
from bonito_tasks.store import LocalStore

pytestmark = pytest.mark.airflow

VALIDATED = {"manifest": "/store/validate/_manifest.json", "counts": {"examples_in": 200, "passed": 180,
                                                                       "quarantined": 20, "examples": 180}}


def _operator():
    from bonito_airflow.approval import BonitoApprovalOperator

    return BonitoApprovalOperator(task_id="approve", examples=VALIDATED)


def _context(tmp_path, **params):
    values = {"source": str(tmp_path), "store": str(tmp_path / "store"), "note": None} | params
    return {"params": values, "dag_run": SimpleNamespace(dag_id="bonito_dataset", run_id="manual__r1"),
            "task_instance": SimpleNamespace(id="ti-1"), "ti": SimpleNamespace(id="ti-1")}


def test_off_passes_at_once(tmp_path):
    assert _operator().execute(_context(tmp_path)) == {"decision": "not_required", "reviewer": None, "note": None,
                                                       "decided_at": None}


def test_on_asks_with_pass_rate_counts_and_the_view_then_waits(tmp_path, monkeypatch):
    import airflow.providers.standard.operators.hitl as hitl
    from airflow.sdk.exceptions import TaskAwaitingInput

    asked = {}
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.update(kw))
    op = _operator()
    with pytest.raises(TaskAwaitingInput):
        op.execute(_context(tmp_path, require_approval=True, approval_timeout_minutes=90))
    assert asked["options"] == ["Approve", "Reject"] and asked["subject"] == "Publish 180 examples of run manual__r1?"
    assert "**180** of **200**" in asked["body"] and "pass rate **90.0%**" in asked["body"]
    assert "**20** were quarantined" in asked["body"]
    assert "/bonito/dags/bonito_dataset/runs/manual__r1#samples" in asked["body"]
    assert "note" in asked["params"] and op.response_timeout == timedelta(minutes=90)


def test_the_approver_sees_the_drift_comparison(tmp_path, monkeypatch):
    """With the approval gate on, drift beyond a failure threshold waits for a person (#24): the
    compare task's review is in the body."""
    import airflow.providers.standard.operators.hitl as hitl
    from airflow.sdk.exceptions import TaskAwaitingInput

    from bonito_airflow.approval import BonitoApprovalOperator

    asked = {}
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.update(kw))
    review = "**Drift since the last release**: drift verdict: review\n\n- FAILURE: labels of ynqa (...)"
    op = BonitoApprovalOperator(task_id="approve", examples=VALIDATED,
                                comparison={"manifest": "m", "verdict": "review", "review": review})
    with pytest.raises(TaskAwaitingInput):
        op.execute(_context(tmp_path, require_approval=True))
    assert asked["body"].endswith(review) and "pass rate **90.0%**" in asked["body"]


def _event(option: str, note: str | None):
    return {"chosen_options": [option], "params_input": {"note": note},
            "responded_at": datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
            "responded_by_user": {"id": "1", "name": "reviewer"}}


def test_approve_returns_the_reviewer_and_note(tmp_path):
    approval = _operator().execute_complete(_context(tmp_path), _event("Approve", " looks right "))
    assert approval == {"decision": "approved", "reviewer": "reviewer", "note": "looks right",
                        "decided_at": "2026-11-28T12:00:00+00:00"}


def test_reject_and_timeout_fail_without_retries(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="publishing rejected by reviewer: answers are made up"):
        _operator().execute_complete(_context(tmp_path), _event("Reject", "answers are made up"))
    with pytest.raises(AirflowFailException, match="no decision on publishing within 1440 min"):
        _operator().execute_complete(_context(tmp_path), {"error": "timed out", "error_type": "timeout"})


def test_publish_records_the_approval_in_manifest_and_card(tmp_path):
    store = LocalStore(tmp_path / "store")
    approval = Approval(decision="approved", reviewer="reviewer", note="spot-checked 20 rows",
                        decided_at="2026-11-28T12:00:00+00:00")
    manifest = publish(store, RUN, make_config(tmp_path), *make_inputs(store), token=None, approval=approval)
    assert manifest.metrics.approval == approval
    card = (tmp_path / "store" / store.key(manifest.metrics.dataset_uri) / "README.md").read_text()
    assert "Reviewed before publishing: approved by reviewer on 2026-11-28 (note: spot-checked 20 rows)" in card


# --- approval as the deployment's decision, a separate duty ------------------------------------------

@pytest.mark.parametrize(("policy", "hub", "scheduled", "param", "needed"), [
    ("scheduled-hub", "org/ds", True, False, True),   # the default: a nightly run publishing to the Hub
    ("scheduled-hub", "org/ds", False, False, False),
    ("scheduled-hub", None, True, False, False),
    ("hub", "org/ds", False, False, True),
    ("hub", None, False, False, False),
    ("always", None, False, False, True),
    ("never", "org/ds", True, False, False),
    ("never", None, False, True, True),               # the param can turn it on ...
])
def test_the_deployment_decides_and_the_param_can_only_add_it(tmp_path, policy, hub, scheduled, param, needed):
    from bonito_airflow.approval import approval_required
    from bonito_tasks.config import RunConfig

    config = RunConfig(source=str(tmp_path), store=str(tmp_path), hub_repo_id=hub, require_approval=param)
    assert bool(approval_required(config, scheduled, policy)) is needed


def test_a_run_conf_cannot_turn_off_what_the_deployment_requires(tmp_path, monkeypatch):
    import airflow.providers.standard.operators.hitl as hitl
    from airflow.sdk.exceptions import TaskAwaitingInput

    monkeypatch.setenv("BONITO_REQUIRE_APPROVAL", "always")  # ... and not off
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: None)
    with pytest.raises(TaskAwaitingInput):
        _operator().execute(_context(tmp_path, require_approval=False))


def test_a_bad_policy_names_the_variable(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("BONITO_REQUIRE_APPROVAL", "sometimes")
    with pytest.raises(AirflowFailException, match="BONITO_REQUIRE_APPROVAL='sometimes': must be one of always, hub"):
        _operator().execute(_context(tmp_path))


def test_approvers_are_assigned_less_the_user_who_triggered_the_run(tmp_path, monkeypatch):
    import airflow.providers.standard.operators.hitl as hitl
    from airflow.sdk.exceptions import AirflowFailException, TaskAwaitingInput

    asked = {}
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.update(kw))
    monkeypatch.setenv("BONITO_APPROVERS", "alice, bob")
    context = _context(tmp_path, require_approval=True)
    context["dag_run"].triggering_user_name = "bob"
    with pytest.raises(TaskAwaitingInput):
        _operator().execute(context)
    assert asked["assigned_users"] == [{"id": "alice", "name": "alice"}]
    monkeypatch.setenv("BONITO_APPROVERS", "bob")
    with pytest.raises(AirflowFailException, match="names only 'bob', who triggered this run and cannot approve it"):
        _operator().execute(context)


@pytest.mark.parametrize("option", ["Approve", "Reject"])
def test_the_user_who_triggered_the_run_cannot_decide_on_it(tmp_path, option):
    from airflow.sdk.exceptions import AirflowFailException

    context = _context(tmp_path)
    context["dag_run"].triggering_user_name = "reviewer"  # the responder of _event
    with pytest.raises(AirflowFailException, match="reviewer triggered this run and cannot also approve or reject"):
        _operator().execute_complete(context, _event(option, "mine"))
    context["dag_run"].triggering_user_name = "someone-else"
    if option == "Approve":
        assert _operator().execute_complete(context, _event(option, None))["decision"] == "approved"
