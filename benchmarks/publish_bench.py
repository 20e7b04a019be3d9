"""The publish stage at two run sizes: peak memory and time of a publish at S and 10·S rows.

    .venv/bin/python benchmarks/publish_bench.py                      # S = 100,000, 10·S = 1,000,000
    .venv/bin/python benchmarks/publish_bench.py --rows 20000         # a quick look
    .venv/bin/python benchmarks/publish_bench.py --code /tmp/old      # the worker runs another checkout
    .venv/bin/python benchmarks/publish_bench.py --hub                # and uploads to the Hub stand-in
    .venv/bin/python benchmarks/publish_bench.py --mode append        # a first append night (indexed)

For each size, a validate stage of --rows example rows in parts of --part-rows (as the validate
reduce lists the generate shards' parts) and an extract stage (a document per 40 rows) are
committed to a temporary local store; then the real publish stage (publish_mode --mode, the
store's dataset folder as its target; with --hub also a dataset repo in the loopback Hub stand-in
the tests use, tests/hub_server.py, which takes the shards as LFS blobs as the Hub does) runs in a
fresh process, which reports its wall time and peak RSS. Inputs hold a passage of --input-chars
characters, as Bonito's do; example ids are sha256 hex, in no order. Printed per size: rows, data
shards, Parquet bytes written, wall and CPU time (CPU is steadier on a shared machine), peak RSS;
then the ratios 10·S / S and one JSON line. Target (issue #21): peak RSS 10·S / S <= 1.3 (publish
holds a window of rows and a shard, never the run). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the party shall agree contract clause term notice payment within days of any such written consent "
         "liability limited to this agreement which").split()
TASK_TYPES = ("exqa", "ynqa", "qa")


def build(root: Path, rows: int, part_rows: int, input_chars: int) -> None:
    """Commit the extract and validate stages of a run of `rows` examples under `root`, a part at a time."""
    import numpy as np
    import pyarrow as pa

    from bonito_tasks.contracts import (
        DOCUMENTS,
        EXAMPLES,
        ExtractMetrics,
        QualitySummary,
        RunRef,
        SuiteRef,
        ValidateMetrics,
    )
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import LocalStore

    store, run = LocalStore(root), RunRef(dag_id="bench", run_id="publish")
    docs = max(1, rows // 40)
    extract = StageWriter(store, run, "extract")
    extract.add("documents", pa.Table.from_pylist([
        {"doc_id": f"{i:064x}", "source_uri": f"s3://docs/contract-{i}.pdf", "media_type": "application/pdf",
         "size_bytes": 10_000, "text": ""} for i in range(docs)], schema=DOCUMENTS))
    validate = StageWriter(store, run, "validate")
    words = np.array(WORDS)
    for first in range(0, rows, part_rows):
        n = min(part_rows, rows - first)
        rng = np.random.default_rng(first)
        passages = [" ".join(rng.choice(words, input_chars // 6)) for _ in range(64)]  # 64 passages a part
        index = np.arange(first, first + n)
        ids = rng.bytes(32 * n).hex()
        validate.add("examples", pa.table({
            "example_id": [ids[64 * i:64 * (i + 1)] for i in range(n)],
            "task_type": pa.array(np.array(TASK_TYPES)[index % 3]),
            "input": [f"{passages[i % 64]}\n\nQuestion {i}: what does clause {i % 97} say?" for i in index],
            "output": [f"Clause {i % 97} sets term {i * 7 % 1013}." for i in index],
            "doc_id": [f"{i // 40:064x}" for i in index], "chunk_id": [f"chunk-{i // 4}" for i in index],
            "char_start": np.zeros(n, np.int64), "char_end": np.full(n, input_chars, np.int64),
            "sample_index": np.zeros(n, np.int32), "model_id": ["BatsResearch/bonito-v1"] * n,
            "model_revision": ["abc123"] * n, "sampling_params": ['{"temperature":0.5}'] * n, "run_id": ["publish"] * n,
        }).cast(EXAMPLES))
    suite = SuiteRef(name="examples", dataset_suite="dataset", version="1")
    validate.commit(metrics=ValidateMetrics(suite=suite, quality=QualitySummary()))
    extract.commit(metrics=ExtractMetrics())


def child(root: Path, rows_per_shard: int, hub: list[str] | None, mode: str) -> dict:
    """Publish the run under `root` as the publish task does; its wall time and this process's peak RSS."""
    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.publish import publish
    from bonito_tasks.stage import StageWriter
    from bonito_tasks.store import LocalStore

    store, run = LocalStore(root), RunRef(dag_id="bench", run_id="publish")
    examples, documents = (StageWriter(store, run, stage).committed() for stage in ("validate", "extract"))
    assert examples is not None and documents is not None
    config = RunConfig(source="s3://docs/", store=str(root), task_types=list(TASK_TYPES),
                       hub_repo_id="bench/publish" if hub else None, publish_mode=mode)
    url, token = hub or (None, None)
    started, cpu = time.perf_counter(), time.process_time()
    manifest = publish(store, run, config, examples, documents, token, endpoint=url, rows_per_shard=rows_per_shard)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    data = {p: f.bytes for p, f in manifest.metrics.files.items() if p.startswith("data/")}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": manifest.metrics.examples, "shards": len(data), "parquet_bytes": sum(data.values()),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mib": round(peak_mib, 1)}


