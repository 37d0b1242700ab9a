#!/usr/bin/env bash
# A tool-call parser built from Ollama's own tools package, for the tool-parsing conformance
# tests: builds ~/.cache/slm-operator/bin/ollama-tools-oracle-<version> from
# hack/ollama-tools-oracle (github.com/ollama/ollama at the version pinned in its go.mod, the
# same as the template oracle's), rebuilt when its source or go.sum changes (their hash is kept
# beside it in <bin>.gosum). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v go >/dev/null || { echo "41-ollama-tools: Go is required (https://go.dev/dl/)" >&2; exit 1; }

src=hack/ollama-tools-oracle
version=$(awk '$1 == "require" && $2 == "github.com/ollama/ollama" {print $3}' "$src/go.mod")
[ -n "$version" ] || { echo "41-ollama-tools: no github.com/ollama/ollama pin in $src/go.mod" >&2; exit 1; }
bin="$HOME/.cache/slm-operator/bin/ollama-tools-oracle-$version"

go mod download -json "github.com/ollama/ollama@$version" >/dev/null

sum=$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -d' ' -f1)
if [ -x "$bin" ] && [ "$(cat "$bin.gosum" 2>/dev/null)" = "$sum" ]; then
  exit 0
fi
mkdir -p "$(dirname "$bin")"
echo "building $bin"
(cd "$src" && go build -p 2 -trimpath -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
printf '%s\n' "$sum" > "$bin.gosum"
