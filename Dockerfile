# syntax=docker/dockerfile:1
# synap-segment-bridge container image. Running it: docs/operations.md.
#   docker build -t synap-bridge .
#   docker run -d -p 8080:8080 -v synap-bridge-data:/var/lib/synap-bridge \
#     -e BRIDGE_AUTH__PASSWORD=... -e BRIDGE_SEGMENT__WRITE_KEY=... synap-bridge
# Checked by tests/test_packaging.py (hadolint at warning level).

# ---- builder: wheels of the bridge and of every dependency ----------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- final: only the installed wheels, no compiler, no sources ------------------------------
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_SERVER__HOST=0.0.0.0 \
    BRIDGE_SERVER__PORT=8080 \
    BRIDGE_STORAGE__PATH=/var/lib/synap-bridge/bridge.db \
    BRIDGE_LOGGING__FORMAT=json

# The wheels are bind-mounted from the builder, so they never land in a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl

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

# Liveness only (/healthz); slim has no curl, Python has urllib. Any exception exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BRIDGE_SERVER__PORT', '8080') + '/healthz', timeout=4)"]

# SIGTERM stops intake and drains within shutdown.grace_secs (20 s): run with --stop-timeout 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["synap-bridge"]
CMD ["serve"]
