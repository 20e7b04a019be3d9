"""The Airflow plugin of bonito-etl: registers the publish task's extra link."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from bonito_airflow.links import HuggingFaceDatasetLink


class BonitoPlugin(AirflowPlugin):
    name = "bonito_etl"
    operator_extra_links = [HuggingFaceDatasetLink()]
