"""Extra link "Dataset on Hugging Face" of the publish task: the repo at the commit it published
(or the pull request it opened), read from the task's XCom return value.

Airflow 3 computes the link on the worker when the task finishes and stores it in XCom; the UI shows
that stored value. The link class is also registered through plugin.py, as Airflow's docs ask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def dataset_url(published: Any) -> str:
    """The page of a publish task's result: its pull request, else the repo tree at its commit;
    empty when nothing went to the Hub."""
    if not isinstance(published, dict) or not published.get("hub_url"):
        return ""
    if published.get("hub_pr_url"):
        return published["hub_pr_url"]
    sha = published.get("hub_commit_sha")
    return f"{published['hub_url']}/tree/{sha}" if sha else published["hub_url"]


class HuggingFaceDatasetLink(BaseOperatorLink):
    name = "Dataset on Hugging Face"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return dataset_url(XCom.get_value(ti_key=ti_key, key="return_value"))
