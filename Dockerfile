# syntax=docker/dockerfile:1
#
# gini-auth-proxy container image. Build: docker build -t gini-auth-proxy:0.1.0 .
#
# The base is pinned by tag. For reproducible production builds, also pin its digest:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints the digest.)
# RUN --mount needs BuildKit, the default builder since Docker 23.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: turns the source tree into wheels (the project's and its dependencies') -----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# Every dependency must come as a binary wheel: the runtime stage has no compiler and
# installs from this wheel house only (--no-index), never from an index or a source tree.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --no-deps . \
 && pip wheel --no-cache-dir --wheel-dir /wheels --only-binary=:all: \
        --find-links /wheels /wheels/gini_auth_proxy-*.whl

# --- runtime: the installed wheel, a non-root user, nothing else ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
# Set by the build pipeline: --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD)
# --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="gini-auth-proxy" \
      org.opencontainers.image.description="Authenticating reverse proxy and token vendor for the Gini Pay API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No .pyc files written at run time (the root filesystem is read-only; pip already compiled
# the installed modules), unbuffered logs, no pip cache anywhere.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    GINI_PROXY_CONFIG=/etc/gini-auth-proxy/config.yaml
# A real passwd entry for uid 10001: asyncpg asks getpass.getuser() for the database user
# when store.url names none, and that fails for a uid without one.
RUN groupadd --system --gid 10001 gini \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gini
# The wheel house is bind-mounted from the builder, so no layer keeps a copy of it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/gini_auth_proxy-*.whl \
 && gini-auth-proxy --version
# The only writable path the proxy may need: the SQLite store's folder (mount a volume here;
# PostgreSQL and sidecars without a store need none).
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/gini-auth-proxy
USER 10001:10001
EXPOSE 8080 9090
# For docker/compose only; Kubernetes ignores HEALTHCHECK and uses the probes in deploy/.
# Assumes the default admin_listen port 9090. No curl in the image: Python's urllib does it.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gini-auth-proxy"]
CMD ["serve", "--config", "/etc/gini-auth-proxy/config.yaml"]
