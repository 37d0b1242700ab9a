# The project's vocabulary. `make test` is what CI runs; `make setup` installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup venv lock images image-cuda sbom lint fmt test test-unit crds reference bench-runtime cluster-up cluster-down cluster-binaries test-cluster demo bench-operator bench-soak bench-image bench-gateway

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools

# llama.cpp without llamafile's sgemm, as in the runtime image: a token's logits then do not
# depend on its batch (hack/llama_cpp_check.py rebuilds a cached wheel that has it).
LLAMA_CMAKE_ARGS ?= -DGGML_LLAMAFILE=OFF

# The lock is complete and carries onnxruntime-openvino in place of the onnxruntime that
# onnxruntime-genai names (both install the onnxruntime module), hence --no-deps, and the
# removal of packages an older lock installed into the same module.
venv: $(PY) ## create .venv: the pinned packages of requirements/dev.txt, then the project (editable)
	$(PY) -m pip uninstall -q -y onnxruntime onnxruntime-ep-openvino 2>/dev/null || true
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) hack/llama_cpp_check.py

lock: ## regenerate the hash-pinned locks in requirements/ from pyproject.toml (UPGRADE=1 takes newer versions)
	bash hack/lock.sh $(if $(UPGRADE),--upgrade)

images: ## build the operator and CPU runtime images (and the local base) with Docker's layer cache; prints each image ID
	bash hack/images/build.sh

image-cuda: ## build the CUDA runtime image (not in setup or CI: long on 2 cores); CUDA_ARCHITECTURES=90-real narrows its GPUs
	CUDA_ARCHITECTURES="$(CUDA_ARCHITECTURES)" bash hack/images/build.sh base runtime-cuda
	bash -c 'source hack/images/env.sh && $(PY) hack/images/smoke-cuda.py $(if $(GPU),--gpu) "$${SLM_RUNTIME_CUDA_IMAGE}"'

sbom: ## an SPDX SBOM of each built image under dist/sbom/, from syft built from its Go module
	bash hack/images/sbom.sh

setup: venv ## install everything the tests need (Python packages, then hack/setup.d/*)
	bash hack/setup.sh

lint: ## ruff (lint + format check), mypy strict, import-linter contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p slm_operator -p slm_runtime
	$(BIN)/lint-imports

fmt: ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: setup ## Gemma 3 270M from helm install to streamed answers: kind when Docker and kind are there, else the local control plane (KEEP=1 keeps serving the model file)
	@if docker info >/dev/null 2>&1 && command -v kind >/dev/null; then \
	  HELM=$(HELM) bash hack/e2e-kind.sh; \
	else \
	  HELM=$(HELM) $(PY) hack/demo.py $(if $(KEEP),--keep); \
	fi

test: setup ## run every test suite (unit, runtime, pull, fuzz, images, cluster)
	$(PY) -m pytest

test-unit: ## pure tests only
	$(PY) -m pytest -m unit

crds: ## regenerate crds/ from the API models (and the chart's copy, its catalog from the device table, and docs/reference.md)
	$(PY) -m slm_operator.crdgen
	cp crds/*.yaml charts/slm-operator/files/crds/
	$(PY) -m slm_operator.chartgen
	$(PY) -m slm_operator.refdoc

reference: ## regenerate docs/reference.md (the LocalModel field reference) from the API models
	$(PY) -m slm_operator.refdoc

cluster-binaries: ## build (or reuse) the test cluster's binaries in ~/.cache/slm-operator/bin
	bash hack/cluster/build.sh

cluster-up: ## start the test cluster on 127.0.0.1 (no-op when running); kubeconfig in ~/.cache/slm-operator/cluster
	bash hack/cluster/up.sh

cluster-down: ## stop the test cluster and remove every process, namespace, mount and state
	bash hack/cluster/down.sh

test-cluster: images ## the cluster suite only (reuses a running cluster; the operator runs from its image, so it is rebuilt first)
	$(PY) -m pytest -m cluster

bench-pull: ## pull throughput vs curl from local nginx, and the re-run time (writes docs/benchmarks.md)
	$(PY) bench/pull_bench.py

HELM ?= $(shell bash -c 'source hack/cluster/versions.sh && echo $${SLM_BIN_DIR}/helm-$${HELM_VERSION}')

chart-crds: ## copy the generated CRD from crds/ into the Helm chart (after `make crds`)
	cp crds/*.yaml charts/slm-operator/files/crds/

manifests: chart-crds ## regenerate deploy/ (plain kubectl manifests) from the Helm chart
	HELM=$(HELM) bash deploy/generate.sh > deploy/slm-operator.yaml

helm-lint: ## helm lint the chart, strictly
	$(HELM) lint --strict charts/slm-operator

bench-operator: ## 100, 500 and 1000 LocalModels on the test cluster: time to Ready, writes at rest, RSS, change latency (writes docs/benchmarks.md)
	$(PY) bench/operator_bench.py

bench-runtime: ## runtime vs llama.cpp's llama-server (LLAMA_SERVER=path, else PATH, else built once into ~/.cache/slm-operator)
	$(PY) bench/runtime_bench.py

bench-gateway: ## slm-gateway: added latency and tokens/s against direct, prefix-affinity TTFT (best with the test cluster down); CLUSTER=1: the cold start from zero on the test cluster instead (writes docs/benchmarks.md)
	$(PY) bench/gateway_bench.py $(if $(CLUSTER),--cluster)

bench-image: ## image sizes and the runtime image's tokens/s against the virtualenv's (after make images; writes docs/benchmarks.md)
	$(PY) bench/image_bench.py

bench-soak: ## the runtime under mixed load for 30 min (MINUTES=n): RSS, threads, fds, latency per window (writes docs/benchmarks.md at 30 min or more)
	$(PY) bench/soak.py $(if $(MINUTES),--minutes $(MINUTES))
