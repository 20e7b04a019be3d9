"""Chunker throughput against raw batch tokenization of the same text, and peak memory (not a test).

    .venv/bin/python benchmarks/chunk_bench.py [--mb 16] [--doc-kib 64] [--rounds 3] [--max-tokens N]
        [--overlap 0] [--model PATH]

Generates --mb MiB of text (paragraphs of sentences of pseudo-words, as extract_bench does), cut
into documents of about --doc-kib KiB at paragraph ends, loads the model's tokenizer
(AutoTokenizer, as the chunk stage does) and prints, best of --rounds alternated rounds:
- raw: `tokenizer(paragraphs, add_special_tokens=False)` over every paragraph, 1,000 per call
  (the same text the chunker reads), MB/s;
- chunker: `Chunker.split_many(documents)`, MB/s, a fresh Chunker (cold caches) each round;
- the ratio chunker / raw (target >= 0.9), by wall-clock and, steadier on a shared machine, by
  CPU time of the process (all threads);
- for context: the tokenizer's own fastest call (`encode_batch_fast`, ids only) on the same
  paragraphs, and `split_counted` called once per document;
- peak RSS of this process after the chunker's first round (before any raw call) and at the end.

--max-tokens defaults to the pipeline's default chunk_max_tokens for the model.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

RAW_BATCH = 1000  # paragraphs per raw tokenizer call


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def documents(n_bytes: int, doc_bytes: int) -> list[str]:
    from extract_bench import word_pool

    pool = word_pool(n_bytes)
    docs, start = [], 0
    while start < len(pool):
        end = pool.find("\n\n", start + doc_bytes)
        end = len(pool) if end < 0 else end
        docs.append(pool[start:end])
        start = end + 2
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=16, help="MiB of generated text (at least 10 for the figure)")
    parser.add_argument("--doc-kib", type=float, default=64, help="about this many KiB per document")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=0, help="chunk_overlap_tokens")
    parser.add_argument("--model", default=str(REPO / "tests" / "assets" / "tiny-bonito"),
                        help="model whose tokenizer chunks (default: the tiny test model)")
    args = parser.parse_args()

    from bonito_tasks.chunk.splitter import PARAGRAPH_BREAK, Chunker, load_tokenizer
    from bonito_tasks.config import RunConfig

    config = RunConfig(source=str(REPO), store="/tmp/unused", model_id=args.model)
    max_tokens = args.max_tokens or config.chunk_max_tokens
    tokenizer = load_tokenizer(config)
    docs = documents(int(args.mb * 2**20), int(args.doc_kib * 1024))
    paragraphs = [p for doc in docs for p in PARAGRAPH_BREAK.split(doc) if p.strip()]
    mb = sum(map(len, docs)) / 1e6  # the generated text is ASCII: characters = bytes
    print(f"{mb:.1f} MB of text: {len(docs)} documents, {len(paragraphs)} paragraphs; model {args.model}; "
          f"max_tokens {max_tokens}, overlap {args.overlap}")

    def raw() -> None:
        for i in range(0, len(paragraphs), RAW_BATCH):
            tokenizer(paragraphs[i:i + RAW_BATCH], add_special_tokens=False)

    def fast() -> None:
        backend = tokenizer.backend_tokenizer
        for i in range(0, len(paragraphs), RAW_BATCH):
            backend.encode_batch_fast(paragraphs[i:i + RAW_BATCH], add_special_tokens=False)

    chunks = []

    def chunker() -> None:
        chunks[:] = [Chunker(tokenizer, max_tokens, args.overlap).split_many(docs)]

    def per_document() -> None:
        splitter = Chunker(tokenizer, max_tokens, args.overlap)
        for doc in docs:
            splitter.split_counted(doc)

    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rss_after_chunker = None
    for _ in range(args.rounds):
        for name, run in (("chunker", chunker), ("raw", raw), ("fast", fast), ("per_document", per_document)):
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
            cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - cpu_started)
            if rss_after_chunker is None:
                rss_after_chunker = peak_rss_mib()
    n_chunks = sum(map(len, chunks[0]))
    print(f"raw tokenizer(paragraphs):       {mb / best['raw']:6.2f} MB/s")
    print(f"Chunker.split_many(documents):   {mb / best['chunker']:6.2f} MB/s  ({n_chunks} chunks, "
          f"exact counts: {Chunker(tokenizer, max_tokens).exact})")
    print(f"ratio chunker / raw:             {best['raw'] / best['chunker']:6.2f}  (target >= 0.9; by CPU time "
          f"{cpu['raw'] / cpu['chunker']:.2f})")
    print(f"  context: encode_batch_fast:    {mb / best['fast']:6.2f} MB/s (ratio chunker / it "
          f"{best['fast'] / best['chunker']:.2f}); split_counted per document {mb / best['per_document']:.2f} MB/s")
    print(f"peak RSS: {rss_after_chunker:.0f} MiB after the chunker's first round, {peak_rss_mib():.0f} MiB at the end")


if __name__ == "__main__":
    main()
