"""The library stays a plain, quick-to-import library (DAG parsing imports it)."""

import subprocess
import sys

MODULES = ["bonito_tasks", "bonito_tasks.store", "bonito_tasks.contracts", "bonito_tasks.config",
           "bonito_tasks.extract", "bonito_tasks.chunk", "bonito_tasks.generate.run",
           "bonito_tasks.validate", "bonito_tasks.publish"]
HEAVY = ["airflow", "vllm", "torch", "great_expectations", "transformers", "datasets", "huggingface_hub"]


def test_import_is_fast_and_light():
    code = (
        "import sys, time; t = time.perf_counter()\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        "elapsed = time.perf_counter() - t\n"
        f"print(elapsed, [h for h in {HEAVY!r} if h in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert out[1].strip() == "[]", f"heavy modules imported at import time: {out[1]}"
    assert float(out[0]) < 1.0
