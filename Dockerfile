# The operator image: slm-operator and its Python dependencies, nothing else.
# Build from the repository root: docker build -t ghcr.io/slm-operator/slm-operator:0.1.0 .
# Runs as UID 65532 on a read-only root filesystem; the chart mounts /tmp as an emptyDir.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/slm_operator operator/slm_operator
COPY runtime-image/slm_runtime runtime-image/slm_runtime
RUN python -m venv /opt/slm && /opt/slm/bin/pip install ".[operator]"

FROM python:3.11-slim-bookworm
COPY --from=build /opt/slm /opt/slm
ENV PATH=/opt/slm/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8081 9090
# The chart sets the command explicitly; this default only helps `docker run`.
CMD ["slm-operator"]
