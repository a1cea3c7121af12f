# synap-segment-bridge container image. Running it: docs/operations.md.
#   docker build -t synap-bridge .          (or: buildah bud --format docker -t synap-bridge .)
#   docker run -d --stop-timeout 30 -p 8080:8080 -v synap-bridge-data:/var/lib/synap-bridge \
#     -e BRIDGE_AUTH__PASSWORD=... -e BRIDGE_SEGMENT__WRITE_KEY=... synap-bridge
# Checked by tests/test_packaging.py (hadolint at warning level) and built, run and probed by
# `make image-test` (tests/container_image.py: buildah, podman). No `# syntax=` line: it would make
# the builder fetch a frontend image, which an offline builder cannot.
#
# Dependencies come from requirements.lock (exact versions, sha256 hashes: `make lock`). pip
# trusts its own CA bundle; a builder behind a TLS-inspecting proxy passes its bundle for the
# build only: --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro
# --build-arg PIP_CERT=/run/host-ca.crt (never copied into a layer).

# The base of both stages. tests/container_image.py passes its local stand-in here when no
# registry answers (named localhost/synap-bridge-test-base, never like the official image).
ARG BASE=python:3.11-slim-bookworm

# ---- builder: the locked dependencies (hash-checked) and the bridge, as wheels --------------
FROM ${BASE} AS builder

# Unset unless given (--build-arg): the path of a CA bundle mounted for the build only.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY requirements.lock ./
# --require-hashes: every file pip fetches must match a hash in the lock, or the build fails.
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# The bridge alone (--no-deps): its dependencies are exactly the locked wheels above.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

# ---- final: only the installed wheels, no compiler, no sources ------------------------------
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_SERVER__HOST=0.0.0.0 \
    BRIDGE_SERVER__PORT=8080 \
    BRIDGE_STORAGE__PATH=/var/lib/synap-bridge/bridge.db \
    BRIDGE_LOGGING__FORMAT=json

# The wheels are bind-mounted from the builder, so they never land in a layer of this image.
# --no-index: nothing but the builder's hash-checked wheels can be installed here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && pip install --no-cache-dir --no-index --no-deps /wheels/app/*.whl

# A fixed, unprivileged identity so a volume's ownership means the same thing on every host.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --no-log-init --uid 10001 --gid bridge --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin bridge \
    && install -d -o bridge -g bridge -m 0700 /var/lib/synap-bridge

# An empty working directory: no stray ./config.yaml is picked up. Configuration comes from
# BRIDGE_* variables, or from a file mounted read-only and named by BRIDGE_CONFIG.
WORKDIR /app
VOLUME ["/var/lib/synap-bridge"]
USER 10001:10001
EXPOSE 8080

# Liveness only (/healthz), asked where serve listens (BRIDGE_SERVER__HOST/PORT: 0.0.0.0 is
# probed on 127.0.0.1, :: on ::1, an address on itself); slim has no curl. bridge/probe.py.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "bridge.probe"]

# SIGTERM stops intake and drains within shutdown.grace_secs (20 s): run with --stop-timeout 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["synap-bridge"]
CMD ["serve"]
