"""Near-duplicate examples in append mode: a new row whose instruction and output nearly repeat a
row the dataset already holds (or an earlier new row) is left out and counted.

An example's `input` holds its passage (the chunk) verbatim, and the passage dominates its words,
so two different questions about one passage look alike. Rows are therefore compared without the
passage: MinHash + LSH over input + output finds the candidates (a pair that shares its passage
is at least as similar with it as without), then each candidate pair is compared exactly on its
shingles (word 5-grams) minus the new row's passage's shingles. A pair at or over the threshold is
a near-duplicate. The new rows' passages come from this run's chunk stage; a row whose passage is
unknown is compared whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from bonito_tasks import minhash


def near_duplicates(old: pa.Table, new: pa.Table, threshold: float, contexts: Mapping[str, str]) -> np.ndarray:
    """Per row of `new` (in its order): True when it nearly repeats a row of `old` or an earlier
    row of `new` that is kept. `contexts`: chunk_id -> the chunk's text (the passage in the input)."""
    n_old, n_new = old.num_rows, new.num_rows
    skip = np.zeros(n_new, dtype=bool)
    if not n_new:
        return skip
    texts = [f"{i}\n{o}" for t in (old, new) for i, o in zip(t["input"].to_pylist(), t["output"].to_pylist())]
    shingled = minhash.shingles(texts)
    sigs = minhash.signatures(shingled)
    index = minhash.NearDupIndex(threshold)
    index.add(sigs)
    rows, ids, _ = index.matches(sigs[n_old:])
    earlier = ids < n_old + rows  # only rows before it: the dataset's, then the new rows in order
    rows, ids = rows[earlier], ids[earlier]
    if not len(rows):
        return skip
    chunk_ids = new["chunk_id"].to_pylist()
    passages: dict[str, np.ndarray] = {}
    own = {}

    def shingle_set(i: int) -> np.ndarray:
        if i not in own:
            own[i] = np.unique(shingled.hashes[shingled.offsets[i]:shingled.offsets[i + 1]])
        return own[i]

    for row, other in zip(rows.tolist(), ids.tolist()):
        if skip[row] or (other >= n_old and skip[other - n_old]):
            continue
        chunk_id = chunk_ids[row]
        if chunk_id not in passages:
            text = contexts.get(chunk_id)
            passages[chunk_id] = np.unique(minhash.shingles([text]).hashes) if text else np.zeros(0, np.uint64)
        passage = passages[chunk_id]
        a = np.setdiff1d(shingle_set(n_old + row), passage, assume_unique=True)
        b = np.setdiff1d(shingle_set(other), passage, assume_unique=True)
        union = len(np.union1d(a, b))
        if union == 0 or len(np.intersect1d(a, b, assume_unique=True)) / union >= threshold:
            skip[row] = True
    return skip
