"""The ledger of processed documents: which doc_ids (content hashes) a DAG has already published.

Layout: `<store>/<dag_id>/_ledger/part-<run_id>.parquet`, one part per run, written in one
atomic write after publish succeeded. Concurrent runs write different parts, so they cannot
corrupt each other; a retried run rewrites its own part with the same rows, so it never
appends twice. The ledger is the union of the parts.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from bonito_tasks.contracts import Manifest, RunRef
from bonito_tasks.store import ArtifactStore, parquet_bytes, safe_segment

LEDGER = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("recorded_at", pa.string(), nullable=False),
    ]
)


def ledger_prefix(dag_id: str) -> str:
    return f"{safe_segment(dag_id)}/_ledger"


def _parts(store: ArtifactStore, dag_id: str) -> list[str]:
    # Only committed parts: a local write in progress is a hidden temp file.
    return [k for k in store.list(ledger_prefix(dag_id))
            if k.rsplit("/", 1)[-1].startswith("part-") and k.endswith(".parquet")]


def load_ledger(store: ArtifactStore, dag_id: str) -> set[str]:
    """Every doc_id recorded for the DAG (hashes only: about 100 bytes per document)."""
    known: set[str] = set()
    for key in _parts(store, dag_id):
        known.update(pq.read_table(io.BytesIO(store.read_bytes(key)), columns=["doc_id"])["doc_id"].to_pylist())
    return known


def update_ledger(store: ArtifactStore, run: RunRef, documents: Manifest) -> dict:
    """Record the documents of a run's extract stage; call only after publish succeeded."""
    recorded_at = datetime.now(UTC).isoformat()
    ids, uris = [], []
    for shard in range(len(documents.shards_of("documents"))):
        table = store.read_shard(documents, "documents", shard, columns=["doc_id", "source_uri"])
        ids += table["doc_id"].to_pylist()
        uris += table["source_uri"].to_pylist()
    table = pa.table({"doc_id": ids, "source_uri": uris, "run_id": [run.run_id] * len(ids),
                      "recorded_at": [recorded_at] * len(ids)}, schema=LEDGER)
    key = f"{ledger_prefix(run.dag_id)}/part-{safe_segment(run.run_id)}.parquet"
    uri = store.write_bytes(key, parquet_bytes(table))
    return {"ledger_part": uri, "recorded": len(ids)}
