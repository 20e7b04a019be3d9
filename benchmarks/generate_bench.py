"""Output tokens/s of (a) one raw `LLM.generate` call, (b) our generate stage (checkpoints
included) and (c) the per-example `transformers` `generate` loop the Bonito article shows for
small GPUs, on the same prompts and machine. Prints the figures and the ratios b/a and b/c.

    .venv/bin/python benchmarks/generate_bench.py                       # tiny model, CPU
    .venv/bin/python benchmarks/generate_bench.py --random-mistral-7b /tmp/m7b --dtype bfloat16  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK_TYPES = ["exqa", "ynqa", "nli", "mcqa"]


def make_random_mistral_7b(path: Path) -> None:
    """A Mistral-7B-shaped model with random weights (no weights can be downloaded here),
    with the tiny model's tokenizer padded to Mistral's vocabulary size."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO / "tests/assets/tiny-bonito")
    config = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                           sliding_window=4096, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, torch_dtype="bfloat16")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def chunk_stage(store, config, run):
    """Extract and chunk the bundled sample documents with the real stages."""
    from bonito_tasks.chunk import chunk
    from bonito_tasks.extract import extract

    return chunk(store, run, config, extract(store, run, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "tests/assets/tiny-bonito"))
    parser.add_argument("--random-mistral-7b", type=Path, help="create a random-weight Mistral-7B here and use it")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-prompts", type=int, default=256)
    parser.add_argument("--hf-prompts", type=int, default=16, help="prompts for the slow per-example loop (c)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.random_mistral_7b:
        if not (args.random_mistral_7b / "config.json").exists():
            make_random_mistral_7b(args.random_mistral_7b)
        args.model = str(args.random_mistral_7b)

    from vllm import SamplingParams

    from bonito_tasks.config import RunConfig
    from bonito_tasks.contracts import RunRef
    from bonito_tasks.format import build_prompt
    from bonito_tasks.generate.engine import VllmEngine
    from bonito_tasks.generate.run import generate_shard
    from bonito_tasks.store import LocalStore

    work = Path(tempfile.mkdtemp(prefix="generate-bench-"))
    store = LocalStore(work)
    config = RunConfig(source=str(REPO / "tests/assets/sample_docs"), store=str(work), model_id=args.model,
                       dtype=args.dtype, task_types=TASK_TYPES, chunk_max_tokens=384,
                       chunk_shard_size=max(1, args.max_prompts // len(TASK_TYPES)))
    chunks = chunk_stage(store, config, RunRef(dag_id="bench", run_id="chunks"))
    rows = store.read_shard(chunks, "chunks", 0).to_pylist()
    prompts = [build_prompt(r["text"], t) for r in rows for t in TASK_TYPES]
    print(f"{len(prompts)} prompts ({len(rows)} chunks x {len(TASK_TYPES)} task types), model {args.model}")

    results = {}
    with VllmEngine(config) as engine:
        params = SamplingParams(**config.sampling_params())
        engine.llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
        for round_ in range(2):  # alternate a and b so drift in machine load hits both
            started = time.perf_counter()
            outputs = engine.llm.generate(prompts, params, use_tqdm=False)
            tokens = sum(len(o.token_ids) for out in outputs for o in out.outputs)
            results.setdefault("a", []).append(tokens / (time.perf_counter() - started))

            run = RunRef(dag_id="bench", run_id=f"stage-{round_}")
            started = time.perf_counter()
            manifest = generate_shard(store, run, config, chunks, 0, engine=engine)
            results.setdefault("b", []).append(manifest.metrics.generated_tokens / (time.perf_counter() - started))

    results["c"] = [hf_loop_tokens_per_s(args.model, prompts[: args.hf_prompts], config)]
    a, b, c = (sum(results[k]) / len(results[k]) for k in "abc")
    print(json.dumps({
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "output_tokens_per_s": {"a_raw_llm_generate": round(a, 1), "b_generate_stage": round(b, 1),
                                "c_transformers_per_example": round(c, 1)},
        "ratio_b_over_a": round(b / a, 3),
        "ratio_b_over_c": round(b / c, 2),
    }, indent=2))


def hf_loop_tokens_per_s(model_path: str, prompts: list[str], config) -> float:
    """The article's small-GPU path: one `model.generate` per example."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype="auto").to(device).eval()
    tokens = 0
    started = time.perf_counter()
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=config.max_tokens, do_sample=True,
                                 temperature=config.temperature, top_p=config.top_p,
                                 pad_token_id=tokenizer.eos_token_id)
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
    return tokens / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
