# The bonito-etl Airflow image: Airflow 3.3 with this project and its pinned dependencies (CPU vLLM).
FROM python:3.11-slim-bookworm
ENV AIRFLOW_HOME=/opt/airflow PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/bonito-etl
COPY pyproject.toml constraints.txt README.md ./
COPY bonito_tasks ./bonito_tasks
RUN pip install --no-cache-dir -c constraints.txt ".[airflow,cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec
COPY dags /opt/airflow/dags
COPY plugins /opt/airflow/plugins
WORKDIR /opt/airflow
