# syntax=docker/dockerfile:1
# One image for web, migrations and workers. Targets:
#   app (default): CPU PyTorch; web, migrate and the default-queue worker run it.
#   gpu:           CUDA PyTorch; the worker-gpu service runs it.
# No apt packages are needed at run time: psycopg[binary], torch, torchvision and Pillow ship
# their native libraries inside their wheels.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Pick the CUDA build that the GPU hosts' driver supports (see pytorch.org's install matrix).
ARG TORCH_GPU_INDEX=https://download.pytorch.org/whl/cu128

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Dependencies come from pyproject.toml alone, so editing the source does not reinstall torch.
# The project's packages are imported from /app (PYTHONPATH below), not from site-packages.
FROM base AS deps
RUN python -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml README.md ./

FROM deps AS deps-cpu
ARG TORCH_INDEX
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --extra-index-url "$TORCH_INDEX" .

FROM deps AS deps-gpu
ARG TORCH_GPU_INDEX
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --extra-index-url "$TORCH_GPU_INDEX" .

FROM base AS runtime
ENV PYTHONPATH=/app \
    AUTORET_PRODUCTION=1 \
    AUTORET_DATA_DIR=/data
# A fixed uid lets a shared /data (NFS) be made writable on every host. /data is created here so
# that a fresh named volume mounted on it is owned by autoret.
RUN groupadd --system --gid 10001 autoret \
    && useradd --system --uid 10001 --gid autoret --create-home --shell /usr/sbin/nologin autoret \
    && mkdir /data \
    && chown autoret:autoret /data
WORKDIR /app

FROM runtime AS gpu
COPY --from=deps-gpu /opt/venv /opt/venv
COPY . .
# collectstatic only reads settings and static/: DATABASE_URL is unset, so it touches no database,
# and the data dir points away from /data so that nothing root-owned lands in the volume's seed.
# AUTORET_PRODUCTION=1 (above) makes it write the compressed copies that WhiteNoise serves.
RUN SECRET_KEY=build-time-only-key-for-collectstatic-not-secret \
    AUTORET_DATA_DIR=/tmp/build-data \
    python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data
USER autoret
CMD ["celery", "-A", "config", "worker", "-Q", "gpu,default", "-l", "info", "--concurrency", "1"]

FROM runtime AS app
COPY --from=deps-cpu /opt/venv /opt/venv
COPY . .
RUN SECRET_KEY=build-time-only-key-for-collectstatic-not-secret \
    AUTORET_DATA_DIR=/tmp/build-data \
    python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data
USER autoret
EXPOSE 8000
# /healthz answers 200 only when the database, Redis and a worker are up. Compose turns this
# check off for the worker services, which serve no HTTP. The forwarded-proto header stands in for
# the TLS proxy, so that production mode's HTTPS redirect does not answer the probe.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen(r.Request('http://127.0.0.1:8000/healthz', headers={'X-Forwarded-Proto': 'https'}), timeout=8)"]
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120"]
