"""The Dataset view: every DAG run's dataset inside the Airflow UI, served from the run's store.

A FastAPI app (`app.py`) mounted by the plugin under URL_PREFIX on the api-server, and shown as the
"Dataset" tab of a DAG run and of a task instance (external views). It reads the run's folder in
the store (local or S3, credentials from `aws_default`): the run summary and the cause of a failure,
the quality report, sample rows per task type, quarantined rows with the expectations they failed,
dropped generations and rejects, a page at a time. Only signed-in Airflow users who may read the
DAG's runs see it. `urls.py` builds its links (extra links, alerts, the approval gate).
"""
