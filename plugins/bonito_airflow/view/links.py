"""Extra links into the Dataset view: "Quality report" and "Data Docs" on validate (they open the
view's quality section and the run's Great Expectations Data Docs, also when validate failed), and
"Dataset view" on any task. Built from the task instance's key and `[api] base_url`; registered
through plugin.py like every extra link."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

from bonito_airflow.view.urls import file_url, run_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def api_base_url() -> str:
    from airflow.sdk import conf

    return conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")


class DatasetViewLink(BaseOperatorLink):
    name = "Dataset view"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return run_url(api_base_url(), ti_key.dag_id, ti_key.run_id)


class QualityReportLink(BaseOperatorLink):
    name = "Quality report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return run_url(api_base_url(), ti_key.dag_id, ti_key.run_id, section="quality")


class DataDocsLink(BaseOperatorLink):
    name = "Data Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return file_url(api_base_url(), ti_key.dag_id, ti_key.run_id, "validate/data_docs/index.html")
