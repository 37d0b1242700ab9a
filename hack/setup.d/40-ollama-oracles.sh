#!/usr/bin/env bash
# Ollama's template test data, and two oracles built from Ollama's own Go packages for the
# conformance tests: a template renderer (hack/ollama-template-oracle) and a tool-call parser
# (hack/ollama-tools-oracle). Fetches github.com/ollama/ollama at the version each one's go.mod
# pins into the Go module cache and builds ~/.cache/slm-operator/bin/ollama-<name>-oracle-<version>,
# rebuilt when the oracle's source or go.sum changes (their hash is kept beside it in
# <bin>.gosum). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v go >/dev/null || { echo "40-ollama-oracles: Go is required (https://go.dev/dl/)" >&2; exit 1; }

for name in template tools; do
  src="hack/ollama-${name}-oracle"
  version=$(awk '$1 == "require" && $2 == "github.com/ollama/ollama" {print $3}' "$src/go.mod")
  [ -n "$version" ] || { echo "40-ollama-oracles: no github.com/ollama/ollama pin in $src/go.mod" >&2; exit 1; }
  bin="$HOME/.cache/slm-operator/bin/ollama-${name}-oracle-$version"

  go mod download -json "github.com/ollama/ollama@$version" >/dev/null

  sum=$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -d' ' -f1)
  if [ -x "$bin" ] && [ "$(cat "$bin.gosum" 2>/dev/null)" = "$sum" ]; then
    continue
  fi
  mkdir -p "$(dirname "$bin")"
  echo "building $bin"
  (cd "$src" && go build -p 2 -trimpath -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
  printf '%s\n' "$sum" > "$bin.gosum"
done
