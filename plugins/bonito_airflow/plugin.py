"""The Airflow plugin of bonito-etl: the extra links, and the Dataset view (a FastAPI app on the
api-server, shown as a "Dataset" tab on every DAG run and task instance)."""

from __future__ import annotations

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from bonito_airflow.links import HuggingFaceDatasetLink
from bonito_airflow.view.links import DataDocsLink, DatasetViewLink, QualityReportLink
from bonito_airflow.view.urls import URL_PREFIX, base_path

# The UI fills {DAG_ID}, {RUN_ID} and {TASK_ID} in; the path honours a UI served under a sub-path.
_VIEW = base_path(conf.get("api", "base_url", fallback="")) + URL_PREFIX + "/dags/{DAG_ID}/runs/{RUN_ID}"


class BonitoPlugin(AirflowPlugin):
    name = "bonito_etl"
    operator_extra_links = [HuggingFaceDatasetLink(), QualityReportLink(), DataDocsLink(), DatasetViewLink()]
    external_views = [
        {"name": "Dataset", "href": _VIEW, "destination": "dag_run", "url_route": "bonito-dataset"},
        {"name": "Dataset", "href": _VIEW + "/tasks/{TASK_ID}", "destination": "task_instance",
         "url_route": "bonito-dataset-task"},
    ]

    # Airflow declares a plain class attribute, which it only reads (plugins_manager): a read-only
    # property is a safe override there.
    @property
    def fastapi_apps(self) -> list[dict]:  # type: ignore[override]
        """The view's app, imported only where it is read (the api-server): every task process loads
        plugins too, and FastAPI with the templates costs it ~0.4 s."""
        from bonito_airflow.view.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Bonito Dataset view"}]
