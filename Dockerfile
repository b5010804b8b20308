# syntax=docker/dockerfile:1
#
# gini-auth-proxy container image. Build, tagged and labelled with the version in pyproject.toml
# (the one source of it; scripts/image-test does the same):
#   version="$(python3 scripts/imagelib/version.py)"
#   docker build -t "gini-auth-proxy:$version" --build-arg VERSION="$version" .
#
# The base is pinned by tag. For reproducible production builds, also pin its digest:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints the digest.)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: the virtualenv with the project and its locked dependencies, the user ------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY proxy ./proxy
# `python3` on PATH and a virtualenv, so any Python >= 3.11 base works: the official image
# (Python in /usr/local) as well as a Debian one whose system Python refuses pip (PEP 668).
# The dependencies are exactly requirements.lock's pins, each file checked against its hash,
# binary wheels only (the slim base has no compiler); the project itself without deps, then
# `pip check` proves the lock satisfies it. The venv's own pip and setuptools go afterwards:
# nothing that installs packages is needed at run time. pip compiles the modules to .pyc here.
# Behind a private index or a TLS-intercepting proxy, lend pip its configuration and the CA
# bundle for this step only, as optional build secrets (never build args, which stay in the
# image history): --secret id=pip.conf,src=/etc/pip.conf
#                   --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt
# (or podman's `build -v host:container:ro`). This stage is not shipped, and the runtime stage
# runs nothing, so nothing lent can reach a layer of the image (podman leaves empty mount
# points in the layers of RUN steps).
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/gini-auth-proxy \
 && /opt/gini-auth-proxy/bin/pip install --no-cache-dir --only-binary=:all: \
        --require-hashes -r requirements.lock \
 && /opt/gini-auth-proxy/bin/pip install --no-cache-dir --no-deps . \
 && /opt/gini-auth-proxy/bin/pip check \
 && /opt/gini-auth-proxy/bin/pip uninstall --yes --quiet pip setuptools \
 && /opt/gini-auth-proxy/bin/gini-auth-proxy --version
# A real passwd entry for uid 10001: asyncpg asks getpass.getuser() for the database user
# when store.url names none, and that fails for a uid without one. The only writable path the
# proxy may need is the SQLite store's folder (mount a volume there; PostgreSQL and sidecars
# without a store need none).
RUN groupadd --system --gid 10001 gini \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gini \
 && install -d -o 10001 -g 10001 /var/lib/gini-auth-proxy

# --- runtime: the virtualenv, a non-root user, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
# Set by the build pipeline: --build-arg VERSION="$(python3 scripts/imagelib/version.py)"
# --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# No version is written here: an image built without it says "unknown" rather than a stale one.
ARG VERSION=unknown
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
    GINI_PROXY_CONFIG=/etc/gini-auth-proxy/config.yaml \
    PATH=/opt/gini-auth-proxy/bin:$PATH
# Same base as the builder, so the venv's interpreter path and the passwd file fit.
COPY --from=builder /etc/passwd /etc/group /etc/
COPY --from=builder /opt/gini-auth-proxy /opt/gini-auth-proxy
COPY --from=builder --chown=10001:10001 /var/lib/gini-auth-proxy /var/lib/gini-auth-proxy
USER 10001:10001
EXPOSE 8080 9090
# For docker/compose only; Kubernetes ignores HEALTHCHECK and uses the probes in deploy/.
# Assumes the default admin_listen port 9090. No curl in the image: Python's urllib does it.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gini-auth-proxy"]
CMD ["serve", "--config", "/etc/gini-auth-proxy/config.yaml"]