def measure(rows: int, args: argparse.Namespace) -> dict:
    sys.path[:0] = [str(REPO_ROOT / "tests")]
    from hub_server import HubServer

    with tempfile.TemporaryDirectory(prefix="bonito-publish-bench-") as tmp, HubServer(lfs=True) as hub:
        started = time.perf_counter()
        build(Path(tmp), rows, args.part_rows, args.input_chars)
        build_s = time.perf_counter() - started
        command = [sys.executable, __file__, "--child", tmp, "--rows-per-shard", str(args.rows_per_shard),
                   "--code", str(args.code), "--mode", args.mode]
        command += ["--to-hub", hub.url, hub.token] if args.hub else []
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(Path(tmp) / "hf"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        if args.hub:
            assert len(hub.lfs_objects) == json.loads(out.strip().splitlines()[-1])["shards"]
    return {**json.loads(out.strip().splitlines()[-1]), "build_s": round(build_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="S: the small run's example rows (10·S the large)")
    parser.add_argument("--part-rows", type=int, default=20_000, help="rows per validate part (a generate shard)")
    parser.add_argument("--rows-per-shard", type=int, default=20_000, help="rows per published Parquet shard")
    parser.add_argument("--input-chars", type=int, default=1200, help="characters of passage per input")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="the checkout whose bonito_tasks the worker runs")
    parser.add_argument("--hub", action="store_true", help="also upload to the Hub stand-in (shards as LFS blobs)")
    parser.add_argument("--mode", choices=("overwrite", "append"), default="overwrite",
                        help="publish_mode: append is a first night, checked against an empty dataset's index")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--to-hub", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(args.code)]
    if args.child:
        print(json.dumps(child(args.child, args.rows_per_shard, args.to_hub, args.mode)))
        return
    small, large = measure(args.rows, args), measure(10 * args.rows, args)
    for m in (small, large):
        print(f"{m['rows']:>10,} rows: {m['shards']:4d} shards, {m['parquet_bytes'] / 2**20:8.1f} MiB of Parquet, "
              f"publish {m['wall_s']:7.2f} s ({m['cpu_s']:.2f} s CPU), peak RSS {m['peak_rss_mib']:7.1f} MiB "
              f"(run built in {m['build_s']:.0f} s)")
    ratios = {"publish_rss_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
              "publish_wall_ratio": round(large["wall_s"] / small["wall_s"], 3),
              "publish_cpu_ratio": round(large["cpu_s"] / small["cpu_s"], 3)}
    print(f"10·S / S: peak RSS {ratios['publish_rss_ratio']:.2f}x (target <= 1.3), "
          f"wall {ratios['publish_wall_ratio']:.2f}x, CPU {ratios['publish_cpu_ratio']:.2f}x (the rows grow 10x)")
    print(json.dumps({**ratios, "publish_rss_mib_small": small["peak_rss_mib"],
                      "publish_rss_mib_large": large["peak_rss_mib"], "publish_wall_s_large": large["wall_s"],
                      "publish_cpu_s_large": large["cpu_s"],
                      "rows_small": small["rows"], "rows_large": large["rows"], "rows_per_shard": args.rows_per_shard,
                      "hub": args.hub, "mode": args.mode, "code": str(args.code)}))


if __name__ == "__main__":
    main()
