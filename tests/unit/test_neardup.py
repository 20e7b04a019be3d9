"""Near-duplicate chunks: MinHash + LSH (bonito_tasks/minhash.py) within a run (kept once, the other
places in also_in, the same with one partition or many) and against earlier runs (signatures
recorded after publish, next to the ledger; narrowed to the task types still missing)."""

import hashlib

import numpy as np
import pytest

from bonito_tasks import minhash
from bonito_tasks.chunk import chunk
from bonito_tasks.chunk.neardup import compact, load_earlier, neardup_prefix, record_signatures
from bonito_tasks.contracts import RunRef
from bonito_tasks.extract import extract
from bonito_tasks.store import LocalStore
from conftest import make_config

BASE = ("The harbour master keeps a register of every vessel that enters the port, with its tonnage, its cargo "
        "and the name of its captain. The register is open to the public on weekdays, and copies of older "
        "volumes are kept in the town archive, where historians use them to trace the trade of the region.")
NEAR = BASE.replace("on weekdays", "on working days")  # one edit: estimated similarity about 0.8-0.9
OTHER = ("Bees communicate the direction and distance of flowers through a dance performed on the comb. The "
         "angle of the dance relative to vertical encodes the direction of the sun, and its duration the distance.")


def test_signatures_estimate_similarity_and_the_index_finds_near_duplicates():
    sigs = minhash.text_signatures([BASE, NEAR, OTHER, BASE.upper().replace(",", " ,")])
    similarity = minhash.similarities(sigs[[0, 0, 0]], sigs[[1, 2, 3]])
    assert similarity[0] >= 0.8 and similarity[1] < 0.2 and similarity[2] == 1.0  # case and punctuation ignored
    index = minhash.NearDupIndex(0.8)
    assert list(index.add(sigs[:1])) == [0]
    assert list(index.first_match(sigs)) == [0, 0, -1, 0]
    bands, rows = minhash.lsh_params(0.8)
    assert bands * rows <= minhash.NUM_PERM and bands > 1


def test_shingles_do_not_depend_on_the_batch():
    texts = [BASE, NEAR, OTHER, "short text", "", "ÉCOLE und Straße: 東京", "one two three four five", "x"] * 3
    batch = minhash.shingles(texts)
    for i, text in enumerate(texts):
        alone = minhash.shingles([text])
        assert np.array_equal(alone.hashes, batch.hashes[batch.offsets[i]:batch.offsets[i + 1]])
    assert np.array_equal(minhash.signatures(batch.take(np.array([2, 0]))),
                          minhash.signatures(batch)[[2, 0]])


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_shingles_signatures_and_band_keys_keep_their_values():
    """Signatures recorded by earlier runs are compared with new ones (neardup.PARAMS): any change to
    the shingle hashes, the signatures or the band keys must come with a new PARAMS version."""
    texts = ["The Harbour master keeps a register of every vessel, with its tonnage and cargo.",
             "Ünïcode TEXT: ÉCOLE, straße, ΣΟΦΊΑ, 東京 and 42 km/h!", "two words", "", "... ---"]
    shingled = minhash.shingles(texts)
    assert shingled.offsets.tolist() == [0, 10, 16, 17, 17, 17]
    assert digest(shingled.hashes.astype("<u8")) == "2aa372bd6467d0865ae23c842e0718bf9eccb3d793d22e12da3851ccb06ea8a2"
    sigs = minhash.signatures(shingled)
    assert digest(sigs.astype("<u4")) == "4ad76b58d3574b9400c9ab4f28e997173085995cdac69ca0d8044a68402dd458"
    keys = minhash.band_keys(sigs, *minhash.lsh_params(0.8))
    assert digest(keys.astype("<u8")) == "4677f9b3caf6ce97e48c3a6801d52eb2d3d1ca12496c1fd894aabe53a2833c15"


