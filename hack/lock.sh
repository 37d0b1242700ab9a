#!/usr/bin/env bash
# Regenerates the hash-pinned locks under requirements/ from pyproject.toml with uv, one per
# install profile: dev (make setup and CI), operator (its image), runtime (the CPU image),
# runtime-cuda (the CUDA image: the CUDA ONNX Runtime packages instead of the CPU ones), and
# cuda-toolkit (the CUDA compiler the CUDA image builds llama.cpp with). Every file pins every
# package with the sha256 of each of its files, for Python 3.11 on x86-64 Linux. dev and runtime
# carry onnxruntime-openvino (ONNX Runtime with the OpenVINO execution provider) instead of the
# `onnxruntime` that onnxruntime-genai names, and runtime-cuda onnxruntime-gpu: each lock is
# complete, so installs use --no-deps. Usage: hack/lock.sh [--upgrade | --upgrade-package NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-.venv/bin/uv}"
[ -x "${uv}" ] || uv="$(command -v uv)" || { echo "lock.sh: uv is needed (make venv installs it)" >&2; exit 1; }

compile() {
  local out="$1"; shift
  "${uv}" pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
    --output-file "requirements/${out}.txt" "$@"
}

mkdir -p requirements
compile dev --extra operator --extra runtime --extra openvino --extra dev \
  --no-emit-package onnxruntime "$@"
compile operator --extra operator "$@"
# The images build llama-cpp-python from its pinned sdist in a layer of its own, so a change to
# any other pin does not rebuild llama.cpp: its pin has a file of its own, taken from dev.txt.
# sympy (and its mpmath) serve only ONNX Runtime's Python model tools, which the server never
# imports: 85 MB the CPU image leaves out.
compile runtime --extra runtime --extra openvino --no-emit-package llama-cpp-python \
  --no-emit-package onnxruntime --no-emit-package sympy --no-emit-package mpmath "$@"
compile runtime-cuda --extra runtime --extra cuda --no-emit-package llama-cpp-python \
  --no-emit-package onnxruntime --no-emit-package onnxruntime-genai "$@"
# The CUDA 13 compiler and the headers and libraries llama.cpp's CUDA backend builds against,
# from PyPI's NVIDIA wheels (one prefix: site-packages/nvidia/cu13), at the versions of the
# runtime libraries the CUDA image ships.
"${uv}" pip compile requirements/cuda-toolkit.in --quiet --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
  --constraint requirements/runtime-cuda.txt --output-file requirements/cuda-toolkit.txt "$@"
{
  echo "# The llama-cpp-python pin of requirements/dev.txt, for the images' llama.cpp build layer."
  echo "#    make lock"
  awk '/^llama-cpp-python==/ {on = 1} on && /^[a-z]/ && !/^llama-cpp-python==/ {exit} on && !/^ *#/' \
    requirements/dev.txt
} > requirements/llama-cpp-python.txt
