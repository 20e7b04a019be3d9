"""The library stays a plain, light library (DAG parsing imports it): importing its stages loads
none of the heavy modules, which the functions that use them import. Import time is a benchmark's
business, not a test's (a shared 2-core machine makes any bound flaky)."""

import subprocess
import sys

MODULES = ["bonito_tasks", "bonito_tasks.store", "bonito_tasks.contracts", "bonito_tasks.config",
           "bonito_tasks.extract", "bonito_tasks.chunk", "bonito_tasks.generate.run",
           "bonito_tasks.validate", "bonito_tasks.compare", "bonito_tasks.release", "bonito_tasks.publish"]
HEAVY = ["airflow", "vllm", "torch", "great_expectations", "transformers", "datasets", "huggingface_hub",
         "pandas", "matplotlib", "boto3", "openlineage"]


def test_import_loads_no_heavy_module():
    code = f"import sys\nfor m in {MODULES!r}: __import__(m)\nprint([h for h in {HEAVY!r} if h in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"heavy modules imported at import time: {out}"
