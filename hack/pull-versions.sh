# Versions of the servers the pull suite runs on loopback. Sourced by hack/setup.d/30-pull.sh,
# which builds them into ${SLM_CACHE_DIR:-~/.cache/slm-operator}/bin/<name>-<version>; read by
# tests/pull/conftest.py to find those binaries. One place, so the two cannot disagree.
# shellcheck shell=bash
REGISTRY_VERSION=v3.1.2
ORAS_VERSION=v1.3.6
