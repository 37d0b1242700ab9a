# The operator image: slm-operator and its Python dependencies, nothing else.
# Build from the repository root: `make images`, or
#   DOCKER_BUILDKIT=1 docker build -t ghcr.io/slm-operator/slm-operator:0.1.0 .
# Runs as UID 65532 on a read-only root filesystem; the chart mounts /tmp as an emptyDir.
# Python packages come from requirements/operator.txt, which pins each with its sha256.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/operator.txt /tmp/operator.txt
# A build where PyPI is reached through a TLS-inspecting proxy passes that proxy's CA bundle
# as the secret `ca` (make images does); it is mounted for this step only, never stored.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/slm \
 && /opt/slm/bin/pip install --require-hashes --no-deps -r /tmp/operator.txt

FROM ${BASE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/slm_operator operator/slm_operator
COPY runtime-image/slm_runtime runtime-image/slm_runtime
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /tmp/build \
 && /tmp/build/bin/pip wheel --no-deps -w /wheels .

FROM ${BASE}
COPY --from=deps /opt/slm /opt/slm
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/slm/bin/pip install --no-cache-dir --no-deps --no-index /wheels/*.whl
ENV PATH=/opt/slm/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A passwd entry for the runtime user: Python's getpass (kopf's peering id) looks it up.
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8081 9090
# The chart sets the command explicitly; this default only helps `docker run`.
CMD ["slm-operator"]
ARG VERSION=0.0.0 REVISION=unknown SOURCE=https://github.com/slm-operator/slm-operator
LABEL org.opencontainers.image.title="slm-operator" \
      org.opencontainers.image.description="Kubernetes operator that serves LocalModel resources with the slm-runtime image" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
