# syntax=docker/dockerfile:1.7
# The image-curation code location: code server, run workers and step pods all run this image.
#
#   CPU:  docker build -t image-curation:0.1.0 .
#   GPU:  docker build -f Dockerfile.cuda -t image-curation-cuda:0.1.0 .
#         (the same file with TORCH_VARIANT=cuda: PyPI's Linux torch wheels bundle the CUDA runtime,
#          so the base stays python:slim; the node's NVIDIA driver is mounted by the GPU runtime)
#
# Python matches pyproject's requires-python (>=3.11,<3.13); the project is installed from its own
# pyproject.toml under deploy/constraints.txt (the tested set). Runs as uid 10001, the uid the
# Helm chart and orchestration/k8s.py enforce (runAsNonRoot, read-only root filesystem).

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes).
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt deploy/constraints.txt
COPY assets/ assets/
COPY curation/ curation/
COPY orchestration/ orchestration/
COPY partitions/ partitions/
COPY resources/ resources/
COPY demo/ demo/
RUN set -eu; \
    if [ "$TORCH_VARIANT" = "cpu" ]; then \
      extra="--extra-index-url https://download.pytorch.org/whl/cpu"; \
    elif [ "$TORCH_VARIANT" = "cuda" ]; then \
      extra=""; \
    else \
      echo "TORCH_VARIANT must be cpu or cuda" >&2; exit 2; \
    fi; \
    pip install $extra --constraint deploy/constraints.txt . ; \
    pip check; \
    python -c "import orchestration.k8s, curation.storage, dagster_k8s, dagster_postgres"

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="image-curation" \
      org.opencontainers.image.description="Dagster code location for the image-curation pipeline" \
      io.image-curation.torch-variant="${TORCH_VARIANT}"
RUN groupadd --gid 10001 curation \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp/home --shell /usr/sbin/nologin curation \
 && mkdir -p /opt/dagster/dagster_home \
 && chown 10001:10001 /opt/dagster/dagster_home
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp/home \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/mpl \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    CURATION_DEPLOYMENT=k8s \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "orchestration.definitions", "-h", "0.0.0.0", "-p", "3030"]
