"""The passages examples were made from: the chunk texts an example's `chunk_id` names, read from the
chunk stage's parts without reading the others' texts."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from bonito_tasks.contracts import Manifest
from bonito_tasks.store import ArtifactStore


def chunk_texts(store: ArtifactStore, chunks: Manifest, wanted: set[str], first: Sequence[int] = ()) -> pa.Table:
    """(chunk_id, text) of the chunks `wanted` names: read from the chunk parts `first` (those that
    most likely hold them), then from the others, whose ids are read before any text; stops once
    every chunk is found. Memory: the texts found and one part."""
    wanted = set(wanted)
    n_parts = len(chunks.shards_of("chunks"))
    own = [p for p in first if p < n_parts]
    found: list[pa.Table] = []
    for index in own + [p for p in range(n_parts) if p not in own]:
        if not wanted:
            break
        value_set = pa.array(sorted(wanted), pa.string())
        if index not in own:
            ids = store.read_shard(chunks, "chunks", index, columns=["chunk_id"])["chunk_id"]
            if not pc.any(pc.is_in(ids, value_set=value_set)).as_py():
                continue
        part = store.read_shard(chunks, "chunks", index, columns=["chunk_id", "text"])
        part = part.filter(pc.is_in(part["chunk_id"], value_set=value_set))
        wanted -= set(part["chunk_id"].to_pylist())
        found.append(part)
    if not found:
        return pa.table({"chunk_id": pa.array([], pa.string()), "text": pa.array([], pa.large_string())})
    return pa.concat_tables(found)
