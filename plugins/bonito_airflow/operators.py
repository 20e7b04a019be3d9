"""Operators: thin wrappers over bonito_tasks stage calls."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from bonito_airflow.runtime import stage_ref, task_runtime


class BonitoGenerateOperator(BaseOperator):
    """Generates Bonito examples for one chunk shard (map it over the chunk task's output).

    Runs vLLM in-process (one GPU slot: put it in pool `gpu` and on the GPU workers' queue).
    Resumes from the shard's last checkpoint on retry; the engine is always shut down.
    """

    template_fields = ("chunk_shard",)
    ui_color = "#f6d8a8"

    def __init__(self, *, chunk_shard: dict[str, Any], aws_conn_id: str = "aws_default", **kwargs: Any):
        super().__init__(**kwargs)
        self.chunk_shard = chunk_shard
        self.aws_conn_id = aws_conn_id

    def execute(self, context) -> dict[str, Any]:
        from bonito_tasks.generate.run import generate_shard

        rt = task_runtime(context, self.aws_conn_id)
        chunks = rt.store.read_manifest(self.chunk_shard["manifest"])
        manifest = generate_shard(rt.store, rt.run, rt.config, chunks, self.chunk_shard["shard"])
        return stage_ref(manifest)
