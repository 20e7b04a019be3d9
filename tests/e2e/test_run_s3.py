"""`make run SOURCE=s3://bucket/prefix` (bonito_dev/run.py) runs the whole DAG on documents in S3: the
loopback S3 server holds the bundled samples, connection aws_default points at it, and the command
is run as make runs it, in its own process with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DOCS

pytestmark = [pytest.mark.airflow, pytest.mark.vllm, pytest.mark.timeout(1200)]


def test_make_run_on_an_s3_source(s3_bucket, tmp_path):
    import boto3

    bucket, kwargs = s3_bucket
    client = boto3.client("s3", **kwargs)
    samples = sorted(p for p in SAMPLE_DOCS.iterdir() if p.suffix in (".md", ".txt"))[:2]
    for path in samples:
        client.upload_file(str(path), bucket, f"docs/{path.name}")
    connection = {"conn_type": "aws", "login": kwargs["aws_access_key_id"],
                  "password": kwargs["aws_secret_access_key"],
                  "extra": {"endpoint_url": kwargs["endpoint_url"], "region_name": "us-east-1"}}
    env = os.environ | {"AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
                        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("plugins", "dags", "."))}
    env.pop("AIRFLOW_HOME", None)  # the command sets up its own, under --output-dir
    conf = {"task_types": ["exqa"], "full_refresh": True}

    done = subprocess.run([sys.executable, "-m", "bonito_dev.run", f"s3://{bucket}/docs/", "--tiny",
                           "--output-dir", str(tmp_path), "--conf", json.dumps(conf)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1100)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "quality gates are lowered" in done.stderr and "min_pass_rate: 0.9 -> 0.0" in done.stderr
    summaries = list((tmp_path / "store" / "bonito_dataset").glob("*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["extracted"]["documents"] == len(samples), summary
    assert summary["stages"]["publish"] == "committed", summary["stages"]
    assert "dataset (" in done.stdout
