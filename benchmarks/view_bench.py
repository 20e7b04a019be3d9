"""The Dataset view on a large run: how long the run page and pages of rows take to build.

    .venv/bin/python benchmarks/view_bench.py --examples 1000000 [--store DIR | --s3]

Writes a run the way the stages do (a validate stage committing one examples part of N rows and a
quarantine part of 1%, 100 generate shards each with dropped generations, an extract with rejects),
and its summary.json (as the summarize task writes it), then times, best of --repeat, what each
request of the view does after authentication: the run page (summary, cause, quality, samples of every
task type, previews of quarantine, dropped generations and rejects, rendered to HTML) and row pages
at the start, the middle and the end, unfiltered and filtered by task type. Target: each under one
second. With --s3 the store is a moto S3 server on loopback,
so every Parquet read is ranged GETs. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from bonito_tasks.contracts import (  # noqa: E402
    DROPPED_GENERATIONS,
    EXAMPLES,
    QUARANTINE,
    REJECTS,
    ChunkMetrics,
    ExtractMetrics,
    GenerateMetrics,
    QualitySummary,
    RunRef,
    SuiteRef,
    ValidateMetrics,
)
from bonito_tasks.stage import StageWriter  # noqa: E402
from bonito_tasks.store import open_store  # noqa: E402

TASKS = ["exqa", "mcqa", "ynqa", "nli", "te", "paraphrase_id", "sentiment", "topic_class", "coref", "summarization"]
RUN = RunRef(dag_id="bonito_dataset", run_id="manual__2026-01-01T00:00:00+00:00")
CONTEXT = ("Clause {i}. The supplier shall deliver the goods within thirty days of the order and the buyer shall "
           "pay the invoice within sixty days of delivery; late payment bears interest at the statutory rate. ")


def examples(n: int, first: int = 0) -> pa.Table:
    ids = np.arange(first, first + n)
    task = np.array(TASKS)[ids % len(TASKS)]
    inputs = [CONTEXT.format(i=i) * 4 + f"\nQuestion {i}: within how many days must the buyer pay?" for i in ids]
    outputs = ["sixty days" if t == "exqa" else "yes" for t in task]
    return pa.table({
        "example_id": [f"{i:064x}" for i in ids], "task_type": task, "input": inputs, "output": outputs,
        "doc_id": ["d" * 64] * n, "chunk_id": [f"{i // 4:064x}" for i in ids], "char_start": ids * 0,
        "char_end": ids * 0 + 800, "sample_index": np.zeros(n, np.int32), "model_id": ["m"] * n,
        "model_revision": ["r"] * n, "sampling_params": ["{}"] * n, "run_id": [RUN.run_id] * n,
    }, schema=EXAMPLES)


def build_run(store, n: int) -> None:
    started = time.perf_counter()
    extract = StageWriter(store, RUN, "extract")
    extract.begin()
    extract.add("rejects", pa.Table.from_pylist([{"source_uri": f"s3://docs/{i}.pdf", "stage": "extract",
                                                   "reason": "corrupt_pdf", "detail": "no xref", "size_bytes": 10}
                                                  for i in range(20)], REJECTS))
    extract.commit(metrics=ExtractMetrics(files=1020, documents=1000, rejects=20,
                                                              rejects_by_reason={"corrupt_pdf": 20}))
    chunk = StageWriter(store, RUN, "chunk")
    chunk.begin()
    chunk.commit(metrics=ChunkMetrics(chunks=n // 100 * 100, shards=100))
    for shard in range(100):
        writer = StageWriter(store, RUN, "generate", partition=shard)
        writer.begin()
        writer.add("dropped_generations", pa.table({
            "chunk_id": [f"{shard}-{i}" for i in range(500)], "task_type": ["exqa"] * 500,
            "sample_index": np.zeros(500, np.int32), "reason": ["no_pipe", "extra_pipe"] * 250,
            "generated_text": ["<|pipe|> garbled"] * 500}, schema=DROPPED_GENERATIONS))
        writer.commit(metrics=GenerateMetrics(prompts=n // 100, generations=n // 100,
                                                                       parse_failures={"no_pipe": 250,
                                                                                       "extra_pipe": 250}))
    validate = StageWriter(store, RUN, "validate")
    validate.begin()
    quarantined = n // 100
    bad = examples(quarantined, first=n).append_column(
        "failed_expectations", pa.array([["exqa_answer_in_context"]] * quarantined, pa.list_(pa.string())))
    validate.add("quarantine", bad.cast(QUARANTINE))
    validate.add("examples", examples(n))
    quality = QualitySummary(rows=n + quarantined, passed=n, quarantined=quarantined, pass_rate=0.99)
    store.write_bytes(f"{validate.prefix}/report/summary.json", quality.model_dump_json().encode())
    validate.commit(metrics=ValidateMetrics(
        examples_in=n + quarantined, passed=n, quarantined=quarantined, quality=quality,
        suite=SuiteRef(name="s", dataset_suite="d", version="1")))
    from bonito_tasks.config import RunConfig
    from bonito_tasks.summary import run_summary

    run_summary(store, RUN, RunConfig(source="/docs", store=store.root_uri))  # as the summarize task does
    print(f"built a run of {n:,} examples (+{quarantined:,} quarantined, 50,000 dropped) in "
          f"{time.perf_counter() - started:.1f} s")


def timed(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--store", help="a folder to write the run into (default: a temporary one)")
    parser.add_argument("--s3", action="store_true", help="put the store on a moto S3 server on loopback")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from bonito_airflow.view import app as view
    from bonito_airflow.view.data import RunInfo
    from bonito_tasks import browse

    with tempfile.TemporaryDirectory(prefix="view-bench-") as tmp:
        server = None
        if args.s3:
            import boto3
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            kwargs = {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1",
                      "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
            boto3.client("s3", **kwargs).create_bucket(Bucket="bench")
            store = open_store("s3://bench/store", **kwargs)
        else:
            store = open_store(args.store or str(Path(tmp) / "store"))
        build_run(store, args.examples)
        info = RunInfo(run=RUN, state="success", params={"store": store.root_uri, "source": "/docs"},
                       start_date=None, end_date=None)
        view._root = lambda: ""  # no Airflow configuration needed to build the pages' links

        def run_page():
            context = view.run_context(store, info)
            html = view.TEMPLATES.get_template("run.html").render(elapsed_ms=0, json=None, **context)
            assert "sixty days" in html and "exqa_answer_in_context" in html

        def rows(offset: int, value: str | None = None):
            page = browse.read_page(store, RUN, "examples", offset=offset, limit=50, value=value)
            assert len(page.rows) == 50, (offset, value, len(page.rows))
            view.TEMPLATES.get_template("rows.html").render(
                info=info, page=page, rows=[view._display("examples", r) for r in page.rows], base="")

        def dropped(offset: int, value: str | None = None):  # as the view's rows page reads them
            counts = view._recorded_counts(view._written_summary(store, info), "dropped_generations")
            page = browse.read_page(store, RUN, "dropped_generations", offset=offset, limit=50, value=value,
                                    known_counts=counts)
            assert len(page.rows) == 50 and page.total == (50_000 if value is None else 25_000), page.total

        n = args.examples
        cases = [("run page (summary, cause, quality, samples of 10 task types, previews)", run_page),
                 ("rows 1-50", lambda: rows(0)),
                 (f"rows {n // 2 + 1:,}-{n // 2 + 50:,}", lambda: rows(n // 2)),
                 (f"rows {n - 49:,}-{n:,}", lambda: rows(n - 50)),
                 ("exqa rows 1-50", lambda: rows(0, "exqa")),
                 (f"exqa rows {n // 20 + 1:,}-{n // 20 + 50:,} (the middle)", lambda: rows(n // 20, "exqa")),
                 ("dropped generations 1-50 (100 shards; counts as recorded)", lambda: dropped(0)),
                 ("dropped generations 25,001-25,050 (counts as recorded)", lambda: dropped(25_000)),
                 ("dropped generations with reason no_pipe 1-50 (counts read from 100 shards)",
                  lambda: dropped(0, "no_pipe"))]
        print(f"store: {store.root_uri}; best of {args.repeat}")
        worst = 0.0
        for name, fn in cases:
            seconds = timed(args.repeat, fn)
            worst = max(worst, seconds)
            print(f"  {seconds * 1000:8.0f} ms  {name}")
        print(f"slowest page {worst * 1000:.0f} ms: {'under' if worst < 1 else 'OVER'} the 1 s target "
              f"(ratio {worst:.2f})")
        if server:
            server.stop()


if __name__ == "__main__":
    main()
