"""Chunk quality filters plus near-duplicate detection: throughput, memory, share each filter drops.

    .venv/bin/python benchmarks/quality_bench.py [--chunks 100000] [--chars 2500] [--languages en]

Generates --chunks chunks of about --chars characters, part by part (2,048 a part, as the chunk stage
writes them; the corpus is never held whole): prose of pseudo-words in wrapped lines, with planted
junk (tables of numbers 2%, tables of contents 1%, boilerplate pages 1%, repeated lines 1%,
repeated phrases 1%) and planted near-duplicates (5%: an earlier chunk with 2% of its words
changed). Then, on one core, it times what the pipeline does per chunk:

- chunk partition: `quality.assess` (every filter; language only with --languages), shingling and
  MinHash signatures of the kept chunks (`minhash.shingles`, `minhash.signatures`);
- plan_shards: the in-order exact + near-duplicate pass (`_Dedup.add_part`, the LSH index).

It prints chunks/s of each and of both (one thread; target >= 5,000/s on one core), the peak RSS (the index
holds signatures and band keys, never texts), the share each filter drops and how many planted
near-duplicates were found. Generation time is not counted.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

PART = 2048


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Corpus:
    """Deterministic generated chunks, one part at a time."""

    def __init__(self, chars: int, seed: int = 0):
        import numpy as np

        self.np, self.rng, self.chars = np, np.random.default_rng(seed), chars
        letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
        weights = np.linspace(2.0, 0.1, len(letters))
        lengths = self.rng.integers(2, 11, size=20_000)
        self.vocab = np.array(["".join(self.rng.choice(letters, n, p=weights / weights.sum())) for n in lengths])
        self.zipf = 1 / np.arange(1, len(self.vocab) + 1)
        self.zipf /= self.zipf.sum()
        self.recent: list[str] = []  # prose chunks that near-duplicates copy from
        self.planted = {"near_duplicate": 0}

    def prose(self) -> str:
        rng = self.rng
        words = self.vocab[rng.choice(len(self.vocab), self.chars // 6, p=self.zipf)].tolist()
        out, line, sentence = [], [], 0
        for word in words:
            sentence += 1
            if sentence > rng.integers(8, 25):
                word, sentence = word + ".", 0
            line.append(word)
            if sum(map(len, line)) + len(line) > 90:
                out.append(" ".join(line))
                line = []
        out.append(" ".join(line))
        text = "\n".join(out)
        return text[0].upper() + text[1:].rstrip(".") + "."

    def near_copy(self) -> str:
        words = self.recent[self.rng.integers(len(self.recent))].split(" ")
        for i in self.rng.choice(len(words), max(1, len(words) // 50), replace=False):
            words[i] = str(self.vocab[self.rng.integers(len(self.vocab))])
        self.planted["near_duplicate"] += 1
        return " ".join(words)

    def junk(self, kind: str) -> str:
        rng = self.rng
        if kind == "numbers":
            return "\n".join(" ".join(f"{x:.2f}" for x in rng.uniform(0, 9999, 6)) for _ in range(self.chars // 45))
        if kind == "contents":
            return "\n".join(f"{i}. {' '.join(self.vocab[rng.integers(len(self.vocab), size=3)]).title()} "
                             f"{'.' * 20} {3 * i}" for i in range(1, self.chars // 45))
        if kind == "boilerplate":
            lines = ["Home | About us | Products | Blog | Contact", "Skip to main content", "Sign in",
                     "We use cookies to improve your experience. Accept all cookies", "Subscribe to our newsletter",
                     "Follow us on social media", "Privacy policy", "Terms of use", "Back to top",
                     "© 2024 Example Corp. All rights reserved."]
            return "\n".join(lines * max(1, self.chars // 400))
        if kind == "repeated_lines":
            ad = "Order now and get free delivery on every item."
            return "\n".join([ad] * 10 + [self.prose()[: self.chars // 2]])
        phrase = " ".join(self.vocab[rng.integers(len(self.vocab), size=8)])
        return " ".join([phrase] * (self.chars // (len(phrase) + 1))) + "."

    def part(self, n: int) -> list[str]:
        texts = []
        for _ in range(n):
            r = self.rng.random()
            if r < 0.02:
                texts.append(self.junk("numbers"))
            elif r < 0.03:
                texts.append(self.junk("contents"))
            elif r < 0.04:
                texts.append(self.junk("boilerplate"))
            elif r < 0.05:
                texts.append(self.junk("repeated_lines"))
            elif r < 0.06:
                texts.append(self.junk("repeated_phrase"))
            elif r < 0.11 and self.recent:
                texts.append(self.near_copy())
            else:
                text = self.prose()
                self.recent = (self.recent + [text])[-500:]
                texts.append(text)
        return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--chars", type=int, default=2500, help="characters per chunk (~600 tokens of English)")
    parser.add_argument("--languages", nargs="*", default=[], help="quality_languages (default: any: no langid)")
    parser.add_argument("--threshold", type=float, default=0.8, help="near_dup_threshold")
    parser.add_argument("--pin", action="store_true", help="pin to the first core (everything here is one thread "
                        "anyway; pinning hurts on a shared machine)")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np
    import pyarrow as pa

    from bonito_tasks import minhash
    from bonito_tasks.chunk import _Dedup, quality
    from bonito_tasks.config import RunConfig

    config = RunConfig(source="/unused", store="/unused", near_dup_threshold=args.threshold,
                       quality_languages=args.languages)
    thresholds = quality.Thresholds.from_config(config)
    corpus = Corpus(args.chars)
    dedup = _Dedup(config, None)
    if args.languages:
        quality.language_identifier()  # load the model before timing
    warm = Corpus(args.chars, seed=1).part(64)  # before timing: the imports the first calls make (pyarrow: pandas)
    minhash.signatures(minhash.shingles(warm))
    quality.assess(warm, thresholds)
    reasons: dict[str, int] = {}
    filter_s = dedup_s = 0.0
    done = kept_chars = 0
    rss_before = peak_rss_mib()
    while done < args.chunks:
        texts = corpus.part(min(PART, args.chunks - done))
        started = time.perf_counter()
        shingled = minhash.shingles(texts)
        verdicts = quality.assess(texts, thresholds, shingled)
        keep = [i for i, v in enumerate(verdicts) if v is None]
        sigs = minhash.signatures(shingled.take(np.asarray(keep, dtype=np.int64)))
        filter_s += time.perf_counter() - started
        for v in verdicts:
            if v:
                reasons[v] = reasons.get(v, 0) + 1
        kept = [texts[i] for i in keep]
        kept_chars += sum(map(len, kept))
        part = pa.table({"doc_id": [f"d{done + i}" for i in keep], "char_start": [0] * len(kept),
                         "char_end": [len(t) for t in kept], "text": kept,
                         "pending_task_types": pa.nulls(len(kept), pa.list_(pa.string())),
                         "_row": list(range(done, done + len(kept)))})
        started = time.perf_counter()
        dedup.add_part(0, part, sigs)
        dedup_s += time.perf_counter() - started
        done += len(texts)
    n = done
    print(f"corpus: {n:,} generated chunks of ~{args.chars} chars, parts of {PART}; threshold {args.threshold}; "
          f"languages: {args.languages or 'any'}; LSH {dedup.index.bands} bands x {dedup.index.rows} rows")
    print(f"filters + shingles + signatures: {filter_s:7.1f} s  {n / filter_s:8,.0f} chunks/s")
    print(f"near-dup pass (plan_shards):     {dedup_s:7.1f} s  {(n - sum(reasons.values())) / dedup_s:8,.0f} chunks/s")
    print(f"both:                            {filter_s + dedup_s:7.1f} s  {n / (filter_s + dedup_s):8,.0f} chunks/s "
          f"({kept_chars / 2**20 / dedup_s if dedup_s else 0:,.0f} MiB/s of text in the near-dup pass)")
    print(f"dropped by the filters: {sum(reasons.values()):,} ({sum(reasons.values()) / n:.1%}); planted junk ~6%")
    for reason in quality.REASONS:
        if reason in reasons:
            print(f"  {reason:<20} {reasons[reason]:7,}  {reasons[reason] / n:6.2%}")
    print(f"near-duplicates found: {dedup.near_duplicates:,} (planted: {corpus.planted['near_duplicate']:,}); "
          f"exact duplicates: {sum(len(v) for v in dedup.duplicates.values()) - dedup.near_duplicates:,}")
    print(f"index: {len(dedup.index):,} signatures, {dedup.index.nbytes / 2**20:,.1f} MiB "
          f"({dedup.index.nbytes / max(len(dedup.index), 1):,.0f} bytes each); digests and places: the rest")
    print(f"peak RSS: {peak_rss_mib():,.0f} MiB (after setup: {rss_before:,.0f} MiB); text processed: "
          f"{n * args.chars / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