def test_the_index_grows_in_runs_and_finds_every_earlier_copy():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(5000, minhash.NUM_PERM), dtype=np.uint32)
    index = minhash.NearDupIndex(0.8)
    for start in range(0, 5000, 700):
        index.add(sigs[start:start + 700])
    assert len(index) == 5000 and len(index._runs.runs) < 8  # merged, LSM style
    probe = sigs[[17, 4999, 2500]].copy()
    probe[:, :10] = 0  # about 92% of the values kept: still near
    assert list(index.first_match(probe)) == [17, 4999, 2500]
    assert index.nbytes < 5000 * (minhash.SIGNATURE_BYTES + 12 * 16) * 1.6


def write_source(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text)
    return folder


def test_near_duplicates_are_kept_once_with_their_places_in_also_in(tmp_path):
    source = write_source(tmp_path / "src", {"a.txt": BASE, "b.txt": NEAR, "c.txt": OTHER, "d.txt": NEAR + " "})
    store = LocalStore(tmp_path / "store")
    run = RunRef(dag_id="d", run_id="r1")
    manifest = chunk(store, run, make_config(tmp_path, source=str(source)),
                     extract(store, run, make_config(tmp_path, source=str(source))))
    rows = store.read_table(manifest, "chunks").to_pylist()
    assert [r["text"] for r in rows] == [BASE, OTHER]
    assert len(rows[0]["also_in"]) == 2  # b.txt (near) and d.txt (near, its text the same as b's)
    assert manifest.metrics.near_duplicate_chunks == 1 and manifest.metrics.duplicate_chunks == 2
    off = make_config(tmp_path, source=str(source), near_dup_threshold=None)
    run2 = RunRef(dag_id="d", run_id="r2")
    plain = chunk(store, run2, off, extract(store, run2, off))
    assert [r["text"] for r in store.read_table(plain, "chunks").to_pylist()] == [BASE, NEAR, OTHER]


def test_one_partition_and_many_keep_the_same_near_duplicates(tmp_path):
    texts = {f"f{i:02d}.txt": (BASE if i % 3 == 0 else NEAR if i % 3 == 1 else OTHER).replace(
        "register", f"register {i // 3}") for i in range(12)}
    source = write_source(tmp_path / "src", texts)
    results = []
    for name, extra in (("one", {}), ("many", {"partition_bytes": 700})):
        store, run = LocalStore(tmp_path / name), RunRef(dag_id="d", run_id="r")
        config = make_config(tmp_path, source=str(source), **extra)
        documents = extract(store, run, config)
        manifest = chunk(store, run, config, documents)
        results.append((documents.metrics.partitions, store.read_table(manifest, "chunks").to_pylist(),
                        manifest.metrics.near_duplicate_chunks))
    (one_parts, one_rows, one_near), (many_parts, many_rows, many_near) = results
    assert one_parts == 1 and many_parts >= 4
    assert one_rows == many_rows and one_near == many_near > 0


def test_earlier_runs_chunks_are_skipped_for_their_task_types_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    first_src = write_source(tmp_path / "src1", {"a.txt": BASE})
    run1 = RunRef(dag_id="d", run_id="r1")
    config1 = make_config(tmp_path, source=str(first_src))
    chunk(store, run1, config1, extract(store, run1, config1))
    assert load_earlier(store, "d", config1) is not None and len(load_earlier(store, "d", config1)) == 0
    recorded = record_signatures(store, run1, config1)  # the ledger task, after publish
    assert recorded.signatures_recorded == 1 and recorded.neardup_part.startswith(neardup_prefix("d"))
    assert record_signatures(store, run1, config1).neardup_part == recorded.neardup_part  # a retry: same part

    # A new document that nearly repeats the passage: nothing to generate for exqa.
    second_src = write_source(tmp_path / "src2", {"b.txt": NEAR, "c.txt": OTHER})
    run2 = RunRef(dag_id="d", run_id="r2")
    config2 = make_config(tmp_path, source=str(second_src))
    manifest = chunk(store, run2, config2, extract(store, run2, config2))
    rows = store.read_table(manifest, "chunks").to_pylist()
    assert [r["text"] for r in rows] == [OTHER] and manifest.metrics.earlier_run_duplicates == 1

    # With a new task type it goes on, for that task type only.
    run3 = RunRef(dag_id="d", run_id="r3")
    config3 = make_config(tmp_path, source=str(second_src), task_types=["exqa", "ynqa"])
    rows = store.read_table(chunk(store, run3, config3, extract(store, run3, config3)), "chunks").to_pylist()
    assert [(r["text"], r["pending_task_types"]) for r in rows] == [(NEAR, ["ynqa"]), (OTHER, None)]

    # Another model (processing target), full_refresh, or the switch off: everything is generated.
    for extra in ({"model_id": "other/model"}, {"full_refresh": True}, {"near_dup_across_runs": False}):
        config = make_config(tmp_path, source=str(second_src), **extra)
        assert load_earlier(store, "d", config) is None or len(load_earlier(store, "d", config)) == 0


