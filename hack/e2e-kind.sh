#!/usr/bin/env bash
# `make demo` on a machine with Docker and kind: build both images, load them into a kind
# cluster, install the chart, apply examples/gemma3-270m.yaml, port-forward and ask.
# The model comes from its hf:// source, so this path needs access to huggingface.co.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where kind runs, Docker Hub usually answers: build from the public base image.
export SLM_BASE_IMAGE="${SLM_BASE_IMAGE:-python:3.11-slim-bookworm}"
# shellcheck source=images/env.sh
source hack/images/env.sh
OPERATOR_IMAGE="${SLM_OPERATOR_IMAGE}"
RUNTIME_IMAGE="${SLM_RUNTIME_IMAGE}"
CLUSTER="slm-demo"
HELM="${HELM:-helm}"
PORT="${PORT:-18080}"
start=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - start))" "$*"; }

step "Building ${OPERATOR_IMAGE} and ${RUNTIME_IMAGE} (the runtime compiles llama.cpp for every x86-64 level: 20-30 minutes on 2 cores the first time)"
bash hack/images/build.sh operator runtime

step "kind cluster ${CLUSTER}"
kind get clusters | grep -qx "${CLUSTER}" || kind create cluster --config kind-config.yaml
kubectl config use-context "kind-${CLUSTER}"
kind load docker-image --name "${CLUSTER}" "${OPERATOR_IMAGE}" "${RUNTIME_IMAGE}"

step "helm upgrade --install slm-operator"
"${HELM}" upgrade --install slm-operator charts/slm-operator --namespace slm-system \
  --create-namespace --wait --timeout 5m

step "Applying examples/gemma3-270m.yaml (namespace ai)"
kubectl create namespace ai --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace ai pod-security.kubernetes.io/enforce=restricted --overwrite
kubectl apply --server-side -f examples/gemma3-270m.yaml
kubectl -n ai get lm gemma3-270m -w &
watcher=$!
trap 'kill ${watcher} ${forward:-} 2>/dev/null || true' EXIT
kubectl -n ai wait lm/gemma3-270m --for=jsonpath='{.status.phase}'=Ready --timeout=20m
kubectl -n ai rollout status deployment/gemma3-270m --timeout=5m

step "Port-forward svc/gemma3-270m to 127.0.0.1:${PORT}"
kubectl -n ai port-forward svc/gemma3-270m "${PORT}:8080" >/dev/null &
forward=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:${PORT}/readyz" >/dev/null && break; sleep 1; done

step "Ollama API: POST /api/generate (streamed NDJSON)"
curl -sN "http://127.0.0.1:${PORT}/api/generate" -d '{"model": "gemma3-270m",
  "prompt": "The capital of France is", "raw": true, "options": {"temperature": 0, "num_predict": 40}}'

step "OpenAI API: POST /v1/completions (streamed SSE)"
curl -sN "http://127.0.0.1:${PORT}/v1/completions" -H 'Content-Type: application/json' -d '{
  "model": "gemma3-270m", "prompt": "Kubernetes is an open-source system for",
  "stream": true, "temperature": 0, "max_tokens": 40}'

step "Done. kubectl -n ai get lm; kind delete cluster --name ${CLUSTER} removes everything"
