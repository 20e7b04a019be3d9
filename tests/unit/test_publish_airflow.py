"""The Airflow side of publish: BonitoPublishOperator, its "Dataset on Hugging Face" extra link, the
plugin that registers it and the asset alias events.

The operator test runs execute(context) in the Airflow providers' style, but with the real library
call against the loopback Hub server (tests/hub_server.py) rather than a mock; the token comes from
an AIRFLOW_CONN_* connection.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from unittest import mock

import pytest

from bonito_tasks.store import LocalStore
from tests.unit.test_publish import RUN, make_inputs

pytestmark = pytest.mark.airflow

REPO = "bonito-team/nightly"


@pytest.fixture
def hub(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def test_execute_publishes_returns_commit_and_emits_asset_event(hub, tmp_path, monkeypatch, caplog):
    from airflow.sdk import Asset, AssetAlias
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from bonito_airflow.operators import BonitoPublishOperator

    monkeypatch.setenv("AIRFLOW_CONN_HF_NIGHTLY", json.dumps({"conn_type": "huggingface", "password": hub.token}))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store)
    params = {"source": "/docs", "store": str(store.root), "task_types": ["exqa", "qa"], "hub_repo_id": REPO,
              "publish_mode": "append"}
    alias, dataset = AssetAlias("bonito_dataset/published"), Asset("bonito://bonito_dataset/dataset")
    op = BonitoPublishOperator(task_id="publish", examples={"manifest": examples.uri},
                               documents={"manifest": documents.uri}, hf_conn_id="hf_nightly", outlets=[dataset, alias])
    context = {"params": params, "dag_run": SimpleNamespace(dag_id=RUN.dag_id, run_id=RUN.run_id),
               "outlet_events": OutletEventAccessors(), "task": op}
    caplog.set_level(logging.DEBUG)
    result = op.execute(context)

    head = hub.repo(REPO).refs["main"]
    assert result["hub_url"] == f"{hub.url}/datasets/{REPO}" and result["hub_commit_sha"] == head
    assert result["counts"] == {"examples": 6, "documents": 3, "examples_added": 6, "duplicates_skipped": 0,
                                "near_duplicates_skipped": 0}
    assert "hub_pr_url" not in result
    assert hub.token not in json.dumps(result) and hub.token not in caplog.text
    [event] = context["outlet_events"][alias].asset_alias_events
    assert event.dest_asset_key.uri == f"hf://datasets/{REPO}"
    assert event.extra == {"run_id": RUN.run_id, "examples": 6, "examples_added": 6, "publish_mode": "append",
                           "repo_id": REPO, "revision": head, "pr_url": None}
    assert context["outlet_events"][dataset].extra == {"run_id": RUN.run_id, **result}
    assert op.template_fields == ("examples", "documents", "approval")


def _publish_task(tmp_path, **kwargs):
    """A publish operator over committed inputs, with the context of a run that targets REPO."""
    from bonito_airflow.operators import BonitoPublishOperator

    store = LocalStore(tmp_path / "store")
    examples, documents = make_inputs(store)
    context = {"params": {"source": "/docs", "store": str(store.root), "hub_repo_id": REPO},
               "dag_run": SimpleNamespace(dag_id=RUN.dag_id, run_id=RUN.run_id)}
    op = BonitoPublishOperator(task_id="publish", examples={"manifest": examples.uri},
                               documents={"manifest": documents.uri}, **kwargs)
    return op, context


def test_execute_without_token_fails_before_uploading(hub, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_tasks.errors import PermanentFailure
    from bonito_tasks.publish import PublishError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    op, context = _publish_task(tmp_path, hf_conn_id="no_such_connection")
    with pytest.raises(Exception, match="token") as raised:
        op.execute(context)
    assert hub.requests == []
    # The library's error, failing the task without retries exactly when the library says retrying cannot help.
    error = raised.value.__cause__ if isinstance(raised.value, AirflowFailException) else raised.value
    assert isinstance(error, PublishError)
    assert isinstance(raised.value, AirflowFailException) == isinstance(error, PermanentFailure)


@pytest.mark.parametrize("token_kind", ["invalid", "read-only"])
def test_execute_with_a_rejected_token_fails_without_retries(hub, tmp_path, monkeypatch, token_kind):
    """A 401/403 from the Hub is a PermanentFailure: the task fails at once (AirflowFailException),
    with no retry inside the library and none by Airflow."""
    from airflow.sdk.exceptions import AirflowFailException

    from bonito_tasks.publish import PublishRejected

    token = "hf_SECRETsecret123" if token_kind == "invalid" else hub.read_token  # 401, 403
    monkeypatch.setenv("AIRFLOW_CONN_HF_NIGHTLY", json.dumps({"conn_type": "huggingface", "password": token}))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    op, context = _publish_task(tmp_path, hf_conn_id="hf_nightly", retries=2)
    with pytest.raises(AirflowFailException, match="lacks write access") as raised:
        op.execute(context)
    assert isinstance(raised.value.__cause__, PublishRejected)
    assert len(hub.requests) == len(set(hub.requests))  # no request was repeated
    assert token not in str(raised.value)


@pytest.mark.parametrize("published, url", [
    ({"hub_url": "https://hf.co/datasets/o/d", "hub_commit_sha": "abc"}, "https://hf.co/datasets/o/d/tree/abc"),
    ({"hub_url": "https://hf.co/datasets/o/d", "hub_commit_sha": "abc",
      "hub_pr_url": "https://hf.co/datasets/o/d/discussions/3"}, "https://hf.co/datasets/o/d/discussions/3"),
    ({"dataset_uri": "/store/x", "hub_url": None}, ""),
    (None, ""),
])
def test_link_points_at_the_commit_or_pull_request(published, url):
    from bonito_airflow.links import HuggingFaceDatasetLink
    from bonito_airflow.operators import BonitoPublishOperator

    op = BonitoPublishOperator(task_id="publish", examples={}, documents={})
    ti_key = SimpleNamespace(dag_id="bonito_dataset", task_id="publish", run_id="r", map_index=-1)
    with mock.patch("airflow.sdk.execution_time.xcom.XCom.get_value", return_value=published) as get_value:
        assert HuggingFaceDatasetLink().get_link(op, ti_key=ti_key) == url
    get_value.assert_called_once_with(ti_key=ti_key, key="return_value")
    assert [link.name for link in op.operator_extra_links] == ["Dataset on Hugging Face"]


def test_plugin_registers_the_link_with_airflow():
    from airflow import plugins_manager

    names = [link.name for link in plugins_manager.get_operator_extra_links()]
    assert "Dataset on Hugging Face" in names


def test_dag_publish_task_has_link_and_asset_alias_outlet():
    from airflow.sdk import AssetAlias

    import bonito_dataset as dag_file  # dags/ (a DagBag parse of it is in tests/e2e/test_dag.py)
    from bonito_airflow.operators import BonitoPublishOperator

    publish = dag_file.bonito_dataset().get_task("publish")
    assert isinstance(publish, BonitoPublishOperator)
    assert publish.outlets == [dag_file.DATASET, AssetAlias("bonito_dataset/published")]
    assert dag_file.DATASET.uri == "bonito://bonito_dataset/dataset"
    assert [link.name for link in publish.operator_extra_links] == ["Dataset on Hugging Face"]
