"""Hooks: credentials come from Airflow connections (or the environment), never from params."""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException


class _ConnectionHook(BaseHook):
    """A hook over one connection: `conn_id`, or the class's `default_conn_name`."""

    conn_name_attr = "conn_id"
    default_conn_name: str

    def __init__(self, conn_id: str | None = None):
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name

    def connection_or_none(self):
        try:
            return self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            return None


class HuggingFaceHook(_ConnectionHook):
    """The Hugging Face Hub token from connection `huggingface_default` (password field, or
    extra `token`), falling back to the HF_TOKEN environment variable."""

    default_conn_name = "huggingface_default"
    conn_type = "huggingface"
    hook_name = "Hugging Face Hub"

    def get_token(self) -> str | None:
        conn = self.connection_or_none()
        from_conn = conn and (conn.password or conn.extra_dejson.get("token"))
        return from_conn or os.environ.get("HF_TOKEN") or None


class S3ConnectionHook(_ConnectionHook):
    """boto3 client arguments from an AWS-style connection (default `aws_default`): login and
    password are the access key pair; extra may hold endpoint_url (MinIO), region_name and
    aws_session_token. Without the connection boto3's own credential chain applies."""

    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "S3 (boto3)"

    def client_kwargs(self) -> dict[str, Any]:
        conn = self.connection_or_none()
        if conn is None:
            return {}
        extra = conn.extra_dejson
        kwargs = {
            "aws_access_key_id": conn.login or None,
            "aws_secret_access_key": conn.password or None,
            "aws_session_token": extra.get("aws_session_token"),
            "endpoint_url": extra.get("endpoint_url") or (extra.get("service_config", {}).get("s3", {})
                                                          .get("endpoint_url")),
            "region_name": extra.get("region_name"),
        }
        return {k: v for k, v in kwargs.items() if v}


class VllmServerHook(_ConnectionHook):
    """An OpenAI-compatible completions server (e.g. `vllm serve`) from connection
    `bonito_vllm_default`: host (with scheme) and port give the URL, password is the API key."""

    default_conn_name = "bonito_vllm_default"
    conn_type = "http"
    hook_name = "Bonito vLLM server"

    def endpoint(self) -> tuple[str, str | None]:
        conn = self.get_connection(self.conn_id)
        return _http_url(conn), (conn.password or None)


class AlertWebhookHook(_ConnectionHook):
    """Where alerts are posted: connection `bonito_alerts` (http; the host holds the whole webhook
    URL, e.g. a Slack incoming webhook, or host/port/schema build it). Without the connection,
    alerts are only logged. The URL is a secret: it is never logged."""

    default_conn_name = "bonito_alerts"
    conn_type = "http"
    hook_name = "Bonito alert webhook"

    def url(self) -> str | None:
        conn = self.connection_or_none()
        return _http_url(conn) if conn and conn.host else None


def _http_url(conn) -> str:
    """A connection's URL: its host when that holds a scheme, else schema://host[:port]."""
    host = conn.host if "://" in (conn.host or "") else f"{conn.schema or 'http'}://{conn.host}"
    return f"{host}:{conn.port}" if conn.port else host
