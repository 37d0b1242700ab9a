#!/usr/bin/env bash
# Builds the local stand-in for the Dockerfiles' default base (python:3.11-slim-bookworm) where
# no registry can be reached: Debian bookworm (debootstrap minbase) with Debian's Python 3.11,
# venv, CA certificates and netbase, imported into Docker as ${SLM_BASE_IMAGE}. The tag carries
# a digest of this script, so a change here builds a new base; an existing one is reused.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
source "${here}/env.sh"

if "${DOCKER}" image inspect "${SLM_BASE_IMAGE}" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
start=$SECONDS
root="$(mktemp -d /var/tmp/slm-base.XXXXXX)"
trap 'rm -rf "${root}"' EXIT
echo "building ${SLM_BASE_IMAGE} with debootstrap (about 2 minutes)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase \
  bookworm "${root}" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
# What the public python image leaves out too: package caches, apt lists, logs, docs.
rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/* "${root}"/var/log/* \
  "${root}"/usr/share/doc/* "${root}"/usr/share/man/* "${root}"/usr/share/locale/*
tar -C "${root}" --numeric-owner -c . | "${DOCKER}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "${SLM_BASE_IMAGE}" >/dev/null
echo "built ${SLM_BASE_IMAGE} in $((SECONDS - start))s" >&2
