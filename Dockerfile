# syntax=docker/dockerfile:1
#
# tenant-proxy image. The builder stage turns the project and its
# dependencies into wheels; the runtime stage installs only those wheels (no
# compilers, no build context), runs as uid/gid 10001 and writes nothing
# outside /tmp, so it runs with a read-only root filesystem and an emptyDir
# (or tmpfs) at /tmp:
#
#   docker build -t tenant-proxy:0.1.0 .
#   docker run --read-only --tmpfs /tmp -p 6432:6432 -p 9187:9187 \
#     -v "$PWD/deploy/proxy.yaml:/etc/tenant-proxy/proxy.yaml:ro" \
#     -v "$PWD/deploy/rules:/etc/tenant-proxy/rules:ro" \
#     -e TENANT_PROXY_TOKEN_KEY=... tenant-proxy:0.1.0 \
#     run --config /etc/tenant-proxy/proxy.yaml --rules /etc/tenant-proxy/rules/rules.yaml --log-format json
#
# The settings file must say `listen: 0.0.0.0:6432` and `http_listen: 0.0.0.0:9187`
# (the HEALTHCHECK below and the helm chart use port 9187).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# Wheels for the project and every runtime dependency (all of them publish
# manylinux wheels for CPython 3.11 on amd64 and arm64, so no compiler is needed).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --prefer-binary --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tenant-proxy" \
      org.opencontainers.image.description="PostgreSQL wire-protocol sidecar that lets many tenants share one database"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    HOME=/tmp
RUN groupadd --system --gid 10001 tenant-proxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin tenant-proxy \
 && mkdir -p /etc/tenant-proxy/rules
# Install exactly the builder's wheels (no index); pip byte-compiles them
# here, at build time, so nothing is written at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl \
 && tenant-proxy --help > /dev/null
WORKDIR /tmp
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
# 6432: PostgreSQL clients; 9187: /metrics, /healthz, /readyz.
EXPOSE 6432 9187
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=3)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tenant-proxy"]
CMD ["run", "--config", "/etc/tenant-proxy/proxy.yaml", "--log-format", "json"]