def test_signature_parts_compact_without_losing_any(tmp_path):
    store = LocalStore(tmp_path / "store")
    source = write_source(tmp_path / "src", {"a.txt": BASE})
    for i in range(4):
        run = RunRef(dag_id="d", run_id=f"r{i}")
        config = make_config(tmp_path, source=str(source), full_refresh=True)
        chunk(store, run, config, extract(store, run, config))
        record_signatures(store, run, config)
    config = make_config(tmp_path, source=str(source))
    assert len(load_earlier(store, "d", config)) == 4  # recorded chunks scanned for this target
    assert compact(store, "d", max_parts=2).compacted_parts == 4
    assert [k.rsplit("/", 1)[-1][:8] for k in store.list(neardup_prefix("d"))] == ["compact-"]
    assert len(load_earlier(store, "d", config)) == 4


@pytest.mark.parametrize("published", [True, False])
def test_the_ledger_operator_records_signatures_only_after_publish(tmp_path, published):
    pytest.importorskip("airflow")
    from bonito_airflow.operators import BonitoLedgerOperator
    from bonito_airflow.runtime import TaskRuntime
    from bonito_tasks.stage import StageWriter

    store = LocalStore(tmp_path / "store")
    source = write_source(tmp_path / "src", {"a.txt": BASE})
    run, config = RunRef(dag_id="bonito_dataset", run_id="r"), make_config(tmp_path, source=str(source))
    documents = extract(store, run, config)
    chunk(store, run, config, documents)
    if published:
        store.write_bytes(StageWriter(store, run, "publish").manifest_key, b"{}")
    op = BonitoLedgerOperator(task_id="update_ledger", documents={"manifest": documents.uri})
    result = op.run(TaskRuntime(config=config, run=run, store=store, s3_client_kwargs={}), {})
    assert result.get("signatures_recorded", 0) == (1 if published else 0)
    assert bool(store.list(neardup_prefix("bonito_dataset"))) == published


def test_signatures_recorded_in_the_older_format_still_count(tmp_path):
    """Parts written before sketches (whole 512-byte signatures) are read as sketches: a chunk they
    recorded is still dropped the night after an upgrade."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bonito_tasks.chunk.neardup import PARAMS, PARAMS_KEY, signature_array
    from bonito_tasks.contracts import canonical_json
    from bonito_tasks.ledger import target_key

    store = LocalStore(tmp_path / "store")
    config = make_config(tmp_path, source=str(write_source(tmp_path / "src", {"b.txt": NEAR, "c.txt": OTHER})))
    old = pa.table({"scope": [target_key(config)], "task_types": [["exqa"]],
                    "signature": signature_array(minhash.text_signatures([BASE])), "run_id": ["r0"]})
    sink = io.BytesIO()
    pq.write_table(old.replace_schema_metadata({PARAMS_KEY: canonical_json(PARAMS).encode()}), sink)
    store.write_bytes(f"{neardup_prefix('d')}/part-r0-0000000000000000.parquet", sink.getvalue())
    run = RunRef(dag_id="d", run_id="r1")
    manifest = chunk(store, run, config, extract(store, run, config))
    assert [r["text"] for r in store.read_table(manifest, "chunks").to_pylist()] == [OTHER]
    assert manifest.metrics.earlier_run_duplicates == 1
